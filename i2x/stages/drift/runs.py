"""Drift of several runs side by side (:func:`compare_models`): each run's drift between two checkpoints on
the samples the runs share, the runs ranked by stability under each method, and bootstrap intervals so a
reversal of the ranking inside the noise is called that. One run's drift is :mod:`i2x.stages.drift`."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Subset

from i2x.errors import UserError
from i2x.io.samples.fingerprint import fingerprints, same_images
from i2x.io.store import Store
from i2x.io.workdir import GENERATOR, clean_json, describe_checkpoint, write_json
from i2x.metrics.bootstrap import bootstrap_means, percentile_interval
from i2x.metrics.drift import summarize
from i2x.settings import validate
from i2x.stages.context import open_data
from i2x.stages.drift.study import STABILITY, DriftConfig, DriftReader, checkpoint_pair, method_order, ranking


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


class DifferentData(UserError):
    """The runs hold different images under the same indices (other data sets or splits)."""


def _fingerprint(store: Store, trust_analysis: bool) -> tuple[np.ndarray | None, str]:
    """The store's sample fingerprints: recorded at extraction, else computed from its data; None and why not."""
    if store.has("fingerprint"):
        return store.read("fingerprint"), ""
    try:
        config, data = open_data(store, trust_analysis)
        if data.task != "classification":
            return None, "a segmentation run"
        rows = Subset(data.split(config.split), store.read("sample_index").tolist())
        return fingerprints(data, rows), ""
    except (UserError, IndexError) as exc:
        return None, f"its data cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def check_same_data(stores: list[Store], names: list[str], rows: list[np.ndarray], allow: bool = False,
                    trust_analysis: bool = False) -> str | None:
    """Refuse (:class:`DifferentData`) runs whose shared samples (``rows`` per run) are not the same images, by
    their fingerprints, or by their --data and --split where a store has none; None when they agree, else the
    note to show (the check could not be made, or ``allow`` let different data through)."""
    prints = [_fingerprint(s, trust_analysis) for s in stores]
    missing = [f"{n} ({why})" for n, (fp, why) in zip(names, prints) if fp is None]
    where = "; ".join(f"{n}: --data {s.config.get('data')} --split {s.config.get('split')}"
                      for n, s in zip(names, stores))
    if not missing:
        first = prints[0][0][rows[0]]  # type: ignore[index]
        same = np.logical_and.reduce([same_images(first, fp[r]) for (fp, _), r in zip(prints[1:], rows[1:])])
        if same.all():
            return None
        problem = f"{int((~same).sum())} of the {same.size} samples they share by index show different images"
    elif len({(s.config.get("data"), s.config.get("split")) for s in stores}) == 1:
        note = (f"could not check that the runs hold the same images (no fingerprint for {', '.join(missing)}); "
                "they name the same --data and --split")
        print(f"note: {note}")
        return note
    else:
        problem = f"they name different --data or --split, and {', '.join(missing)} has no fingerprint to compare"
    if not allow:
        raise DifferentData(f"the runs hold different data: {problem} ({where}); extract them from the same --data "
                            "and --split, or pass --allow-different-data to match samples by their index anyway")
    note = f"--allow-different-data: {problem} ({where}); samples are matched by their index only"
    print(f"note: {note}")
    return note


def common_samples(stores: list[Store], names: list[str], allow_different_data: bool = False,
                   trust_analysis: bool = False) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Store rows of the samples every run holds with the same label (matched by ``sample_index``), per run,
    after checking that they are the same images (:func:`check_same_data`; its note in ``info["data_note"]``)."""
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
    shared_rows = [r[agree] for r in rows]
    info["data_note"] = check_same_data(stores, names, shared_rows, allow_different_data, trust_analysis)
    return shared_rows, info


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
    the rankings with the reason. Segmentation runs are refused (their rows are not true positives; run
    :func:`i2x.stages.drift.drift` on each). Pass a :class:`DriftConfig` or its fields.
    """
    cfg = config or DriftConfig(**options)
    validate(cfg)
    start = time.perf_counter()
    if len(out_dirs) < 2:
        raise UserError("comparing runs needs at least two analysis directories")
    dirs = [Path(d) for d in out_dirs]
    names = _run_names(dirs, names)
    stores = [Store.open(d) for d in dirs]
    regions = [str(d) for d, s in zip(out_dirs, stores) if s.segmentation]
    if regions:
        raise UserError(f"{', '.join(regions)}: a segmentation run; the drift across runs compares classifiers' "
                        "true positives, so run i2x drift on each segmentation run alone")
    common = [m for m in stores[0].methods if all(m in s.methods for s in stores)]
    chosen = common if cfg.methods is None else list(cfg.methods)
    missing = [f"{m} in {n}" for n, s in zip(names, stores) for m in chosen if m not in s.methods]
    if missing or not chosen:
        raise UserError(f"--method: not stored in every run ({', '.join(missing) or 'no method in common'}); "
                        "choose methods all of them hold")
    chosen = method_order(chosen)
    rows, samples = common_samples(stores, names, cfg.allow_different_data, cfg.trust_analysis)
    samples["rule"] = cfg.samples
    readers = [DriftReader(s, cfg.top, cfg.trust_analysis) for s in stores]
    pairs = [checkpoint_pair(s, cfg.from_, cfg.to, cfg.phase_split) for s in stores]
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
        entry = ranking(ranked, metric, "runs", replicates, cfg.confidence)
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
        write_json(Path(out), {"generator": GENERATOR, **result})
    return clean_json(result)
