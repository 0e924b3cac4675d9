"""The attribution benchmark of a segmentation store (``i2x benchmark`` on one; :mod:`i2x.stages.extract.regions`).

Each row's target region R is held fixed (the ground truth, or the region predicted on the clean image) and
every method is measured: deletion inside R (the top f of R's pixels by the map removed by ROAD imputation,
p(c) = softmax of the region scores afterwards, against random orders inside R), leakage (the map's mass
outside R, upsampled to the input) against the uniform map's (1 - |R| / HW), relevance mass and rank,
pointing games, robustness (map of x vs map of T(x), flip with R flipped) and the runtime per image.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from i2x.attribution import METHODS, Attributor, get_methods
from i2x.attribution.fusion import dual_evidence
from i2x.attribution.regions import RegionModel, predicted_regions, region_occlusion
from i2x.io.store import Store
from i2x.io.workdir import BENCHMARK, AnalysisDir, clean_json, describe_checkpoint, select_checkpoints
from i2x.metrics import leakage as lk
from i2x.metrics.drift import iou_top, spearman
from i2x.metrics.faithfulness import value_at
from i2x.metrics.road import impute
from i2x.metrics.robustness import TRANSFORMS
from i2x.metrics.stats import nan_mean_std
from i2x.stages.benchmark.inputs import BenchmarkConfig, resolve_methods
from i2x.stages.context import open_context
from i2x.stages.extract.regions import batch_of, region_rows_of
from i2x.io.datasets import SEGMENTATION


class RegionExplainer:
    """Maps ``[B, h, w]`` of every method for region targets, with the seconds each method took."""

    def __init__(self, wrapper: RegionModel, layer: str, grid: tuple[int, int], methods: list[str], batch_size: int):
        self.wrapper, self.layer, self.grid, self.methods, self.batch_size = wrapper, layer, grid, methods, batch_size
        self.cams = [m for m in methods if m in METHODS] + (["gradcam"] if "dea" in methods and "gradcam" not in
                                                             methods else [])

    def __call__(self, images: torch.Tensor, classes: torch.Tensor, regions: torch.Tensor
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        maps: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        for name in self.cams:
            begin = time.perf_counter()
            parts = []
            with Attributor(self.wrapper, f"model.{self.layer}", get_methods([name])) as attributor:
                for i in range(0, len(images), self.batch_size):
                    j = slice(i, i + self.batch_size)
                    with self.wrapper.over(regions[j]):
                        parts.append(attributor.attribute(images[j], classes[j]).cams[name].float().cpu())
            maps[name], seconds[name] = torch.cat(parts), time.perf_counter() - begin
        if "occlusion" in self.methods or "dea" in self.methods:
            begin = time.perf_counter()
            maps["occlusion"] = region_occlusion(self.wrapper, images, classes, regions, self.grid)
            seconds["occlusion"] = time.perf_counter() - begin
        if "dea" in self.methods:
            begin = time.perf_counter()
            maps["dea"] = dual_evidence(maps["gradcam"], maps["occlusion"])
            seconds["dea"] = time.perf_counter() - begin + seconds["gradcam"] + seconds["occlusion"]
        return {m: maps[m] for m in self.methods}, {m: seconds[m] for m in self.methods}


def _target_probs(wrapper: RegionModel, x: torch.Tensor, classes: torch.Tensor, regions: torch.Tensor,
                  batch_size: int) -> np.ndarray:
    """softmax(S)_c of images ``x`` (a multiple of the rows, stacked) over the rows' fixed regions."""
    reps = x.shape[0] // classes.shape[0]
    classes, regions = classes.repeat(reps), regions.repeat(reps, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            j = slice(i, i + batch_size)
            with wrapper.over(regions[j]):
                out.append(wrapper(x[j]).softmax(1).gather(1, classes[j, None])[:, 0])
    return torch.cat(out).double().cpu().numpy()


def deletion_masks(saliency: torch.Tensor, regions: torch.Tensor, removed: np.ndarray) -> torch.Tensor:
    """Masks ``[F, B, H, W]``: the top ``round(f |R|)`` pixels of each region by ``saliency`` [B, H, W] (ties broken
    by position), for every fraction f of ``removed``; pixels outside the region are never removed."""
    b = saliency.shape[0]
    flat = torch.where(regions.flatten(1), saliency.flatten(1).double(), torch.tensor(-torch.inf, dtype=torch.double))
    order = torch.argsort(-flat, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    area = regions.flatten(1).sum(1)
    counts = torch.round(torch.as_tensor(removed)[:, None] * area[None]).long()  # [F, B]
    return (rank[None] < counts[..., None]).view(len(removed), b, *saliency.shape[1:])


def _deletion(wrapper: RegionModel, x: torch.Tensor, classes: torch.Tensor, regions: torch.Tensor,
              saliency: torch.Tensor, removed: np.ndarray, noise: float, seed: int, batch_size: int) -> np.ndarray:
    """p(c) ``[F, B]`` after removing the top fractions of each region by ``saliency``."""
    masks = deletion_masks(saliency, regions, removed)
    f, b = masks.shape[:2]
    images = impute(x.cpu().repeat(f, 1, 1, 1), masks.reshape(f * b, *masks.shape[2:]), noise,
                    torch.Generator().manual_seed(seed)).to(x.device)
    return _target_probs(wrapper, images, classes, regions, batch_size).reshape(f, b)


def _regions(wrapper: RegionModel, x: torch.Tensor, classes: torch.Tensor, truth: torch.Tensor,
             predicted: bool) -> torch.Tensor:
    """The rows' target regions at this checkpoint: the truth, or the clean image's predicted region of c."""
    if not predicted:
        return truth
    with torch.no_grad():
        return predicted_regions(wrapper.pixel_logits(x), classes, truth).cpu()


def benchmark_regions(store: Store, cfg: BenchmarkConfig, out: AnalysisDir) -> dict[str, Any]:
    """The attribution benchmark of a segmentation store (module docstring); writes ``DIR/benchmark.json``."""
    start = time.perf_counter()
    methods = resolve_methods(cfg, store)
    ts = select_checkpoints(store, cfg.checkpoints, cfg.every)
    labels = store.read("labels")
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(len(labels), size=min(cfg.samples, len(labels)), replace=False))
    detail = np.sort(rng.choice(len(rows), size=min(cfg.detail_samples, len(rows)), replace=False))
    removed = np.sort(1 - np.asarray(cfg.percentiles, dtype=np.float64) / 100)
    predicted = store.config.get("target", "true") == "predicted"
    grid, layer = store.grid, store.attrs["layer"]
    result: dict[str, Any] = {
        "task": SEGMENTATION, "settings": {**asdict(cfg), "methods": methods}, "methods": methods, "n_samples": int(rows.size),
        "n_detail": int(detail.size), "rows": rows, "removed_fractions": removed, "grid": list(grid),
        "class_names": store.class_names, "transforms": {k: v[1] for k, v in TRANSFORMS.items()},
        "region": "predicted" if predicted else "true", "checkpoints": [], "results": {}, "random": {},
        "uniform_leakage": {}, "runtime_ms": {}, "curves": {},
    }
    for t in ts:
        ctx = open_context(store, t, cfg.device, cfg.batch_size, cfg.trust_checkpoints, cfg.trust_analysis, cfg.model)
        region_rows, positions = region_rows_of(ctx)
        name = store.checkpoints[t]["name"]
        wrapper = RegionModel(ctx.model).eval()
        images, classes, truth = batch_of(region_rows, positions[rows], ctx.device)
        regions = _regions(wrapper, images, classes, truth.cpu(), predicted)
        explainer = RegionExplainer(wrapper, layer, grid, methods, cfg.batch_size)
        maps, seconds = explainer(images, classes, regions)
        size = tuple(images.shape[-2:])
        scores: dict[str, dict[str, Any]] = {m: {} for m in methods}
        result["checkpoints"].append(describe_checkpoint(store, t))
        result["runtime_ms"][name] = {m: 1000 * s / len(rows) for m, s in seconds.items()}
        up = {m: F.interpolate(maps[m][:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
              for m in methods}
        roi = regions.numpy()
        uniform = lk.leakage(np.ones(roi.shape), roi)
        result["uniform_leakage"][name] = nan_mean_std(uniform)
        for m in methods:
            scores[m].update({
                "leakage": nan_mean_std(lk.leakage(up[m], roi)),
                "relevance_mass": nan_mean_std(lk.relevance_mass(up[m], roi)),
                "relevance_rank": nan_mean_std(lk.relevance_rank(up[m], roi)),
                "pointing_game": nan_mean_std(lk.pointing_game(up[m], roi, cfg.pointing_tolerance)),
                "energy_pointing_game": nan_mean_std(lk.energy_pointing_game(up[m], roi)),
                "leakage_vs_uniform": nan_mean_std(lk.leakage(up[m], roi) / uniform),
            })
        # Deletion inside the target region, against random orders inside it.
        x, c, r = images[detail], classes[detail], regions[detail]
        before = _target_probs(wrapper, x, c, r, cfg.batch_size)
        generator = torch.Generator().manual_seed(cfg.seed)
        draws = np.stack([_deletion(wrapper, x, c, r, torch.rand(r.shape, generator=generator), removed, cfg.noise,
                                    cfg.seed + k, cfg.batch_size) for k in range(cfg.random_draws)])
        result["random"][name] = {"morf": nan_mean_std(draws.mean(axis=(0, 1))), "curve": draws.mean(axis=(0, 2))}
        grid_f = np.concatenate([[0.0], removed])
        for m in methods:
            after = _deletion(wrapper, x, c, r, torch.from_numpy(up[m][detail]), removed, cfg.noise, cfg.seed,
                              cfg.batch_size)
            curve = np.concatenate([before[None], after])
            scores[m]["deletion_morf"] = nan_mean_std(after.mean(0))
            scores[m]["beats_random"] = bool(after.mean() < draws.mean())
            for f in cfg.fractions:
                scores[m][f"deletion_drop_{f:g}"] = nan_mean_std(before - value_at(curve.T, f, grid_f))
            result["curves"].setdefault(name, {})[m] = after.mean(1)
        # Robustness: the map of x against the map of T(x), the region moved with the image.
        noise_gen = torch.Generator().manual_seed(cfg.seed)
        per_transform: dict[str, list[np.ndarray]] = {m: [] for m in methods}
        for tname, (transform, _) in TRANSFORMS.items():
            flip = tname == "flip"
            moved, _ = explainer(transform(x, noise_gen), c, r.flip(-1) if flip else r)
            for m in methods:
                a, b = maps[m][detail], moved[m].flip(-1) if flip else moved[m]
                rho = spearman(a, b)
                per_transform[m].append(rho)
                scores[m][f"{tname}_spearman"] = nan_mean_std(rho)
                scores[m][f"{tname}_iou"] = nan_mean_std(iou_top(a, b, cfg.top_share))
        for m in methods:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a row whose every map is constant: NaN
                scores[m]["robust_spearman"] = nan_mean_std(np.nanmean(np.stack(per_transform[m]), axis=0))
            scores[m]["runtime_ms"] = {"mean": result["runtime_ms"][name][m], "std": None, "n": int(rows.size)}
        result["results"][name] = scores
    result["notes"] = [f"{n}: a random order inside the region removes evidence at least as fast as {m}'s map."
                       for n, per in result["results"].items() for m, s in per.items() if not s["beats_random"]]
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["ms_per_image"] = 1000 * result["seconds"] / (rows.size * len(ts))
    out.write(BENCHMARK, result)
    return clean_json(result)
