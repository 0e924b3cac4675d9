"""The faithfulness study on an analysis directory: deletion and insertion curves of the stored CAMs
against random pixel orders, per sample bucket; writes ``DIR/faithfulness.json``.

Samples of one checkpoint in buckets (true positives, false positives, random samples), their stored
CAMs upsampled to the input, deletion and insertion curves in CAM order against random pixel orders.
The class scored and explained is the true label for ``tp`` and ``random`` and the *predicted* class
for ``fp``: a false positive is explained by the evidence for the mistake, so deletion asks whether
removing that evidence removes the confidence in the wrong class. Where the store's CAM explains
another class (``fp`` under ``--target true``), the map is recomputed at the checkpoint for that class.
The random orders are drawn once per bucket and shared by every method, so methods are compared
against the same baseline; deletion and insertion use the same draws. The numeric core is
:mod:`i2x.metrics.faithfulness`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from i2x.attribution import Attributor, display_maps, get_methods, tokens
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.io.workdir import FAITHFULNESS, AnalysisDir, checkpoint_index, clean_json, describe_checkpoint, stored_methods
from i2x.metrics.faithfulness import FILLS, MODES, auc, constant_colour, drop_at, fraction_grid, \
    perturbation_curves, pixel_order, random_order, select_buckets
from i2x.metrics.stats import mean_std
from i2x.settings import device_option, name_list, number_list, option, validate
from i2x.stages.context import Context, ModelAccess, open_context

BUCKETS = ("tp", "fp", "random")
TARGET_RULE = ("tp and random: the true label; fp: the predicted (wrong) class, so the map shows the evidence "
               "for the mistake")


def _frac_key(fraction: float) -> str:
    return f"{fraction:g}"


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


def _fill(name: str, ctx: Context, seed: int) -> dict[str, Any]:
    """Arguments of :func:`perturbation_curves` for a named fill (see :data:`FILLS`)."""
    if name in ("mean", "black"):
        return {"fill": name, "colour": constant_colour(name, ctx.data.mean, ctx.data.std)}
    if name == "road":
        return {"fill": name, "generator": torch.Generator().manual_seed(seed)}
    return {"fill": name}


def random_beats_map(summary: dict[str, Any]) -> list[str]:
    """Modes in which the random order's mean AUC beats the map's on one bucket summary."""
    beaten = []
    for mode in MODES:
        a = summary.get(f"{mode}_auc")
        if a and (a["difference"] > 0 if mode == "deletion" else a["difference"] < 0):
            beaten.append(mode)
    return beaten


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
        with Attributor(ctx.model, store.attrs["layer"], get_methods(methods), tokens.parse(ctx.config.tokens)) as attributor:
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
            "cam": mean_std(cam_auc),
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
    out["initial_prob"] = mean_std(initial)
    out["drop"] = {}
    for f in fractions:
        cam_drop, rand_drop = drop_at(cam["deletion"], f, grid), drop_at(rand["deletion"], f, grid)
        out["drop"][_frac_key(f)] = {
            "cam": {**mean_std(cam_drop), "relative": float((cam_drop / np.maximum(initial, 1e-12)).mean()),
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


@dataclass
class FaithfulnessConfig(ModelAccess):
    """Settings of the faithfulness study (recorded in ``faithfulness.json``)."""

    checkpoint: str = option("final", "checkpoint to test: final, first, or a name", metavar="NAME")
    methods: tuple[str, ...] | str | None = option(None, "CAM methods to test (default: all stored)", flag="--method",
                                                   parse=name_list, metavar="A,B")
    fractions: tuple[float, ...] = option((0.25, 0.5), "report the confidence drop at these removed fractions",
                                          parse=number_list, low=0, low_open=True, high=1, metavar="F1,F2")
    steps: int = option(20, "steps of the curves from 0 to 100%%", low=1)
    baseline: str = option("road", "deletion fill: road (ROAD's noisy linear imputation from the neighbours, "
                           "in-distribution), mean (the data set's mean colour), black, or blur; constant fills on "
                           "scattered pixels make out-of-distribution images", choices=FILLS)
    insertion_baseline: str = option("blur", "insertion start image (blur: Gaussian kernel 11, sigma 5)",
                                     choices=FILLS)
    buckets: tuple[str, ...] = option(BUCKETS, "sample buckets: tp (true positives), fp (false positives), random",
                                      parse=name_list, choices=BUCKETS, metavar="A,B")
    per_bucket: int = option(12, "samples per bucket", low=1)
    positive_class: int | str | None = option(None, "fp = predicted as this class but labelled otherwise (default: "
                                              "any error)", metavar="CLASS")
    random_draws: int = option(5, "random pixel orders for the baseline", low=1)
    seed: int = option(0, "seed for bucket sampling, random orders and ROAD's noise")
    batch_size: int = option(512, "images per forward batch", low=1)
    device: str = device_option()


def faithfulness(out_dir: str | Path | AnalysisDir, config: FaithfulnessConfig | None = None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
    """Deletion/insertion study of one checkpoint's stored CAMs per sample bucket; writes ``DIR/faithfulness.json``.

    Pass a :class:`FaithfulnessConfig` or its fields as keyword arguments. ``baseline`` fills deleted
    pixels (default ROAD imputation) and ``insertion_baseline`` is the image insertion starts from
    (:data:`i2x.metrics.faithfulness.FILLS`). Buckets come from
    :func:`i2x.metrics.faithfulness.select_buckets` on the checkpoint's stored probabilities
    (``positive_class``: a class name or index for the binary-style tp/fp of the chest X-ray study).
    Returns the JSON written.
    """
    start = time.perf_counter()
    cfg = config or FaithfulnessConfig(**options)
    validate(cfg)
    out = AnalysisDir.at(out_dir)
    with out.locked():  # no other i2x process rewrites the store while the study reads it
        store = out.store()
        t = checkpoint_index(store, cfg.checkpoint)
        methods = stored_methods(store, cfg.methods)
        chosen, predicted = _buckets(store, t, cfg)
        ctx = open_context(store, t, cfg.device, cfg.batch_size, cfg.trust_checkpoints, cfg.trust_analysis,
                           cfg.model)
        fills = {"deletion": _fill(cfg.baseline, ctx, cfg.seed), "insertion": _fill(cfg.insertion_baseline, ctx,
                                                                                     cfg.seed)}
        result = _header(store, t, cfg, methods, fills)
        bar = tqdm(total=len(chosen) * (len(methods) + 1), desc="faithfulness", disable=not progress)
        for name, rows in chosen.items():
            targets = predicted[rows] if name == "fp" else store.read("labels")[rows]
            result["buckets"][name] = _bucket_record(store, rows, predicted, targets)
            per_method = _bucket_curves(store, ctx, t, rows, targets, methods, fills, cfg, bar) if rows.size else \
                {m: {"n": 0} for m in methods}
            for m in methods:
                result["methods"][m][name] = per_method[m]
            bar.update(0 if rows.size else len(methods) + 1)
        bar.close()
        result["seconds"] = round(time.perf_counter() - start, 3)
        out.write(FAITHFULNESS, result)
    return clean_json(result)


def _buckets(store: Store, t: int, cfg: FaithfulnessConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The chosen buckets' store rows, and the predicted class of every sample at checkpoint t."""
    positive = _class_index(store, cfg.positive_class)
    probs = np.asarray(store.array("probs")[t])
    buckets = select_buckets(probs, store.read("labels"), cfg.per_bucket, positive, cfg.seed)
    return {k: v for k, v in buckets.items() if k in cfg.buckets}, probs.argmax(axis=1)


