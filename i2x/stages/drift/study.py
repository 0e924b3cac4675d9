"""The drift study on an analysis directory: how the stored CAMs move between two checkpoints or
training phases, per method and class; writes ``DIR/drift.json``.

Per sample: IoU of the top regions, centroid displacement, Spearman correlation and concentration
change between two checkpoints, on the samples both classify correctly; per class and overall, for
every stored method, over consecutive checkpoints, and the stability ranking of classes under each
method with the pairs whose order reverses between methods. A pair in which either map is empty (no
positive mass) counts for no metric: its top region and ranks would be ties. On a segmentation store
(rows are an image and a class, :mod:`i2x.stages.extract.regions`) every row counts
(:data:`SEGMENTATION_ROWS`). Several runs side by side: :mod:`i2x.stages.drift.runs`. The numeric core
is :mod:`i2x.metrics.drift`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

from i2x.errors import UserError
from i2x.io.store import Store
from i2x.io.workdir import DRIFT, checkpoint_index, clean_json, describe_checkpoint, stored_methods, usable_checkpoints
from i2x.metrics.drift import centroid, drift_metrics, empty_either, rank_reversals, summarize, without_empty
from i2x.settings import name_list, option, trust_analysis_option, validate
from i2x.stages.context import open_data
from i2x.io.workdir import AnalysisDir

#: Drift metrics written per sample class; shift_px is in pixels of the input image.
DRIFT_METRICS = ("iou", "shift_px", "shift_frac", "spearman", "concentration_a", "concentration_b",
                 "concentration_change")
#: Stability scores for ranking classes or models: metric -> sign (+1: higher is more stable).
STABILITY = {"iou": 1.0, "spearman": 1.0, "shift_frac": -1.0}
#: Which rows of a segmentation store the drift counts, as drift.json records it. A row's map explains class c's
#: logit averaged over c's ground-truth region by default, the same quantity at every checkpoint (as the true label
#: does for a classifier), while "classified right" (c the region's top class) is rare before the net stops calling
#: small regions background. So every row counts (a pair where either map is all zero is left out of every
#: metric, as on every store).
SEGMENTATION_ROWS = "all"


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
    allow_different_data: bool = option(False, "across runs: compare runs whose samples are not the same images "
                                        "(other --data or --split), matching samples by their index anyway")
    consecutive: bool = option(True, "one run: also the drift over every pair of consecutive checkpoints", cli=False)
    trust_analysis: bool = trust_analysis_option()  # an old store may import its data spec to learn the input size


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


class DriftReader:
    """Reads what the drift metrics need from one store: labels, correctness and raw CAMs per checkpoint."""

    def __init__(self, store: Store, top: float, trust_analysis: bool = False) -> None:
        self.store = store
        self.top = top
        self.regions = store.segmentation
        self.labels = store.read("labels")
        self.grid = store.grid
        self.input_size = _input_size(store, trust_analysis)
        self.scale = (self.input_size[0] / self.grid[0], self.input_size[1] / self.grid[1])
        self.diagonal = math.hypot(*self.input_size)

    def correct(self, t: int) -> np.ndarray:
        """Rows whose top class at checkpoint t is their label (on a segmentation store: the region's top class)."""
        return np.asarray(self.store.array("probs")[t]).argmax(axis=1) == self.labels

    def counted(self, t: int) -> np.ndarray:
        """Rows the drift counts at checkpoint t: the correct ones, every row on a segmentation store."""
        return np.ones(self.labels.shape, dtype=bool) if self.regions else self.correct(t)

    def cam(self, method: str, t: int) -> np.ndarray:
        return np.asarray(self.store.cam(method)[t], dtype=np.float64)

    def metrics(self, method: str, a: int, b: int, keep: np.ndarray,
                maps: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Per-sample metrics [n_keep] of checkpoints a -> b under ``method`` on the samples in ``keep``."""
        ma, mb = maps if maps is not None else (self.cam(method, a), self.cam(method, b))
        metrics = _pair_metrics(ma[keep], mb[keep], self.top, self.scale, self.diagonal)
        return without_empty(metrics, ma[keep], mb[keep])

    def summary(self, metrics: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, Any]:
        """Per class and overall stats (:func:`i2x.metrics.drift.summarize`) plus box-plot quantiles."""
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


def checkpoint_pair(store: Store, from_: str, to: str, phase_split: int | str | None) -> tuple[int, int]:
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


def method_order(methods: list[str]) -> list[str]:
    """Methods with GradCAM++ and LayerCAM first, so their comparison (the drift paper's) comes first."""
    return sorted(methods, key=lambda m: (m not in ("gradcampp", "layercam"), methods.index(m)))


def ranking(stability: dict[str, dict[str, float]], metric: str, noun: str,
             replicates: dict[str, dict[str, np.ndarray]] | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """Per method the items from most to least stable (``ranks``: 1 = most stable, ties share a rank), and
    :func:`i2x.metrics.drift.rank_reversals` between methods (with bootstrap intervals given ``replicates``)."""
    order = method_order(list(stability))
    return {
        "metric": metric,
        "higher_is_stable": STABILITY[metric] > 0,
        "scores": {m: {k: STABILITY[metric] * v for k, v in stability[m].items()} for m in order},
        "ranking": {m: sorted(stability[m], key=lambda k: -stability[m][k]) for m in order},
        "ranks": {m: dict(zip(stability[m], rankdata([-v for v in stability[m].values()], method="min").astype(int)
                              .tolist())) if stability[m] else {} for m in order},
        "reversals": rank_reversals(stability, order, replicates, confidence, noun) if len(order) > 1 else [],
    }


def drift(out_dir: str | Path | AnalysisDir, config: DriftConfig | None = None, progress: bool = True,
          **options: Any) -> dict[str, Any]:
    """Semantic drift of the stored CAMs from checkpoint ``from_`` to ``to``; writes ``DIR/drift.json``.

    Pass a :class:`DriftConfig` or its fields (``phase_split="auto"``). ``phase_split`` (a training step,
    or ``"auto"`` for the end of the frozen-backbone phase) replaces ``from_`` by the last checkpoint of
    the first phase. Only samples both checkpoints classify correctly count (on a segmentation store every
    row, :data:`SEGMENTATION_ROWS`; the JSON adds ``task``, ``rows`` and ``n_counted``), and a pair with an
    empty map is left out of the metrics (per method ``n_empty`` counts them). ``consecutive`` adds the
    drift over every pair of consecutive usable checkpoints. Classes are ranked by ``stability`` (mean of
    a metric, :data:`STABILITY`) under each method; a Kendall tau that is not defined (one class with
    true positives, all tied) is None with the reason in ``undefined``. Returns the JSON written.
    """
    cfg = config or DriftConfig(**options)
    validate(cfg)
    start = time.perf_counter()
    out = AnalysisDir.at(out_dir)
    with out.locked():  # no other i2x process rewrites the store while the study reads it
        store = out.store()
        methods = stored_methods(store, cfg.methods)
        a, b = checkpoint_pair(store, cfg.from_, cfg.to, cfg.phase_split)
        reader = DriftReader(store, cfg.top, cfg.trust_analysis)
        keep = reader.counted(a) & reader.counted(b)
        result: dict[str, Any] = {
            "from": describe_checkpoint(store, a), "to": describe_checkpoint(store, b), "phase_split": cfg.phase_split,
            "top": cfg.top, "grid": list(reader.grid), "input_size": list(reader.input_size),
            "pixels_per_cell": list(reader.scale), "class_names": store.class_names,
            "n_samples": int(keep.size), "n_correct_both": int((reader.correct(a) & reader.correct(b)).sum()),
            "methods": {},
        }
        if reader.regions:
            result.update(task=store.task, rows=SEGMENTATION_ROWS, n_counted=int(keep.sum()))
        for m in methods:
            maps = (reader.cam(m, a), reader.cam(m, b))
            result["methods"][m] = reader.summary(reader.metrics(m, a, b, keep, maps), keep)
            result["methods"][m]["n_empty"] = int(empty_either(maps[0][keep], maps[1][keep]).sum())
        per_class = {m: _stability(result["methods"][m]["per_class"], cfg.stability) for m in methods}
        result["stability"] = ranking(per_class, cfg.stability, noun="classes")
        if cfg.consecutive:
            result["consecutive"] = _consecutive(reader, methods, progress)
        result["seconds"] = round(time.perf_counter() - start, 3)
        out.write(DRIFT, result)
    return clean_json(result)


def _consecutive(reader: DriftReader, methods: list[str], progress: bool) -> dict[str, Any]:
    """Overall drift stats of every pair of consecutive usable checkpoints, each checkpoint's maps read once."""
    usable = usable_checkpoints(reader.store)
    steps = [{"from": describe_checkpoint(reader.store, int(a)), "to": describe_checkpoint(reader.store, int(b))}
             for a, b in zip(usable[:-1], usable[1:])]
    series: dict[str, dict[str, list]] = {m: {k: [] for k in DRIFT_METRICS} for m in methods}
    previous = {m: reader.cam(m, int(usable[0])) for m in methods}
    prev_correct = reader.counted(int(usable[0]))
    for step, (a, b) in zip(tqdm(steps, desc="drift", disable=not progress), zip(usable[:-1], usable[1:])):
        correct = reader.counted(int(b))
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
