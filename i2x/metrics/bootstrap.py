"""Paired bootstrap over samples: many rows of per-sample values resampled with the same draws.

Comparing runs or methods measured on the same samples needs one resample per replicate shared by
every row, so a difference between two rows keeps the pairing (sample i counts in both or in neither).
A row's value is NaN where that sample does not count for it (e.g. not a true positive in that run);
its replicate mean is the mean over the drawn samples that count, NaN when none was drawn.
"""

from __future__ import annotations

import numpy as np

#: Replicates per block, so the [block, n] count matrix stays small for large n.
_BLOCK_CELLS = 4_000_000


def bootstrap_means(values: np.ndarray, replicates: int = 1000, seed: int = 0) -> np.ndarray:
    """Means [replicates, k] of each of the k rows of ``values`` [k, n] over ``replicates`` shared resamples.

    Each replicate draws n sample positions with replacement (numpy's default generator seeded with
    ``seed``); NaNs in a row are left out of that row's mean.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be [rows, samples], got shape {values.shape}")
    k, n = values.shape
    out = np.full((replicates, k), np.nan)
    if n == 0 or replicates == 0:
        return out
    valid = ~np.isnan(values)
    filled = np.where(valid, values, 0.0)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, replicates, block):
        b = min(block, replicates - start)
        draws = rng.integers(0, n, size=(b, n))
        counts = np.bincount((draws + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + b] = (counts @ filled.T) / (counts @ valid.T)
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> list[float | None]:
    """Percentile interval [lo, hi] of the finite replicates ([None, None] when there are none)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0:
        return [None, None]
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return [float(lo), float(hi)]
