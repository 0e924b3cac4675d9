"""ROAD faithfulness of the benchmark's maps at pixel and region level, against random removal orders.

ROAD (noisy linear imputation) removes the top (MoRF) or bottom (LeRF) fraction f = 1 - p/100 of
the map, at pixel level (the map upsampled bilinearly) and at region level (whole cells); exactly
round(f N) pixels or cells, ties broken at random (pytorch-grad-cam's threshold rule removes every
tied pixel, i.e. all zero pixels of a sparse ReLU map at once). Scores: MoRF = mean over f of the
target's score after removal (lower is more faithful), LeRF likewise (higher), combined =
(LeRF - MoRF) / 2 (ROADCombined), the drop s(x) - s(after) at ``fractions``; random orders
(``draws``, shared by methods and checkpoints) give the baseline and its spread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from i2x.attribution import display_maps
from i2x.attribution.occlusion import cell_of_pixel
from i2x.metrics.faithfulness import pixel_order, random_order, value_at
from i2x.metrics.road import impute
from i2x.metrics.stats import nan_mean_std
from i2x.stages.benchmark.maps import ClassTarget

LEVELS = ("pixel", "region")


class RoadRemoval:
    """ROAD removal of the top (MoRF) or bottom (LeRF) fractions of an order, at pixel or region level."""

    def __init__(self, size: tuple[int, int], grid: tuple[int, int], removed: np.ndarray, noise: float, seed: int):
        self.size, self.grid, self.removed, self.noise = size, grid, removed, noise
        self.footprint = cell_of_pixel(size, grid).reshape(-1)
        self.generator = torch.Generator().manual_seed(seed)

    def masks(self, order: torch.Tensor, level: str, lerf: bool) -> torch.Tensor:
        """Removal masks [F, B, H, W] from an order [B, N] (N pixels or cells, most relevant first)."""
        n = order.shape[1]
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand_as(order))
        if lerf:
            rank = n - 1 - rank
        counts = torch.as_tensor(np.round(self.removed * n).astype(np.int64))
        gone = rank[None] < counts[:, None, None]  # [F, B, N]
        if level == "region":
            gone = gone[..., self.footprint]
        return gone.view(len(counts), order.shape[0], *self.size)

    def images(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Imputed images [F * B, C, H, W], fraction-major."""
        f, b = masks.shape[:2]
        return impute(images.repeat(f, 1, 1, 1), masks.reshape(f * b, *self.size), self.noise, self.generator)


def road_summary(before: np.ndarray, after: dict[str, np.ndarray], removed: np.ndarray,
                 fractions: tuple[float, ...]) -> dict[str, Any]:
    """ROAD scores of one method: after[order] is the score [F, B] after removal."""
    grid = np.concatenate([[0.0], removed])
    morf_curve = np.concatenate([before[None], after["morf"]])  # [F+1, B]
    out: dict[str, Any] = {"morf": nan_mean_std(after["morf"].mean(0)), "lerf": nan_mean_std(after["lerf"].mean(0)),
                           "combined": nan_mean_std((after["lerf"] - after["morf"]).mean(0) / 2),
                           "curves": {o: after[o].mean(1) for o in after}}
    for f in fractions:
        out[f"drop_{f:g}"] = nan_mean_std(before - value_at(morf_curve.T, f, grid))
    return out


class RoadBenchmark:
    """ROAD scores of every method's maps for fixed images; the random removals are imputed once and
    reused at every checkpoint (they do not depend on the model)."""

    def __init__(self, images: torch.Tensor, grid: tuple[int, int], removed: np.ndarray, fractions: tuple[float, ...],
                 noise: float, draws: int, seed: int, batch_size: int):
        self.x, self.grid, self.removed, self.fractions = images, grid, removed, fractions
        self.size = tuple(images.shape[-2:])
        self.draws, self.seed, self.batch_size = draws, seed, batch_size
        self.road = RoadRemoval(self.size, grid, removed, noise, seed)
        self.order_gen = torch.Generator().manual_seed(seed)
        self.random_images: dict[str, list[torch.Tensor]] = {}

    def _random(self, level: str) -> list[torch.Tensor]:
        if level not in self.random_images:
            n = self.size[0] * self.size[1] if level == "pixel" else self.grid[0] * self.grid[1]
            self.random_images[level] = [
                self.road.images(self.x, self.road.masks(random_order(len(self.x), 1, n, self.order_gen), level, False))
                for _ in range(self.draws)]
        return self.random_images[level]

    def __call__(self, model: nn.Module, target: ClassTarget, maps: dict[str, torch.Tensor]) \
            -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(scores per method, random baseline per level, curves per method and level) for maps [B, h, w] of self.x."""
        f = len(self.removed)
        self.road.generator.manual_seed(self.seed)  # the same imputation noise at every checkpoint
        before = target.scores(model, self.x, self.batch_size).numpy()
        scores: dict[str, dict[str, Any]] = {m: {} for m in maps}
        random: dict[str, dict[str, Any]] = {}
        curves: dict[str, dict[str, Any]] = {m: {} for m in maps}
        for level in LEVELS:
            draws = np.stack([target.scores(model, r, self.batch_size).view(f, -1).numpy()
                              for r in self._random(level)])  # [draws, F, B]
            random[level] = {"morf": {"mean": float(draws.mean()), "std_draws": float(draws.mean(axis=(1, 2)).std())},
                             "curve": draws.mean(axis=(0, 2))}
            for m, cell_map in maps.items():
                saliency = display_maps(cell_map, self.size) if level == "pixel" else cell_map
                order = pixel_order(saliency, torch.Generator().manual_seed(self.seed))
                after = {o: target.scores(model, self.road.images(self.x, self.road.masks(order, level, o == "lerf")),
                                          self.batch_size).view(f, -1).numpy() for o in ("morf", "lerf")}
                summary = road_summary(before, after, self.removed, self.fractions)
                curves[m][level] = summary.pop("curves")
                scores[m].update({f"road_{k}_{level}": v for k, v in summary.items()})
                scores[m][f"beats_random_{level}"] = bool(summary["morf"]["mean"] < draws.mean())
        return scores, random, curves
