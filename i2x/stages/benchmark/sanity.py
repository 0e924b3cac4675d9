"""Sanity checks of the benchmark's maps: cascading top-down model-parameter randomisation at one
checkpoint, and the similarity of each checkpoint's maps to the first benchmarked checkpoint's."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from i2x.metrics.drift import spearman
from i2x.metrics.stats import nan_mean_std
from i2x.stages.benchmark.maps import ClassTarget, Explainer


def similarity(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Per method, the Spearman correlation (mean ± std over samples) of two sets of maps of the same images."""
    return {m: nan_mean_std(spearman(a[m], b[m])) for m in a}


def randomisation(model: nn.Module, explainer: Explainer, images: torch.Tensor, target: ClassTarget,
                  original: dict[str, torch.Tensor], seed: int) -> list[dict[str, Any]]:
    """Cascading top-down randomisation: after each further conv/linear layer is re-initialised, the
    Spearman correlation of every method's maps with the trained model's."""
    model = copy.deepcopy(model).eval()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]
    steps = []
    for i, (name, module) in enumerate(layers):
        torch.manual_seed(seed + i)
        module.reset_parameters()
        randomised = Explainer(model, explainer.layer, explainer.grid, explainer.methods, explainer.batch_size,
                               images[:2])
        steps.append({"layer": name, "spearman": similarity(randomised.maps(images, target), original)})
    return steps
