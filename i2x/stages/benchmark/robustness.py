"""Robustness of the benchmark's maps: the map of x against the map of T(x) for each perturbation T
(:mod:`i2x.metrics.robustness`; flipped maps are flipped back), and captum-style max-sensitivity."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from i2x.metrics.drift import iou_top, spearman
from i2x.metrics.robustness import TRANSFORMS, max_sensitivity, pearson
from i2x.metrics.stats import nan_mean_std
from i2x.stages.benchmark.maps import ClassTarget, Explainer


def robustness_scores(explainer: Explainer, x: torch.Tensor, target: ClassTarget, maps: dict[str, torch.Tensor],
                      top_share: float, radius: float, samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per method: Pearson, Spearman and top-k IoU under each transform, their mean Spearman and the
    max-sensitivity, for the maps [B, h, w] of the images x."""
    noise_gen = torch.Generator().manual_seed(seed)
    scores: dict[str, dict[str, Any]] = {m: {} for m in maps}
    per_transform: dict[str, list[np.ndarray]] = {m: [] for m in maps}
    for tname, (transform, _) in TRANSFORMS.items():
        moved = explainer.maps(transform(x, noise_gen), target)
        for m in maps:
            a, b = maps[m], moved[m].flip(-1) if tname == "flip" else moved[m]
            rho = spearman(a, b)
            per_transform[m].append(rho)
            scores[m][f"{tname}_pearson"] = nan_mean_std(pearson(a, b))
            scores[m][f"{tname}_spearman"] = nan_mean_std(rho)
            scores[m][f"{tname}_iou"] = nan_mean_std(iou_top(a, b, top_share))
    for m in maps:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a sample whose every map is constant: NaN
            scores[m]["robust_spearman"] = nan_mean_std(np.nanmean(np.stack(per_transform[m]), axis=0))
    sensitivity = max_sensitivity(lambda z: explainer.maps(z, target), x, radius, samples,
                                  torch.Generator().manual_seed(seed), maps)
    for m in maps:
        scores[m]["max_sensitivity"] = nan_mean_std(sensitivity[m])
    return scores
