"""Prototype intensity (D6 in docs/ARCHITECTURE.md): P[t, n, k] = mean raw CAM over the locations of sample n assigned to prototype k.

Assignments come from the final checkpoint only, so which prototypes a sample contains is fixed
over t: `present[n, k]` marks them, and P is 0 where k is absent (so ΔP is 0 there and absence
never reads as evidence). Sums are accumulated in float64 with one `np.bincount` per chunk of
samples (all checkpoints at once) and returned as float32. Inputs may be zarr arrays; they are
read in chunks of samples (about 8M CAM values per read unless `chunk` is given).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from i2x.analysis._chunks import chunk_len, sample_slices

#: Share of a sample's locations at which a prototype counts as covering it: curation (D10) excludes the sample
#: then (``i2x finetune --min-share``), and the analysis counts the samples a curation would exclude by it.
MIN_SHARE = 0.1


def _location_counts(assign: np.ndarray, k: int) -> np.ndarray:
    """Number of locations of each sample assigned to each prototype: [c, h, w] -> [c, k] int64."""
    c = assign.shape[0]
    flat = assign.reshape(c, -1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= k):
        raise ValueError(f"assignments must lie in [0, {k}), found [{flat.min()}, {flat.max()}]")
    keys = np.arange(c, dtype=np.int64)[:, None] * k + flat
    return np.bincount(keys.ravel(), minlength=c * k).reshape(c, k)


def intensity(cams: Any, assign: Any, k: int, chunk: int | None = None,
              out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """Mean CAM per (checkpoint, sample, prototype) and the presence mask.

    cams [t, n, h, w], assign [n, h, w] int in [0, k) -> (P [t, n, k] float32, present [n, k] bool).
    With `out` = (P, present) array-likes of those shapes (e.g. zarr arrays), each chunk of samples
    is written there and they are returned, so memory does not grow with n.
    """
    t, n, h, w = tuple(cams.shape)
    if tuple(assign.shape) != (n, h, w):
        raise ValueError(f"assign shape {tuple(assign.shape)} does not match cams {tuple(cams.shape)} (want [n, h, w])")
    if out is None:
        out = np.zeros((t, n, k), dtype=np.float32), np.zeros((n, k), dtype=bool)
    P, present = out
    for sl in sample_slices(n, chunk_len(cams, 1, chunk)):
        a = np.asarray(assign[sl])
        c = a.shape[0]
        counts = _location_counts(a, k)
        # key of (checkpoint, sample-in-chunk, prototype) for every CAM value of the chunk
        keys = (np.arange(t, dtype=np.int64)[:, None, None] * (c * k)
                + np.arange(c, dtype=np.int64)[None, :, None] * k
                + a.reshape(1, c, -1).astype(np.int64))
        weights = np.asarray(cams[:, sl], dtype=np.float64).reshape(t, c, -1)
        sums = np.bincount(keys.ravel(), weights=weights.ravel(), minlength=t * c * k).reshape(t, c, k)
        P[:, sl] = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0).astype(np.float32)
        present[sl] = counts > 0
    return P, present


def presence_share(assign: Any, k: int, chunk: int | None = None) -> np.ndarray:
    """Fraction of each sample's locations assigned to each prototype: assign [n, h, w] -> [n, k] float32.

    Rows sum to 1; curation (D10) excludes a sample when an uncertain prototype's share reaches :data:`MIN_SHARE`.
    """
    n = assign.shape[0]
    share = np.empty((n, k), dtype=np.float32)
    for sl in sample_slices(n, chunk_len(assign, 0, chunk)):
        a = np.asarray(assign[sl])
        counts = _location_counts(a, k)
        share[sl] = counts / max(1, a[0].size)
    return share
