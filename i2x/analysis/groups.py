"""Confidence-change groups (DESIGN D7): HDBSCAN on ΔŶ[s] = probs[s+1] - probs[s], one clustering per step s.

Defaults chosen here where the design is silent:
- `min_cluster_size=None` means max(10, n // 100); it is clamped to at least 2 (HDBSCAN's minimum).
- `min_samples=None` leaves HDBSCAN's default (equal to min_cluster_size).
- Other HDBSCAN settings are the library's defaults (Euclidean metric, excess-of-mass selection,
  allow_single_cluster=False).
- A degenerate step (fewer samples than min_cluster_size, or every ΔŶ row identical, e.g. a
  checkpoint repeated) is not clustered: all its samples are noise (-1).
"""

from __future__ import annotations

from typing import Any

import hdbscan
import numpy as np

from i2x.errors import UserError


class ConfidenceGroups:
    """Groups of samples whose softmax vectors changed alike between consecutive checkpoints.

    Learned: `labels_` [t-1, n] int32 (noise = -1), `n_groups_` [t-1] int (groups other than noise),
    `min_cluster_size_` (the value used).
    """

    def __init__(self, min_cluster_size: int | None = None, min_samples: int | None = None) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples

    def fit(self, probs: Any) -> ConfidenceGroups:
        """Cluster ΔŶ of each step of `probs` [t, n, m] (numpy or zarr; read one checkpoint at a time)."""
        t, n, _ = tuple(probs.shape)
        if t < 2:
            raise UserError(f"confidence groups need at least 2 checkpoints, the store holds {t}; "
                            "add checkpoints to the checkpoint directory")
        for name in ("min_cluster_size", "min_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise UserError(f"{name} must be a positive integer or None, got {value!r}")
        size = max(10, n // 100) if self.min_cluster_size is None else int(self.min_cluster_size)
        self.min_cluster_size_ = max(2, size)
        self.labels_ = np.full((t - 1, n), -1, dtype=np.int32)
        previous = np.asarray(probs[0], dtype=np.float64)
        for s in range(t - 1):
            current = np.asarray(probs[s + 1], dtype=np.float64)
            self.labels_[s] = self._cluster(current - previous)
            previous = current
        self.n_groups_ = self.labels_.max(axis=1, initial=-1).astype(np.int64) + 1
        return self

    def _cluster(self, delta: np.ndarray) -> np.ndarray:
        """HDBSCAN labels of the rows of one step's ΔŶ [n, m]; all -1 for a degenerate step."""
        n = delta.shape[0]
        if n < self.min_cluster_size_ or np.all(delta == delta[:1]):
            return np.full(n, -1, dtype=np.int32)
        clusterer = hdbscan.HDBSCAN(min_cluster_size=self.min_cluster_size_, min_samples=self.min_samples)
        return clusterer.fit_predict(delta).astype(np.int32)
