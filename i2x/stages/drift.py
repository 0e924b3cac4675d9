"""The drift study on an analysis directory: how the stored CAMs move between two checkpoints or
training phases, per method and class, and between models; writes ``DIR/drift.json``.

Per sample: IoU of the top regions, centroid displacement, Spearman correlation and concentration
change between two checkpoints, on the samples both classify correctly; per class and overall, for
every stored method, over consecutive checkpoints, and the stability ranking of classes (or of
models, :func:`compare_models`) under each method with the pairs whose order reverses between
methods. :func:`compare_models` puts several runs (architectures) side by side on the samples they
share, ranks them by each stability metric under each method, and bootstraps over samples so a
reversal of the ranking inside the noise is called that. The numeric core is :mod:`i2x.metrics.drift`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

from i2x.errors import UserError
from i2x.io.location import as_path
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import DRIFT, checkpoint_index, clean_json, describe_checkpoint, stored_methods, \
    usable_checkpoints, write_json
from i2x.metrics.bootstrap import bootstrap_means, percentile_interval
from i2x.metrics.drift import centroid, drift_metrics, rank_reversals, summarize
from i2x.settings import name_list, option, validate
from i2x.stages.context import open_data

#: Drift metrics written per sample class; shift_px is in pixels of the input image.
DRIFT_METRICS = ("iou", "shift_px", "shift_frac", "spearman", "concentration_a", "concentration_b",
                 "concentration_change")
#: Stability scores for ranking classes or models: metric -> sign (+1: higher is more stable).
STABILITY = {"iou": 1.0, "spearman": 1.0, "shift_frac": -1.0}


@dataclass
class DriftConfig:
    """Settings of the drift study and of the cross-run comparison (:func:`compare_models`)."""

    from_: str = option("first", "first checkpoint: first (default) or a name", flag="--from")
    to: str = option("final", "second checkpoint: final (default) or a name")
    phase_split: int | str | None = option(
        None, "compare the last checkpoint at or before this step (or 'auto': the last frozen-backbone "
              "checkpoint) with the final one")
    methods: tuple[str, ...] | None = option(None, "CAM methods (default: all stored; across runs: all stored in "
                                                   "every run)", flag="--method", parse=name_list, metavar="A,B")
    top: float = option(0.2, "top share of cells for IoU and concentration (default 0.2)", low=0, high=1,
                        low_open=True)
    stability: str = option("iou", "metric that ranks classes (one run) or runs (several) by stability; across "
                                   "runs every metric is ranked, this one leads (default iou)",
                            choices=tuple(STABILITY))
    samples: str = option("each", "across runs: each run's own samples correct at both checkpoints (each, "
                                  "default), or only those every run gets right at both (all)",
                          choices=("each", "all"))
    bootstrap: int = option(1000, "across runs: bootstrap resamples of the shared samples for the intervals "
                                  "(default 1000)", low=10)
    confidence: float = option(0.95, "across runs: level of the bootstrap intervals (default 0.95)", low=0.5,
                               high=0.999)
    seed: int = option(0, "across runs: seed of the bootstrap resamples (default 0)")
    consecutive: bool = option(True, "one run: also the drift over every pair of consecutive checkpoints", cli=False)
    trust_analysis: bool = option(False, "a store made before the input size was recorded may import its data spec's "
                                  "Python file to learn it (only for folders you trust)")


def _input_size(store: Store, trust_analysis: bool = False) -> tuple[int, int]:
    """The input size (H, W) the store was extracted at (recorded there; older stores: from the data spec)."""
    if store.attrs.get("input_size"):
        h, w = store.attrs["input_size"]
        return int(h), int(w)
    _, data = open_data(store, trust_analysis)
    return int(data.input_size[0]), int(data.input_size[1])


def _pair_metrics(a: np.ndarray, b: np.ndarray, top: float, scale: tuple[float, float],
                  diagonal: float) -> dict[str, np.ndarray]:
    """Drift metrics of map stacks a -> b, with the centroid shift in input pixels (``scale`` px per cell)."""
    if a.shape[0] == 0:  # no sample is correct at both checkpoints
        return {name: np.empty(0) for name in DRIFT_METRICS}
    metrics = drift_metrics(a, b, top)
    move = (centroid(b) - centroid(a)) * np.asarray(scale)
    metrics["shift_px"] = np.linalg.norm(move, axis=1)
    metrics["shift_frac"] = metrics["shift_px"] / diagonal
    return {name: metrics[name] for name in DRIFT_METRICS}


def _quantiles(values: np.ndarray) -> list[float] | None:
    """[min, q1, median, q3, max] of the non-NaN values (None when there are none), for box plots."""
    values = values[~np.isnan(values)]
    return np.percentile(values, [0, 25, 50, 75, 100]).tolist() if values.size else None


class _DriftReader:
    """Reads what the drift metrics need from one store: labels, correctness and raw CAMs per checkpoint."""

    def __init__(self, store: Store, top: float, trust_analysis: bool = False) -> None:
        self.store = store
        self.top = top
        self.labels = store.read("labels")
        self.grid = store.grid
        self.input_size = _input_size(store, trust_analysis)
        self.scale = (self.input_size[0] / self.grid[0], self.input_size[1] / self.grid[1])
        self.diagonal = math.hypot(*self.input_size)

    def correct(self, t: int) -> np.ndarray:
        return np.asarray(self.store.array("probs")[t]).argmax(axis=1) == self.labels

    def cam(self, method: str, t: int) -> np.ndarray:
        return np.asarray(self.store.cam(method)[t], dtype=np.float64)

    def metrics(self, method: str, a: int, b: int, keep: np.ndarray,
                maps: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Per-sample metrics [n_keep] of checkpoints a -> b under ``method`` on the samples in ``keep``."""
        ma, mb = maps if maps is not None else (self.cam(method, a), self.cam(method, b))
        return _pair_metrics(ma[keep], mb[keep], self.top, self.scale, self.diagonal)

    def summary(self, metrics: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, Any]:
        """Per class and overall stats (:func:`i2x.drift.summarize`) plus box-plot quantiles."""
        names = self.store.class_names
        labels = self.labels[keep]
        out = summarize(metrics, labels, names)
        out["quantiles"] = {
            "overall": {k: _quantiles(v) for k, v in metrics.items()},
            "per_class": {names[c]: {k: _quantiles(v[labels == c]) for k, v in metrics.items()}
                          for c in np.unique(labels)},
        }
        return out


