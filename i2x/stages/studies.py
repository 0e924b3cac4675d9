"""The faithfulness and drift studies run on an analysis directory (DESIGN D11, D12).

The numeric cores live in :mod:`i2x.faithfulness` and :mod:`i2x.drift`; this module picks the
samples and maps from ``DIR/store.zarr``, rebuilds the model where it must run, and writes
``DIR/faithfulness.json`` and ``DIR/drift.json`` for the report.

Faithfulness (the chest X-ray deletion study, widened): samples of one checkpoint in buckets
(true positives, false positives, random samples), their stored CAMs upsampled to the input,
deletion and insertion curves in CAM order against random pixel orders. The class scored and
explained is the true label for ``tp`` and ``random`` and the *predicted* class for ``fp``: a
false positive is explained by the evidence for the mistake, so deletion asks whether removing
that evidence removes the confidence in the wrong class. Where the store's CAM explains another
class (``fp`` under ``--target true``), the map is recomputed at the checkpoint for that class.
The random orders are drawn once per bucket and shared by every method, so methods are compared
against the same baseline; deletion and insertion use the same draws.

Drift (the semantic-drift study): per sample IoU of the top regions, centroid displacement,
Spearman correlation and concentration change between two checkpoints, on the samples both
classify correctly; per class and overall, for every stored method, over consecutive
checkpoints, and the stability ranking of classes (or of models, :func:`compare_models`) under
each method with the pairs whose order reverses between methods.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from i2x.attribution import Attributor, display_maps, get_methods
from i2x.stages.context import Context, RunConfig, build_context
from i2x.io.data import DataOptions, load_data
from i2x.metrics.drift import centroid, drift_metrics, rank_reversals, summarize
from i2x.errors import UserError
from i2x.metrics.faithfulness import MODES, auc, drop_at, fraction_grid, perturbation_curves, pixel_order, random_order, \
    select_buckets
from i2x.io.store import Store

FAITHFULNESS_NAME = "faithfulness.json"
DRIFT_NAME = "drift.json"
BUCKETS = ("tp", "fp", "random")
#: Pixel fills, named in pixel terms: "mean" = the normalisation mean colour (0 in normalised inputs),
#: "zero" = black pixels (-mean/std in normalised inputs), "blur" = the Gaussian-blurred image.
FILLS = ("mean", "zero", "blur")
#: Drift metrics written per sample class; shift_px is in pixels of the input image.
DRIFT_METRICS = ("iou", "shift_px", "shift_frac", "spearman", "concentration_a", "concentration_b",
                 "concentration_change")
#: Stability scores for ranking classes or models: metric -> sign (+1: higher is more stable).
STABILITY = {"iou": 1.0, "spearman": 1.0, "shift_frac": -1.0}
TARGET_RULE = ("tp and random: the true label; fp: the predicted (wrong) class, so the map shows the evidence "
               "for the mistake")


# ---- shared helpers -------------------------------------------------------------------------------
def _usable(store: Store) -> np.ndarray:
    """Indices of the checkpoints that are extracted and whose weights were finite."""
    ok = store.done() & store.read("finite").astype(bool)
    if not ok.any():
        raise UserError(f"{store.path}: no checkpoint is fully extracted with finite weights; rerun `i2x extract`")
    return np.flatnonzero(ok)


def checkpoint_index(store: Store, name: str) -> int:
    """Store index t of the checkpoint called ``name``; ``first`` / ``final`` are the first / last usable one."""
    usable = _usable(store)
    if name == "first":
        return int(usable[0])
    if name == "final":
        return int(usable[-1])
    names = [c["name"] for c in store.checkpoints]
    if name not in names:
        raise UserError(f"checkpoint {name!r} is not in the store; choose first, final or one of {', '.join(names)}")
    t = names.index(name)
    if t not in usable:
        raise UserError(f"checkpoint {name}: it is not extracted or its weights hold NaN/Inf; choose another")
    return t


def _describe(store: Store, t: int) -> dict[str, Any]:
    """Name, training step, store index and training phase of checkpoint t."""
    c = store.checkpoints[t]
    return {"index": t, "name": c["name"], "step": c.get("step"), "phase": c.get("metrics", {}).get("phase")}


def _methods(store: Store, methods: Sequence[str] | str | None) -> list[str]:
    """The requested CAM methods (default: all stored), each checked to be in the store."""
    chosen = store.methods if methods is None else [methods] if isinstance(methods, str) else list(methods)
    for m in chosen:
        store.cam(m)  # raises a UserError naming the stored methods
    if not chosen:
        raise UserError("--methods: give at least one CAM method")
    return chosen


def _clean(value: Any) -> Any:
    """``value`` with numpy scalars made plain and NaN/Inf made None, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as strict JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def _frac_key(fraction: float) -> str:
    return f"{fraction:g}"