def _header(store: Store, t: int, cfg: FaithfulnessConfig, methods: list[str],
            fills: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The result's settings part; buckets and per-method summaries are filled in afterwards."""
    return {
        "checkpoint": describe_checkpoint(store, t),
        "settings": {"methods": methods, "fractions": list(cfg.fractions), "steps": cfg.steps,
                     "buckets": list(cfg.buckets), "per_bucket": cfg.per_bucket,
                     "positive_class": _class_index(store, cfg.positive_class), "random_draws": cfg.random_draws,
                     "seed": cfg.seed},
        "baselines": {"deletion": cfg.baseline, "insertion": cfg.insertion_baseline},
        "fills": {mode: fill.get("colour", fill["fill"]) for mode, fill in fills.items()},
        "target_rule": TARGET_RULE,
        "fractions_grid": fraction_grid(cfg.steps),
        "class_names": store.class_names,
        "buckets": {},
        "methods": {m: {} for m in methods},
    }


def _bucket_record(store: Store, rows: np.ndarray, predicted: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Which samples a bucket holds and the class each is scored on."""
    return {"n": int(rows.size), "rows": rows, "sample_index": store.read("sample_index")[rows],
            "labels": store.read("labels")[rows], "predicted": predicted[rows], "targets": targets}


def _bucket_curves(store: Store, ctx: Context, t: int, rows: np.ndarray, targets: np.ndarray, methods: list[str],
                   fills: dict[str, dict[str, Any]], cfg: FaithfulnessConfig, bar: Any) -> dict[str, Any]:
    """Deletion and insertion curves of one bucket: random orders once, then each method's map order."""
    images = torch.stack([ctx.dataset[int(i)][0] for i in rows]).to(ctx.device)
    probs = np.asarray(store.array("probs").oindex[t, rows])
    _check_probs(ctx, images, probs, f"{store.path} checkpoint {store.checkpoints[t]['name']}")
    target = torch.as_tensor(targets)
    b, _, h, w = images.shape
    grid = fraction_grid(cfg.steps)

    def curves(mode: str, order: torch.Tensor) -> np.ndarray:
        return perturbation_curves(ctx.model, images, None, target, mode, steps=cfg.steps, order=order,
                                   batch_size=cfg.batch_size, **fills[mode]).double().numpy()

    draws = torch.Generator().manual_seed(cfg.seed)
    orders = [random_order(b, h, w, draws) for _ in range(cfg.random_draws)]
    rand = {mode: np.stack([curves(mode, o) for o in orders]) for mode in MODES}
    bar.update(1)
    raw = cams_for_targets(store, ctx, t, rows, images, targets, methods, cfg.batch_size)
    out = {}
    for m in methods:
        saliency = display_maps(raw[m], (h, w))
        order = pixel_order(saliency, torch.Generator().manual_seed(cfg.seed))  # seeded tie-breaking of flat regions
        summary = _bucket_summary({mode: curves(mode, order) for mode in MODES}, rand, grid, cfg.fractions)
        summary["random_beats_map"] = random_beats_map(summary)
        out[m] = summary
        bar.update(1)
    return out