def _phase_start(store: Store, phase_split: int | str) -> int:
    """The last usable checkpoint of the first phase: step <= ``phase_split``, or with ``"auto"`` the last
    checkpoint recorded as trained with a frozen backbone."""
    usable = usable_checkpoints(store)
    records = [store.checkpoints[t] for t in usable]
    if phase_split == "auto":
        first_phase = [t for t, c in zip(usable, records) if c.get("metrics", {}).get("phase") == "frozen-backbone"]
        if not first_phase:
            raise UserError("--phase-split auto: no checkpoint records a frozen-backbone phase; give the split step")
        return int(first_phase[-1])
    try:
        split = int(phase_split)
    except (TypeError, ValueError):
        raise UserError(f"--phase-split {phase_split!r}: give a training step or auto") from None
    if any(c.get("step") is None for c in records):
        raise UserError("--phase-split: some checkpoints have no recorded step; compare with --from NAME instead")
    before = [t for t, c in zip(usable, records) if int(c["step"]) <= split]
    if not before:
        raise UserError(f"--phase-split {split}: no checkpoint has step <= {split}; "
                        f"the first is at step {records[0]['step']}")
    return int(before[-1])


def _pair(store: Store, from_: str, to: str, phase_split: int | str | None) -> tuple[int, int]:
    """Store indices (a, b) of the two checkpoints to compare."""
    if phase_split is not None and from_ != "first":
        raise UserError("give either --from or --phase-split, not both")
    a = _phase_start(store, phase_split) if phase_split is not None else checkpoint_index(store, from_)
    b = checkpoint_index(store, to)
    if a == b:
        what = f"--phase-split {phase_split}" if phase_split is not None else f"--from {from_}"
        raise UserError(f"{what} --to {to}: both name the checkpoint {store.checkpoints[a]['name']}; "
                        "choose two different checkpoints")
    return a, b


