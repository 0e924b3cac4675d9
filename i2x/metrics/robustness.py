"""Robustness of attribution maps to input perturbations: similarity of the map of x and of T(x).

Per sample, between two maps a, b [B, h, w]: Pearson correlation (NaN for a constant map) here; Spearman correlation
and top-k IoU are the drift metrics' (:func:`i2x.metrics.drift.spearman`, :func:`i2x.metrics.drift.iou_top`: average
ranks for ties, the top ``share`` of cells with ties in row-major order).
The perturbations act on normalised inputs, strengths in data-set standard deviations:
Gaussian noise (std 0.1), brightness (+0.2), contrast (x -> m + 0.8 (x - m), m the image's mean per
channel), blur (Gaussian, kernel 3, sigma 0.7), horizontal flip (the map is flipped back).

Max-sensitivity follows captum's ``sensitivity_max`` normalisation: max over ``samples`` draws of
d ~ U[-radius, radius] per input element of ||phi(x + d) - phi(x)||_2 / ||phi(x)||_2 (radius 0.02,
10 samples). Quantus 0.6's MaxSensitivity normalises the same way (the map's norm, which makes
raw CAMs of arbitrary scale comparable; tests/test_benchmark_quantus.py checks it draw for draw)
but defaults to 200 samples of radius 0.2, so its numbers are not comparable with these defaults.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

def _blur(x: torch.Tensor, kernel: list[int], sigma: list[float]) -> torch.Tensor:
    """torchvision's Gaussian blur (imported on use: torchvision's import is slow)."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, kernel, sigma)


#: name -> (perturbation of a normalised batch, description); "flip" maps are flipped back by the caller.
TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor, torch.Generator], torch.Tensor], str]] = {
    "noise": (lambda x, g: x + 0.1 * torch.randn(x.shape, generator=g).to(x), "Gaussian noise, std 0.1"),
    "brightness": (lambda x, g: x + 0.2, "brightness +0.2"),
    "contrast": (lambda x, g: x.mean(dim=(2, 3), keepdim=True) + 0.8 * (x - x.mean(dim=(2, 3), keepdim=True)),
                 "contrast x0.8 about the image mean"),
    "blur": (lambda x, g: _blur(x, [3, 3], [0.7, 0.7]), "Gaussian blur, kernel 3, sigma 0.7"),
    "flip": (lambda x, g: x.flip(-1), "horizontal flip (map flipped back)"),
}
SENSITIVITY_RADIUS = 0.02
SENSITIVITY_SAMPLES = 10


def _rows(a: np.ndarray | torch.Tensor) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.reshape(a.shape[0], -1).astype(np.float64)


def pearson(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-sample Pearson correlation [B] of two batches of maps; NaN where either map is constant."""
    x, y = _rows(a), _rows(b)
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(1) / np.where(den > 0, den, 1), np.nan)


def max_sensitivity(explain: Callable[[torch.Tensor], dict[str, torch.Tensor]], images: torch.Tensor,
                    radius: float = SENSITIVITY_RADIUS, samples: int = SENSITIVITY_SAMPLES,
                    generator: torch.Generator | None = None,
                    maps: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """captum-style max-sensitivity [B] per method: max over draws of ||phi(x + d) - phi(x)|| / ||phi(x)||,
    d ~ U[-r, r]. ``explain`` returns every method's maps at once, so each draw costs one call;
    ``maps`` are phi(x) when the caller has them already."""
    base = {m: _rows(v) for m, v in (explain(images) if maps is None else maps).items()}
    worst = {m: np.zeros(v.shape[0]) for m, v in base.items()}
    for _ in range(samples):
        d = (torch.rand(images.shape, generator=generator) * 2 - 1).to(images) * radius
        for m, v in explain(images + d).items():
            worst[m] = np.maximum(worst[m], np.linalg.norm(_rows(v) - base[m], axis=1))
    out = {}
    for m, v in base.items():
        norm = np.linalg.norm(v, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[m] = np.where(norm > 0, worst[m] / np.where(norm > 0, norm, 1), np.nan)
    return out
