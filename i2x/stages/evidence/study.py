"""Minimal evidence over training: Med-CAM masks for chosen samples at chosen checkpoints, set against the CAMs;
writes ``evidence/`` arrays in the store and ``DIR/evidence.json``.

For each chosen checkpoint the model is rebuilt from the store (:func:`i2x.stages.context.open_context`)
and the masks of all chosen samples are optimised together (:class:`i2x.attribution.minimal_evidence.MinimalEvidence`,
where the optimiser and its settings are documented). Per mask: area, whether the evidence keeps the
decision, KL, robustness under random infill, IoU with each stored CAM method at equal area (the CAM
explaining the same decision, recomputed where the store holds another class's map) and, with an
ROI file, the share of the mask outside the ROI. Over checkpoints: the evidence area per sample and
per class, i.e. whether the model needs less of the image as it learns.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from i2x.attribution import display_maps
from i2x.attribution.frozen import PRECISIONS, autocast_dtype
from i2x.attribution.mask_generators import GENERATORS
from i2x.attribution.minimal_evidence import EvidenceMasks, MinimalEvidence
from i2x.errors import UserError
from i2x.io.devices import memory_size, resolve_device
from i2x.io.location import as_path
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import EVIDENCE, clean_json, describe_checkpoint, refuse_links, write_json
from i2x.metrics.evidence import FILLS, fill_of, iou_at_equal_area, leakage
from i2x.metrics.stats import mean_std
from i2x.settings import device_option, option, validate
from i2x.stages.context import ModelAccess, open_context
from i2x.stages.evidence.selection import read_roi, select_checkpoints, select_samples, split_names
from i2x.stages.faithfulness import cams_for_targets


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


#: The most masks optimised together when ``--batch-size`` is not given (more saves little time on a CPU).
AUTO_BATCH_MAX = 256


@dataclass
class EvidenceConfig(ModelAccess):
    """Settings of ``i2x evidence`` (the optimiser's defaults are explained in :mod:`i2x.attribution.minimal_evidence`)."""

    samples: str = option("default", "samples to explain: default (per class the most confident and the most "
                          "variable sample, then the least confident at the end, as in the report's film strips), "
                          "misclassified, class:NAME, prototype:K, bucket:tp|fp|random, or store rows like 3,17,42",
                          metavar="SPEC")
    max_samples: int = option(64, "explain at most this many samples", low=1)
    checkpoints: str = option("first,middle,final", "checkpoints: comma-separated names or first, middle, final, "
                              "all", metavar="A,B")
    generator: str = option("pixel", "mask generator: pixel (coarse per-pixel logits, fast) or unet (the paper's "
                            "per-image small U-Net)", choices=GENERATORS)
    resolution: int = option(8, "pixel generator: mask logits per side, upsampled to the image", low=1)
    iterations: int = option(100, "optimisation steps per batch", low=1)
    lr: float | None = option(None, "Adam learning rate (default 0.3 for pixel, 0.01 for unet)", low=0,
                              low_open=True)
    threshold: float = option(0.5, "binarisation threshold of the masks", low=0, high=1, low_open=True)
    weights: tuple[float, float, float] = option((10.0, 100.0, 10.0), "loss weights matching,minimality,robustness",
                                                 parse=_floats, metavar="M,N,R", low=0)
    fill: str = option("border", "fill of the removed pixels: border (each image's own background, the median of "
                       "its outermost pixels), mean (the data mean) or black", choices=FILLS)
    noise: float = option(0.25, "robustness infill: the fill plus uniform pixel noise of width NOISE centred on it",
                          low=0)
    layers: tuple[str, ...] | None = option(None, "layers whose activations are matched (default: the store's "
                                            "target layer)", parse=split_names, metavar="A,B")
    roi: str | None = option(None, ".npy file of boolean regions of interest [n, H, W] by store row: adds each "
                             "mask's leakage outside its region", metavar="FILE")
    batch_size: int | None = option(None, "masks optimised together (default: as many as fit in a quarter of the "
                                    "machine's memory, half of a GPU's, by the model's activations on one image; "
                                    f"at most {AUTO_BATCH_MAX})", low=1)
    precision: str = option("auto", "arithmetic of the optimisation passes: auto (bfloat16 where the device computes "
                            "it natively: CUDA with bf16, CPUs with AVX512-BF16 or AMX; else float32), float32 or "
                            "bfloat16; masks are always scored in float32", choices=PRECISIONS)
    seed: int = option(0, "seed of the noise and the U-Net weights")
    device: str = device_option()


# ---- the stage ---------------------------------------------------------------------------------
def auto_batch_size(optimiser: MinimalEvidence, model: torch.nn.Module, image: torch.Tensor) -> int:
    """Masks per batch when ``--batch-size`` is not given: as many as fit, by
    :meth:`~i2x.attribution.minimal_evidence.MinimalEvidence.memory_per_mask`, in a quarter of the machine's
    memory (half of a GPU's), between 1 and :data:`AUTO_BATCH_MAX`. Taken from the memory the device has, not
    what is free, so a rerun on the same machine batches (and so draws its noise) the same way."""
    size = memory_size(image.device)
    if size is None:
        return AUTO_BATCH_MAX
    budget = size // (2 if image.device.type == "cuda" else 4)
    return int(max(1, min(AUTO_BATCH_MAX, budget // max(1, optimiser.memory_per_mask(model, image)))))


def _stats(values: np.ndarray) -> dict[str, float] | None:
    values = values[np.isfinite(values)]
    return mean_std(values) if values.size else None


def evidence(out_dir: str | Path, config: EvidenceConfig | None = None, progress: bool = True,
             **options: Any) -> dict[str, Any]:
    """Minimal evidence masks of the chosen samples at the chosen checkpoints; writes ``evidence/`` in the store
    and ``DIR/evidence.json`` and returns that JSON. Pass an :class:`EvidenceConfig` or its fields."""
    start = time.perf_counter()
    cfg = config or EvidenceConfig(**options)
    validate(cfg)
    if len(cfg.weights) != 3:
        raise UserError(f"--weights {','.join(map(str, cfg.weights))}: give three weights, matching,minimality,robustness")
    with locked(out_dir):  # no other i2x process rewrites the store while the masks are written
        refuse_links(out_dir)
        store = Store.open(out_dir, mode="a")
        rows, whys = select_samples(store, cfg.samples, cfg.max_samples, cfg.seed)
        ts = select_checkpoints(store, cfg.checkpoints)
        labels, names, methods = store.read("labels"), store.class_names, store.methods
        layers = list(cfg.layers or [store.attrs["layer"]])
        optimiser = MinimalEvidence(layers, generator=cfg.generator, resolution=cfg.resolution,
                                    iterations=cfg.iterations, lr=cfg.lr, threshold=cfg.threshold,
                                    weights=tuple(cfg.weights), noise=cfg.noise, seed=cfg.seed,
                                    precision=cfg.precision)
        results: list[EvidenceMasks] = []
        ious: dict[str, list[np.ndarray]] = {m: [] for m in methods}
        leaks: list[np.ndarray] = []
        roi = None
        batch = cfg.batch_size
        for t in tqdm(ts, desc="evidence", disable=not progress):
            ctx = open_context(store, t, cfg.device, batch or AUTO_BATCH_MAX, cfg.trust_checkpoints, cfg.trust_analysis,
                               cfg.model)
            batch = batch or auto_batch_size(optimiser, ctx.model, ctx.dataset[int(rows[0])][0][None].to(ctx.device))
            size = tuple(int(s) for s in ctx.data.input_size)
            roi = read_roi(cfg.roi, labels.size, size) if cfg.roi and roi is None else roi
            mean = torch.tensor(ctx.data.mean, dtype=torch.float32, device=ctx.device).view(1, -1, 1, 1)
            std = torch.tensor(ctx.data.std, dtype=torch.float32, device=ctx.device).view(1, -1, 1, 1)
            parts = []
            for lo in range(0, rows.size, batch):
                part = rows[lo:lo + batch]
                images = torch.stack([ctx.dataset[int(i)][0] for i in part]).to(ctx.device)
                parts.append(optimiser.explain(ctx.model, images, fill_of(cfg.fill, images, mean, std), std))
            result = EvidenceMasks(*(torch.cat([getattr(p, f) for p in parts]) for f in EvidenceMasks.__dataclass_fields__))
            results.append(result)
            images = torch.stack([ctx.dataset[int(i)][0] for i in rows]).to(ctx.device)
            raw = cams_for_targets(store, ctx, t, rows, images, result.target.numpy(), methods, batch)
            for m in methods:
                ious[m].append(iou_at_equal_area(result.masks, display_maps(raw[m], size)).numpy())
            leaks.append(leakage(result.masks, torch.from_numpy(roi[rows])).numpy() if roi is not None
                         else np.full(rows.size, np.nan))
        arrays = {
            "evidence/checkpoints": np.array(ts, dtype=np.int64), "evidence/rows": rows,
            "evidence/masks": np.stack([r.masks.numpy() for r in results]).astype(np.uint8),
            "evidence/soft": np.stack([r.soft.numpy() for r in results]).astype(np.float16),
            **{f"evidence/{f}": np.stack([getattr(r, f).numpy() for r in results]).astype(dtype)
               for f, dtype in (("target", np.int64), ("threshold", np.float32), ("area", np.float32),
                                ("kept", np.uint8), ("kl", np.float32), ("robust", np.float32))},
            "evidence/leakage": np.stack(leaks).astype(np.float32),
            **{f"evidence/iou/{m}": np.stack(ious[m]).astype(np.float32) for m in methods},
        }
        store.clear_group("evidence")
        for name, data in arrays.items():
            chunks = (1, *data.shape[1:]) if data.ndim > 2 else None
            store.write(name, data, chunks)
        summary = _summary(store, cfg, optimiser, ts, rows, whys, arrays, labels, names, methods)
        summary["settings"]["batch_size_used"] = min(batch, int(rows.size))
        summary["seconds"] = round(time.perf_counter() - start, 3)
        write_json(as_path(out_dir) / EVIDENCE, summary)
    return clean_json(summary)


def _summary(store: Store, cfg: EvidenceConfig, optimiser: MinimalEvidence, ts: list[int], rows: np.ndarray,
             whys: list[str], arrays: dict[str, np.ndarray], labels: np.ndarray, names: list[str],
             methods: list[str]) -> dict[str, Any]:
    """The JSON of the study: settings, samples, and per checkpoint the masks' scores overall and per class."""
    area, kept = arrays["evidence/area"], arrays["evidence/kept"].astype(bool)
    at_threshold = kept & (arrays["evidence/threshold"] == np.float32(cfg.threshold))
    y = labels[rows]
    per_checkpoint = []
    for u, t in enumerate(ts):
        per_class = {names[c]: {"n": int((y == c).sum()), "area": float(area[u, y == c].mean()),
                                "kept": float(kept[u, y == c].mean())} for c in np.unique(y)}
        per_checkpoint.append({
            "checkpoint": describe_checkpoint(store, t), "n": int(rows.size),
            "kept": float(kept[u].mean()), "kept_at_threshold": float(at_threshold[u].mean()),
            "area": _stats(area[u]), "area_kept": _stats(area[u, kept[u]]),
            "kl": _stats(arrays["evidence/kl"][u]), "robust": _stats(arrays["evidence/robust"][u]),
            "iou": {m: _stats(arrays[f"evidence/iou/{m}"][u]) for m in methods},
            "leakage": _stats(arrays["evidence/leakage"][u]), "per_class": per_class,
        })
    settings = {**asdict(cfg), "lr": optimiser.lr, "layers": optimiser.layers,
                "layer_weights": optimiser.layer_weights, "optimizer": "adam",
                "binary_share": optimiser.binary_share,
                "precision_used": str(autocast_dtype(cfg.precision, resolve_device(cfg.device)) or torch.float32)[6:]}
    return {
        "settings": settings, "class_names": names, "methods": methods,
        "checkpoints": [describe_checkpoint(store, t) for t in ts],
        "samples": {"rows": rows, "sample_index": store.read("sample_index")[rows], "labels": y, "why": whys},
        "per_checkpoint": per_checkpoint,
        "per_sample": {"area": area, "kept": kept, "target": arrays["evidence/target"]},
    }