def _stability(per_class: dict[str, dict[str, Any]], metric: str) -> dict[str, float]:
    """Item -> stability score (higher = more stable) from summarize()'s per-item stats; items without data left out."""
    sign = STABILITY[metric]
    return {item: sign * stats[metric]["mean"] for item, stats in per_class.items()
            if stats[metric]["mean"] is not None}


def _method_order(methods: list[str]) -> list[str]:
    """Methods with GradCAM++ and LayerCAM first, so their comparison (the drift paper's) comes first."""
    return sorted(methods, key=lambda m: (m not in ("gradcampp", "layercam"), methods.index(m)))


def _ranking(stability: dict[str, dict[str, float]], metric: str, noun: str,
             replicates: dict[str, dict[str, np.ndarray]] | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """Per method the items from most to least stable (``ranks``: 1 = most stable, ties share a rank), and
    :func:`i2x.metrics.drift.rank_reversals` between methods (with bootstrap intervals given ``replicates``)."""
    order = _method_order(list(stability))
    return {
        "metric": metric,
        "higher_is_stable": STABILITY[metric] > 0,
        "scores": {m: {k: STABILITY[metric] * v for k, v in stability[m].items()} for m in order},
        "ranking": {m: sorted(stability[m], key=lambda k: -stability[m][k]) for m in order},
        "ranks": {m: dict(zip(stability[m], rankdata([-v for v in stability[m].values()], method="min").astype(int)
                              .tolist())) if stability[m] else {} for m in order},
        "reversals": rank_reversals(stability, order, replicates, confidence, noun) if len(order) > 1 else [],
    }


def drift(out_dir: str | Path, config: DriftConfig | None = None, progress: bool = True,
          **options: Any) -> dict[str, Any]:
    """Semantic drift of the stored CAMs from checkpoint ``from_`` to ``to``; writes ``DIR/drift.json``.

    Pass a :class:`DriftConfig` or its fields (``phase_split="auto"``). ``phase_split`` (a training step,
    or ``"auto"`` for the end of the frozen-backbone phase) replaces ``from_`` by the last checkpoint of
    the first phase. Only samples both checkpoints classify correctly count. ``consecutive`` adds the
    drift over every pair of consecutive usable checkpoints. Classes are ranked by ``stability`` (mean of
    a metric, :data:`STABILITY`) under each method; a Kendall tau that is not defined (one class with
    true positives, all tied) is None with the reason in ``undefined``. Returns the JSON written.
    """
    cfg = config or DriftConfig(**options)
    validate(cfg)
    start = time.perf_counter()
    with locked(out_dir):  # no other i2x process rewrites the store while the study reads it
        store = Store.open(out_dir)
        methods = stored_methods(store, cfg.methods)
        a, b = _pair(store, cfg.from_, cfg.to, cfg.phase_split)
        reader = _DriftReader(store, cfg.top, cfg.trust_analysis)
        keep = reader.correct(a) & reader.correct(b)
        result: dict[str, Any] = {
            "from": describe_checkpoint(store, a), "to": describe_checkpoint(store, b), "phase_split": cfg.phase_split,
            "top": cfg.top, "grid": list(reader.grid), "input_size": list(reader.input_size),
            "pixels_per_cell": list(reader.scale), "class_names": store.class_names,
            "n_samples": int(keep.size), "n_correct_both": int(keep.sum()), "methods": {},
        }
        for m in methods:
            result["methods"][m] = reader.summary(reader.metrics(m, a, b, keep), keep)
        per_class = {m: _stability(result["methods"][m]["per_class"], cfg.stability) for m in methods}
        result["stability"] = _ranking(per_class, cfg.stability, noun="classes")
        if cfg.consecutive:
            result["consecutive"] = _consecutive(reader, methods, progress)
        result["seconds"] = round(time.perf_counter() - start, 3)
        write_json(as_path(out_dir) / DRIFT, result)
    return clean_json(result)


def _consecutive(reader: _DriftReader, methods: list[str], progress: bool) -> dict[str, Any]:
    """Overall drift stats of every pair of consecutive usable checkpoints, each checkpoint's maps read once."""
    usable = usable_checkpoints(reader.store)
    steps = [{"from": describe_checkpoint(reader.store, int(a)), "to": describe_checkpoint(reader.store, int(b))}
             for a, b in zip(usable[:-1], usable[1:])]
    series: dict[str, dict[str, list]] = {m: {k: [] for k in DRIFT_METRICS} for m in methods}
    previous = {m: reader.cam(m, int(usable[0])) for m in methods}
    prev_correct = reader.correct(int(usable[0]))
    for step, (a, b) in zip(tqdm(steps, desc="drift", disable=not progress), zip(usable[:-1], usable[1:])):
        correct = reader.correct(int(b))
        keep = prev_correct & correct
        step["n"] = int(keep.sum())
        for m in methods:
            current = reader.cam(m, int(b))
            overall = summarize(reader.metrics(m, int(a), int(b), keep, (previous[m], current)),
                                np.zeros(int(keep.sum()), dtype=int))["overall"]
            for k in DRIFT_METRICS:
                series[m][k].append(overall[k])
            previous[m] = current
        prev_correct = correct
    return {"steps": steps, "methods": series}


def _run_names(dirs: list[Path], names: Sequence[str] | None) -> list[str]:
    """One name per run: ``names`` as given, else the directories' names (their full paths where two clash)."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(dirs):
            raise UserError(f"--names: give one name per directory ({len(dirs)}), got {len(names)}")
        if len(set(names)) != len(names) or not all(names):
            raise UserError(f"--names {','.join(names)}: give distinct, non-empty names")
        return names
    found = [d.name for d in dirs]
    return found if len(set(found)) == len(found) else [str(d) for d in dirs]


def _common_samples(stores: list[Store], names: list[str]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Store rows of the samples every run holds with the same label (matched by ``sample_index``), per run."""
    index = [np.asarray(s.read("sample_index")) for s in stores]
    labels = [np.asarray(s.read("labels")) for s in stores]
    shared = functools.reduce(np.intersect1d, index)
    rows = []
    for idx in index:
        order = np.argsort(idx, kind="stable")
        rows.append(order[np.searchsorted(idx[order], shared)])
    agree = np.all([lab[r] == labels[0][rows[0]] for lab, r in zip(labels, rows)], axis=0) if shared.size else \
        np.zeros(0, dtype=bool)
    info = {"n_common": int(agree.sum()), "n_label_mismatch": int((~agree).sum()),
            "n_per_run": {n: int(i.size) for n, i in zip(names, index)}}
    if not agree.any():
        raise UserError("the runs share no sample (same sample index and label): extract them from the same "
                        "--data and --split (and --limit)")
    return [r[agree] for r in rows], info


def _undefined_run(n_from: int, n_to: int, n_both: int, a: dict, b: dict) -> str | None:
    """Why a run has no drift to rank (no true positive at a checkpoint, or none at both); None if it has."""
    for n, c in ((n_from, a), (n_to, b)):
        if n == 0:
            phase = f" ({c['phase']} phase)" if c.get("phase") else ""
            return f"no true positive at {c['name']}{phase} among the shared samples"
    if n_both == 0:
        return f"no shared sample is a true positive at both {a['name']} and {b['name']}"
    return None


def compare_models(out_dirs: Sequence[str | Path], config: DriftConfig | None = None,
                   names: Sequence[str] | None = None, out: str | Path | None = None,
                   **options: Any) -> dict[str, Any]:
    """Drift of several runs (analysis directories, e.g. one per architecture) side by side; the JSON written to ``out``.

    Per run: the drift from ``from_`` (or the end of the first phase, ``phase_split``) to ``to`` under each
    method, on the samples every run holds with the same label (matched by ``sample_index``) that the run
    classifies correctly at both checkpoints (``samples="all"``: that every run does). Then per stability
    metric (:data:`STABILITY`) the ranking of the runs under each method, Kendall's tau between the methods'
    rankings and the reversed pairs, with percentile intervals from ``bootstrap`` resamples of the shared
    samples (one paired resample for all runs and methods): a reversal whose score difference under either
    method has an interval containing 0 is ``within_noise``. A run without true positives is left out of
    the rankings with the reason. Pass a :class:`DriftConfig` or its fields.
    """
    cfg = config or DriftConfig(**options)
    validate(cfg)
    start = time.perf_counter()
    if len(out_dirs) < 2:
        raise UserError("comparing runs needs at least two analysis directories")
    dirs = [Path(d) for d in out_dirs]
    names = _run_names(dirs, names)
    stores = [Store.open(d) for d in dirs]
    common = [m for m in stores[0].methods if all(m in s.methods for s in stores)]
    chosen = common if cfg.methods is None else list(cfg.methods)
    missing = [f"{m} in {n}" for n, s in zip(names, stores) for m in chosen if m not in s.methods]
    if missing or not chosen:
        raise UserError(f"--method: not stored in every run ({', '.join(missing) or 'no method in common'}); "
                        "choose methods all of them hold")
    chosen = _method_order(chosen)
    rows, samples = _common_samples(stores, names)
    samples["rule"] = cfg.samples
    readers = [_DriftReader(s, cfg.top, cfg.trust_analysis) for s in stores]
    pairs = [_pair(s, cfg.from_, cfg.to, cfg.phase_split) for s in stores]
    correct = [(r.correct(a)[rw], r.correct(b)[rw]) for r, (a, b), rw in zip(readers, pairs, rows)]
    keeps = [ca & cb for ca, cb in correct]
    if cfg.samples == "all":
        everywhere = np.logical_and.reduce(keeps)
        keeps = [everywhere] * len(keeps)
        samples["n_correct_in_all"] = int(everywhere.sum())
    n = samples["n_common"]
    runs: dict[str, Any] = {}
    values = []  # rows: run x method x stability metric, NaN where the sample does not count
    for name, d, store, reader, (a, b), rw, (ca, cb), keep in zip(names, dirs, stores, readers, pairs, rows,
                                                                  correct, keeps):
        overall = {}
        for m in chosen:
            maps = (reader.cam(m, a)[rw], reader.cam(m, b)[rw])
            per_sample = reader.metrics(m, a, b, keep, maps)
            overall[m] = summarize(per_sample, np.zeros(int(keep.sum()), dtype=int))["overall"]
            for metric in STABILITY:
                full = np.full(n, np.nan)
                full[keep] = per_sample[metric]
                values.append(full)
        before, after = describe_checkpoint(store, a), describe_checkpoint(store, b)
        runs[name] = {"dir": str(d), "model": store.config.get("model"), "from": before, "to": after,
                      "grid": list(reader.grid), "n_correct_from": int(ca.sum()), "n_correct_to": int(cb.sum()),
                      "n_correct_both": int(keep.sum()),
                      "undefined": _undefined_run(int(ca.sum()), int(cb.sum()), int(keep.sum()), before, after),
                      "overall": overall}
    reps = bootstrap_means(np.stack(values), cfg.bootstrap, cfg.seed).reshape(
        cfg.bootstrap, len(names), len(chosen), len(STABILITY))
    stability: dict[str, Any] = {}
    for j, metric in enumerate(STABILITY):
        sign = STABILITY[metric]
        scores = {m: {name: runs[name]["overall"][m][metric]["mean"] for name in names} for m in chosen}
        ranked = {m: {k: sign * v for k, v in scores[m].items() if v is not None} for m in chosen}
        replicates = {m: {name: sign * reps[:, r, i, j] for r, name in enumerate(names)} for i, m in enumerate(chosen)}
        entry = _ranking(ranked, metric, "runs", replicates, cfg.confidence)
        entry["intervals"] = {m: {name: percentile_interval(reps[:, r, i, j], cfg.confidence)
                                  for r, name in enumerate(names)} for i, m in enumerate(chosen)}
        entry["left_out"] = {m: {name: runs[name]["undefined"] or f"no defined {metric} value"
                                 for name in names if scores[m][name] is None} for m in chosen}
        stability[metric] = entry
    result = {
        "runs": runs, "names": names, "methods": chosen, "samples": samples, "headline": cfg.stability,
        "stability": stability, "settings": {**asdict(cfg), "methods": chosen},
        "bootstrap": {"replicates": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed,
                      "unit": "shared sample (one paired resample for every run and method)"},
        "seconds": round(time.perf_counter() - start, 3),
    }
    if out is not None:
        write_json(Path(out), result)
    return clean_json(result)


def _fmt(value: float | None, interval: list | None = None) -> str:
    """``0.555 [0.530, 0.580]``, or ``not defined`` for a missing value."""
    if value is None:
        return "not defined"
    if interval and interval[0] is not None:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{value:.3f}"


def format_tau(comparison: dict[str, Any]) -> str:
    """Kendall's tau of a method comparison as text: the value (and interval), or why it is not defined."""
    if comparison["kendall_tau"] is None:
        return f"not defined ({comparison['undefined'] or 'no value'})"
    interval = comparison.get("kendall_tau_interval")
    text = f"{comparison['kendall_tau']:.2f}"
    return text + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval and interval[0] is not None else "")


