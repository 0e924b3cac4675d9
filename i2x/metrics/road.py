"""ROAD: noisy linear imputation of removed pixels, and the MoRF / LeRF scores (Rong et al., ICML 2022).

A constant fill on scattered pixels makes images no training image resembles, so the model's drop
measures the fill as much as the map. ROAD fills each removed pixel with the weighted mean of its
8 neighbours (weight 1/6 orthogonal, 1/12 diagonal, renormalised at the border), solved jointly for
all removed pixels of an image as one sparse linear system, then adds Gaussian noise (std 0.01):

    sum_n w_n * (x_i - x_n) = 0   for every removed pixel i   (x_n known or itself unknown)

We solve the systems of a whole batch at once (one block-diagonal sparse system, banded because the
unknowns are numbered row-major: one banded Cholesky, one right-hand side per channel). An image whose every pixel is removed has no neighbour to copy:
it gets ``fallback`` (default 0, the mean colour of normalised inputs) plus the noise.

Scores follow pytorch-grad-cam's ``ROADCombined``: at percentile p of the map, MoRF removes the
pixels with map >= percentile(map, p) (the 100-p % most relevant), LeRF those with
-map >= percentile(-map, p) (the 100-p % least relevant); the score is the target's softmax
probability after removal minus before; the combined score is mean_p (LeRF - MoRF) / 2 over
p = 10..90 (higher: more faithful).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy.linalg import solveh_banded
from threadpoolctl import threadpool_limits

#: Neighbour offsets (row, col) and weights of the imputation.
NEIGHBOURS = (((-1, -1), 1 / 12), ((-1, 0), 1 / 6), ((-1, 1), 1 / 12), ((0, -1), 1 / 6),
              ((0, 1), 1 / 6), ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12))
NOISE = 0.01
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ORDERS = ("morf", "lerf")


def impute(images: torch.Tensor, removed: torch.Tensor, noise: float = NOISE,
           generator: torch.Generator | None = None, fallback: float = 0.0) -> torch.Tensor:
    """``images`` [B, C, H, W] with the ``removed`` [B, H, W] pixels replaced by noisy linear imputation.

    All channels of a pixel are removed together; the result has the images' dtype and device.
    """
    b, c, h, w = images.shape
    if tuple(removed.shape) != (b, h, w):
        raise ValueError(f"removed must be [B, H, W] = {(b, h, w)}, got {tuple(removed.shape)}")
    x = images.detach().cpu().double().reshape(b, c, h * w).numpy()
    mask = removed.detach().cpu().bool().reshape(b, h * w).numpy().copy()
    full = mask.all(axis=1)
    mask[full] = False  # solved separately: nothing to copy from
    sample, pixel = np.nonzero(mask)
    n = sample.size
    out = x.copy()
    if n:
        var = np.full((b, h * w), -1, dtype=np.int64)
        var[sample, pixel] = np.arange(n)
        row, col = pixel // w, pixel % w
        diag, rhs = np.zeros(n), np.zeros((n, c))
        rows, cols, vals = [], [], []
        for (dr, dc), weight in NEIGHBOURS:
            r, q = row + dr, col + dc
            inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
            eq, nb, s = np.flatnonzero(inside), (r * w + q)[inside], sample[inside]
            diag[eq] += weight
            unknown = mask[s, nb]
            rows.append(eq[unknown])
            cols.append(var[s[unknown], nb[unknown]])
            vals.append(np.full(int(unknown.sum()), -weight))
            rhs[eq[~unknown]] += weight * x[s[~unknown], :, nb[~unknown]]
        # Unknowns are numbered in row-major order, so the system is banded (half-width <= W + 1) and
        # symmetric positive definite: a banded Cholesky solves the whole batch in O(n W^2).
        rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        upper = rows < cols
        band = int((cols[upper] - rows[upper]).max(initial=0))
        ab = np.zeros((band + 1, n))
        ab[band] = diag
        ab[band + rows[upper] - cols[upper], cols[upper]] = vals[upper]
        with threadpool_limits(1, user_api="blas"):  # a banded solve gains nothing from threads; contention costs 10x
            solution = solveh_banded(ab, rhs, check_finite=False)  # [n, C]
        out[sample, :, pixel] = solution
    out[full] = fallback
    result = torch.from_numpy(out)
    if noise:
        filled = torch.from_numpy(mask | full[:, None])[:, None].expand(b, c, h * w)
        result = result + noise * filled * torch.randn(result.shape, generator=generator, dtype=result.dtype)
    return result.reshape(b, c, h, w).to(images.dtype).to(images.device)


def removal_mask(saliency: torch.Tensor, percentile: float, order: str) -> torch.Tensor:
    """Pixels [B, H, W] that ROAD removes at ``percentile`` of each map, as pytorch-grad-cam chooses them.

    ``morf``: map >= percentile(map, p), the most relevant (100 - p) %; ``lerf``: -map >= percentile(-map, p).
    """
    if order not in ORDERS:
        raise ValueError(f"order {order!r} is not one of {', '.join(ORDERS)}")
    maps = saliency.detach().cpu().numpy()
    maps = maps if order == "morf" else -maps
    thresholds = np.percentile(maps.reshape(maps.shape[0], -1), percentile, axis=1)
    return torch.from_numpy(maps >= thresholds[:, None, None])


def road_scores(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, saliency: torch.Tensor,
                target: torch.Tensor, percentiles: Sequence[float] = PERCENTILES, noise: float = NOISE,
                generator: torch.Generator | None = None, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Change of p(target) after ROAD removal [B, P] for ``morf`` and ``lerf``, and ``combined`` [B].

    ``combined`` = mean over percentiles of (lerf - morf) / 2, pytorch-grad-cam's ``ROADCombined``
    with a softmax target. ``saliency`` [B, H, W] must be input-sized.
    """
    target = torch.as_tensor(target, device=images.device).long()

    def prob(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model_fn(x[i:i + batch_size]).softmax(1).gather(1, target[i:i + batch_size, None])[:, 0]
                              for i in range(0, x.shape[0], batch_size)]).double().cpu()

    before = prob(images)
    out: dict[str, np.ndarray] = {}
    for order in ORDERS:
        after = [prob(impute(images, removal_mask(saliency, p, order).to(images.device), noise, generator))
                 for p in percentiles]
        out[order] = (torch.stack(after, dim=1) - before[:, None]).numpy()
    out["combined"] = (out["lerf"] - out["morf"]).mean(axis=1) / 2
    return out