# ---- faithfulness ----------------------------------------------------------------------------------
def _class_index(store: Store, positive_class: int | str | None) -> int | None:
    """``positive_class`` as a class index; a class name or an index are both accepted."""
    if positive_class is None:
        return None
    names = store.class_names
    if isinstance(positive_class, str):
        if positive_class in names:
            return names.index(positive_class)
        if not positive_class.lstrip("-").isdigit():
            raise UserError(f"--positive-class {positive_class!r}: not a class name; choose one of {', '.join(names)}")
        positive_class = int(positive_class)
    if not 0 <= positive_class < len(names):
        raise UserError(f"--positive-class {positive_class}: the classes are 0..{len(names) - 1} ({', '.join(names)})")
    return int(positive_class)


def _check_faithfulness_options(buckets: Sequence[str], fractions: Sequence[float], baseline: str,
                                insertion_baseline: str, per_bucket: int, random_draws: int, steps: int) -> None:
    unknown = [b for b in buckets if b not in BUCKETS]
    if unknown or not buckets:
        raise UserError(f"--buckets {','.join(buckets)}: choose among {', '.join(BUCKETS)}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise UserError(f"--fractions: {bad} are not fractions in (0, 1]; use e.g. 0.25,0.5")
    for option, fill in (("--baseline", baseline), ("--insertion-baseline", insertion_baseline)):
        if fill not in FILLS:
            raise UserError(f"{option} {fill!r}: choose one of {', '.join(FILLS)}")
    if per_bucket < 1 or random_draws < 1 or steps < 1:
        raise UserError("--per-bucket, --random-draws and --steps must each be at least 1")


def _fill(name: str, ctx: Context) -> dict[str, Any]:
    """Arguments of :func:`perturbation_curves` for a named fill (see :data:`FILLS`)."""
    if name == "blur":
        return {"baseline": "blur"}
    if name == "mean":
        return {"baseline": "mean", "mean_value": [0.0] * ctx.data.channels}
    mean, std = np.asarray(ctx.data.mean, dtype=np.float64), np.asarray(ctx.data.std, dtype=np.float64)
    return {"baseline": "mean", "mean_value": (-mean / std).tolist()}


def open_context(store: Store, t: int, device: str, batch_size: int, trust_checkpoints: bool) -> Context:
    """Rebuild data and model from the store's config and load checkpoint t, checking both match the store."""
    config = RunConfig.from_dict({**store.config, "device": device, "batch_size": batch_size,
                                  "trust_checkpoints": trust_checkpoints})
    ctx = build_context(config)
    labels = store.read("labels")
    if len(ctx.labels) != len(labels) or not np.array_equal(ctx.labels, labels):
        raise UserError(f"{store.path}: the data set {config.data!r} no longer gives the stored labels; "
                        "point the config at the same data or rerun `i2x run`")
    record = store.checkpoints[t]
    ckpt = ctx.checkpoint(record["name"])
    if record.get("sha256") and ckpt.sha256() != record["sha256"]:
        raise UserError(f"{ckpt.path}: the file changed since extraction (sha256 differs); rerun `i2x run --overwrite`")
    ctx.load(ckpt)
    ctx.model.eval()
    return ctx


def cams_for_targets(store: Store, ctx: Context, t: int, rows: np.ndarray, images: torch.Tensor, targets: np.ndarray,
                     methods: list[str], batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Raw CAMs [B, h, w] at checkpoint t (loaded in ``ctx``) of store rows ``rows`` explaining classes ``targets``.

    Read from the store where the stored map explains that class; recomputed with the model where it
    explains another (e.g. a false positive's predicted class under ``--target true``).
    """
    stored = store.read("labels")[rows] if store.config["target"] == "true" else \
        store.array("probs").oindex[t, rows].argmax(axis=1)
    raw = {m: torch.from_numpy(np.asarray(store.cam(m).oindex[t, rows], dtype=np.float32)) for m in methods}
    redo = np.flatnonzero(stored != targets)
    if redo.size:
        with Attributor(ctx.model, store.attrs["layer"], get_methods(methods)) as attributor:
            for lo in range(0, redo.size, batch_size):
                part = redo[lo:lo + batch_size]
                out = attributor.attribute(images[part], torch.as_tensor(targets[part]))
                for m in methods:
                    raw[m][part] = out.cams[m].float().cpu()
    return raw


def _check_probs(ctx: Context, images: torch.Tensor, stored: np.ndarray, where: str) -> None:
    """Refuse to go on when the rebuilt model does not reproduce the stored probabilities."""
    with torch.no_grad():
        probs = ctx.model(images).float().softmax(dim=1).cpu().numpy()
    gap = float(np.abs(probs - stored).max())
    if gap > 1e-3:
        raise UserError(f"{where}: the rebuilt model and data give probabilities {gap:.3g} away from the stored ones; "
                        "the checkpoints, model or data changed since extraction; rerun `i2x run --overwrite`")


def _stats(values: np.ndarray) -> dict[str, float]:
    """Mean and population std of a 1-D array."""
    return {"mean": float(values.mean()), "std": float(values.std())}


def _bucket_summary(cam: dict[str, np.ndarray], rand: dict[str, np.ndarray], grid: np.ndarray,
                    fractions: Sequence[float]) -> dict[str, Any]:
    """One method on one bucket: AUCs and drops of the CAM order against the random orders, and the mean curves.

    ``cam[mode]`` is [B, S+1]; ``rand[mode]`` is [draws, B, S+1]. CAM spreads are over samples; the random
    baseline's ``std_draws`` is the std over draws of the bucket mean, ``std_samples`` over samples of the
    per-sample mean over draws.
    """
    out: dict[str, Any] = {"n": int(cam["deletion"].shape[0])}
    for mode in MODES:
        cam_auc, rand_auc = auc(cam[mode], grid), auc(rand[mode], grid)  # [B], [draws, B]
        better = cam_auc < rand_auc.mean(0) if mode == "deletion" else cam_auc > rand_auc.mean(0)
        out[f"{mode}_auc"] = {
            "cam": _stats(cam_auc),
            "random": {"mean": float(rand_auc.mean()), "std_draws": float(rand_auc.mean(1).std()),
                       "std_samples": float(rand_auc.mean(0).std())},
            "difference": float(cam_auc.mean() - rand_auc.mean()),
            "share_beating_random": float(better.mean()),
        }
        rand_mean = rand[mode].mean(0)
        out.setdefault("curves", {})[mode] = {
            "cam_mean": cam[mode].mean(0), "cam_std": cam[mode].std(0),
            "random_mean": rand_mean.mean(0), "random_std": rand_mean.std(0),
        }
    initial = cam["deletion"][:, 0]
    out["initial_prob"] = _stats(initial)
    out["drop"] = {}
    for f in fractions:
        cam_drop, rand_drop = drop_at(cam["deletion"], f, grid), drop_at(rand["deletion"], f, grid)
        out["drop"][_frac_key(f)] = {
            "cam": {**_stats(cam_drop), "relative": float((cam_drop / np.maximum(initial, 1e-12)).mean()),
                    "share_gained": float((cam_drop < 0).mean())},
            "random": {"mean": float(rand_drop.mean()), "std_draws": float(rand_drop.mean(1).std())},
        }
    out["per_sample"] = {
        "initial_prob": initial,
        "deletion_auc": auc(cam["deletion"], grid), "insertion_auc": auc(cam["insertion"], grid),
        "random_deletion_auc": auc(rand["deletion"], grid).mean(0),
        "random_insertion_auc": auc(rand["insertion"], grid).mean(0),
    }
    return out


def faithfulness(
    out_dir: str | Path,
    checkpoint: str = "final",
    methods: Sequence[str] | str | None = None,
    fractions: Sequence[float] = (0.25, 0.5),
    steps: int = 20,
    baseline: str = "mean",
    insertion_baseline: str = "blur",
    buckets: Sequence[str] = BUCKETS,
    per_bucket: int = 12,
    positive_class: int | str | None = None,
    random_draws: int = 5,
    seed: int = 0,
    batch_size: int = 512,
    device: str = "auto",
    trust_checkpoints: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Deletion/insertion study of one checkpoint's stored CAMs per sample bucket; writes ``DIR/faithfulness.json``.

    ``baseline`` fills deleted pixels and ``insertion_baseline`` is the image insertion starts from
    (:data:`FILLS`). Buckets come from :func:`i2x.faithfulness.select_buckets` on the checkpoint's stored
    probabilities (``positive_class``: a class name or index for the binary-style tp/fp of the chest X-ray
    study). Returns the JSON written.
    """
    start = time.perf_counter()
    buckets = list(buckets)
    _check_faithfulness_options(buckets, fractions, baseline, insertion_baseline, per_bucket, random_draws, steps)
    store = Store.open(out_dir)
    t = checkpoint_index(store, checkpoint)
    methods = _methods(store, methods)
    positive = _class_index(store, positive_class)
    labels = store.read("labels")
    probs = np.asarray(store.array("probs")[t])
    predicted = probs.argmax(axis=1)
    chosen = {k: v for k, v in select_buckets(probs, labels, per_bucket, positive, seed).items() if k in buckets}

    ctx = open_context(store, t, device, batch_size, trust_checkpoints)
    fills = {"deletion": _fill(baseline, ctx), "insertion": _fill(insertion_baseline, ctx)}
    grid = fraction_grid(steps)
    sample_index = store.read("sample_index")
    result: dict[str, Any] = {
        "checkpoint": _describe(store, t),
        "settings": {"methods": methods, "fractions": list(fractions), "steps": steps, "buckets": buckets,
                     "per_bucket": per_bucket, "positive_class": positive, "random_draws": random_draws,
                     "seed": seed},
        "baselines": {"deletion": baseline, "insertion": insertion_baseline},
        "fills": {mode: fill.get("mean_value", "blur") for mode, fill in fills.items()},
        "target_rule": TARGET_RULE,
        "fractions_grid": grid,
        "class_names": store.class_names,
        "buckets": {},
        "methods": {m: {} for m in methods},
    }
    bar = tqdm(total=len(chosen) * (len(methods) + 1), desc="faithfulness", disable=not progress)
    for name, rows in chosen.items():
        targets = predicted[rows] if name == "fp" else labels[rows]
        result["buckets"][name] = {"n": int(rows.size), "rows": rows, "sample_index": sample_index[rows],
                                   "labels": labels[rows], "predicted": predicted[rows], "targets": targets}
        if rows.size == 0:
            for m in methods:
                result["methods"][m][name] = {"n": 0}
            bar.update(len(methods) + 1)
            continue
        images = torch.stack([ctx.dataset[int(i)][0] for i in rows]).to(ctx.device)
        _check_probs(ctx, images, probs[rows], f"{store.path} checkpoint {store.checkpoints[t]['name']}")
        target = torch.as_tensor(targets)
        b, _, h, w = images.shape

        def curves(mode: str, order: torch.Tensor) -> np.ndarray:
            return perturbation_curves(ctx.model, images, None, target, mode, steps=steps, order=order,
                                       batch_size=batch_size, **fills[mode]).double().numpy()

        draws = torch.Generator().manual_seed(seed)
        orders = [random_order(b, h, w, draws) for _ in range(random_draws)]
        rand = {mode: np.stack([curves(mode, o) for o in orders]) for mode in MODES}
        bar.update(1)
        raw = cams_for_targets(store, ctx, t, rows, images, targets, methods, batch_size)
        for m in methods:
            saliency = display_maps(raw[m], (h, w))
            order = pixel_order(saliency, torch.Generator().manual_seed(seed))  # seeded tie-breaking of flat regions
            cam = {mode: curves(mode, order) for mode in MODES}
            result["methods"][m][name] = _bucket_summary(cam, rand, grid, fractions)
            bar.update(1)
    bar.close()
    result["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(Path(out_dir) / FAITHFULNESS_NAME, result)
    return _clean(result)


# ---- drift -----------------------------------------------------------------------------------------
def _input_size(store: Store) -> tuple[int, int]:
    """The input size (H, W) the store was extracted at (opened from the recorded data spec)."""
    config = RunConfig.from_dict(store.config)
    if config.input_size:
        return int(config.input_size), int(config.input_size)
    data = load_data(config.data, DataOptions(config.input_size, config.channels, config.mean, config.std))
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

    def __init__(self, store: Store, top: float) -> None:
        self.store = store
        self.top = top
        self.labels = store.read("labels")
        self.grid = store.grid
        self.input_size = _input_size(store)
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
    usable = _usable(store)
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
    return a, checkpoint_index(store, to)


def _stability(per_class: dict[str, dict[str, Any]], metric: str) -> dict[str, float]:
    """Item -> stability score (higher = more stable) from summarize()'s per-item stats; items without data left out."""
    sign = STABILITY[metric]
    return {item: sign * stats[metric]["mean"] for item, stats in per_class.items()
            if stats[metric]["mean"] is not None}


def _method_order(methods: list[str]) -> list[str]:
    """Methods with GradCAM++ and LayerCAM first, so their comparison (the drift paper's) comes first."""
    return sorted(methods, key=lambda m: (m not in ("gradcampp", "layercam"), methods.index(m)))


def _ranking(stability: dict[str, dict[str, float]], metric: str) -> dict[str, Any]:
    """Per method the items from most to least stable, and :func:`i2x.drift.rank_reversals` between methods."""
    order = _method_order(list(stability))
    return {
        "metric": metric,
        "higher_is_stable": STABILITY[metric] > 0,
        "scores": {m: {k: STABILITY[metric] * v for k, v in stability[m].items()} for m in order},
        "ranking": {m: sorted(stability[m], key=lambda k: -stability[m][k]) for m in order},
        "reversals": rank_reversals(stability, order) if len(order) > 1 else [],
    }


def _check_stability(metric: str) -> None:
    if metric not in STABILITY:
        raise UserError(f"--stability {metric!r}: choose one of {', '.join(STABILITY)}")


def drift(
    out_dir: str | Path,
    from_: str = "first",
    to: str = "final",
    phase_split: int | str | None = None,
    methods: Sequence[str] | str | None = None,
    top: float = 0.2,
    consecutive: bool = True,
    stability: str = "iou",
    progress: bool = True,
) -> dict[str, Any]:
    """Semantic drift of the stored CAMs from checkpoint ``from_`` to ``to``; writes ``DIR/drift.json``.

    ``phase_split`` (a training step, or ``"auto"`` for the end of the frozen-backbone phase) replaces
    ``from_`` by the last checkpoint of the first phase. Only samples both checkpoints classify correctly
    count. ``consecutive`` adds the drift over every pair of consecutive usable checkpoints. Classes are
    ranked by ``stability`` (mean of a metric, :data:`STABILITY`) under each method. Returns the JSON written.
    """
    start = time.perf_counter()
    _check_stability(stability)
    store = Store.open(out_dir)
    methods = _methods(store, methods)
    a, b = _pair(store, from_, to, phase_split)
    reader = _DriftReader(store, top)
    keep = reader.correct(a) & reader.correct(b)
    result: dict[str, Any] = {
        "from": _describe(store, a), "to": _describe(store, b), "phase_split": phase_split,
        "top": top, "grid": list(reader.grid), "input_size": list(reader.input_size),
        "pixels_per_cell": list(reader.scale), "class_names": store.class_names,
        "n_samples": int(keep.size), "n_correct_both": int(keep.sum()), "methods": {},
    }
    for m in methods:
        result["methods"][m] = reader.summary(reader.metrics(m, a, b, keep), keep)
    per_class = {m: _stability(result["methods"][m]["per_class"], stability) for m in methods}
    result["stability"] = _ranking(per_class, stability)
    if consecutive:
        result["consecutive"] = _consecutive(reader, methods, progress)
    result["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(Path(out_dir) / DRIFT_NAME, result)
    return _clean(result)


def _consecutive(reader: _DriftReader, methods: list[str], progress: bool) -> dict[str, Any]:
    """Overall drift stats of every pair of consecutive usable checkpoints, each checkpoint's maps read once."""
    usable = _usable(reader.store)
    steps = [{"from": _describe(reader.store, int(a)), "to": _describe(reader.store, int(b))}
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


def compare_models(
    out_dirs: Sequence[str | Path],
    from_: str = "first",
    to: str = "final",
    phase_split: int | str | None = None,
    methods: Sequence[str] | str | None = None,
    top: float = 0.2,
    stability: str = "iou",
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Rank several analysis directories (models) by drift stability under each method, with the reversals.

    Each model's score is the overall mean of ``stability`` over its samples correct at both checkpoints
    (the same ``from_`` / ``to`` / ``phase_split`` rule for every model). Models are named by their
    directory's name (the full path where two names clash). Writes the JSON to ``out`` when given.
    """
    _check_stability(stability)
    if len(out_dirs) < 2:
        raise UserError("compare_models needs at least two analysis directories")
    dirs = [Path(d) for d in out_dirs]
    names = [d.name for d in dirs]
    names = names if len(set(names)) == len(names) else [str(d) for d in dirs]
    stores = [Store.open(d) for d in dirs]
    common = [m for m in stores[0].methods if all(m in s.methods for s in stores)]
    chosen = common if methods is None else _methods(stores[0], methods)
    missing = [(n, m) for n, s in zip(names, stores) for m in chosen if m not in s.methods]
    if missing or not chosen:
        raise UserError(f"--methods: not stored in every model ({missing or 'no common method'}); "
                        "choose methods all of them hold")
    models: dict[str, Any] = {}
    for name, d, store in zip(names, dirs, stores):
        a, b = _pair(store, from_, to, phase_split)
        reader = _DriftReader(store, top)
        keep = reader.correct(a) & reader.correct(b)
        overall = {m: summarize(reader.metrics(m, a, b, keep), np.zeros(int(keep.sum()), dtype=int))["overall"]
                   for m in chosen}
        models[name] = {"dir": str(d), "from": _describe(store, a), "to": _describe(store, b),
                        "n_correct_both": int(keep.sum()), "overall": overall}
    per_model = {m: {name: models[name]["overall"][m] for name in names} for m in chosen}
    result = {"top": top, "models": models, "stability": _ranking(
        {m: _stability(per_model[m], stability) for m in chosen}, stability)}
    if out is not None:
        _write_json(Path(out), result)
    return _clean(result)