def reversal_label(reversal: dict[str, Any]) -> str:
    """``within noise`` / ``clear`` / ``noise not known`` for one reversed pair of :func:`compare_models`."""
    if reversal["within_noise"] is None:
        return "noise not known"
    return "within noise" if reversal["within_noise"] else "clear"


def _order(ranking: list[str], ranks: dict[str, int]) -> str:
    """``a > b = c``: items from most to least stable, ``=`` between ties; ``none`` when nothing is ranked."""
    if not ranking:
        return "none"
    text = ranking[0]
    for before, item in zip(ranking[:-1], ranking[1:]):
        text += (" = " if ranks[item] == ranks[before] else " > ") + item
    return text


def format_comparison(result: dict[str, Any]) -> str:
    """The cross-run comparison as plain text: runs x methods table of the leading metric, rankings, tau, reversals."""
    names, methods, metric = result["names"], result["methods"], result["headline"]
    s = result["samples"]
    level = f"{result['bootstrap']['confidence']:.0%}"
    lines = [f"{s['n_common']} samples shared by all runs (same sample index and label; "
             f"{s['n_label_mismatch']} with different labels left out); counted per run: "
             + ("its own true positives at both checkpoints" if s["rule"] == "each"
                else f"the {s.get('n_correct_in_all', 0)} every run gets right at both checkpoints")]
    entry = result["stability"][metric]
    lines.append(f"mean {metric} from -> to, [{level} bootstrap interval over samples], "
                 f"{'higher' if entry['higher_is_stable'] else 'lower'} is stable:")
    width = max(len(n) for n in names + ["run"])
    lines.append(f"{'run':<{width}}  {'from -> to':<28} {'n':>5}  " + "  ".join(f"{m:<24}" for m in methods))
    for name in names:
        r = result["runs"][name]
        span = f"{r['from']['name']} -> {r['to']['name']}"
        cells = [_fmt(entry["scores"][m].get(name), entry["intervals"][m][name]) for m in methods]
        lines.append(f"{name:<{width}}  {span:<28} {r['n_correct_both']:>5}  " + "  ".join(f"{c:<24}" for c in cells))
        if r["undefined"]:
            lines.append(f"{'':<{width}}  not ranked: {r['undefined']}")
    for key in [metric] + [k for k in result["stability"] if k != metric]:
        e = result["stability"][key]
        lines.append(f"ranking by {key} ({'higher' if e['higher_is_stable'] else 'lower'} is stable):")
        for m in methods:
            lines.append(f"  {m:>10}: {_order(e['ranking'][m], e['ranks'][m])}")
        for c in e["reversals"]:
            first, second = c["methods"]
            text = [f"  {first} vs {second}: Kendall tau {format_tau(c)}"]
            for rev in c.get("reversals", []):
                a, b = rev["pair"]
                share = f", reversed in {rev['share_reversed']:.0%} of resamples" \
                    if rev["share_reversed"] is not None else ""
                text.append(f"    reversed: {a} > {b} under {first}, {b} > {a} under {second} "
                            f"({reversal_label(rev)}{share})")
            lines.extend(text)
    return "\n".join(lines)
