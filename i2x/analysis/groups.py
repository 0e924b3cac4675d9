"""Confidence-change groups (D7 in docs/ARCHITECTURE.md): HDBSCAN on ΔŶ[s] = probs[s+1] - probs[s], one clustering per step s.

Defaults chosen here where the design is silent:
- `min_cluster_size=None` means max(10, n // 100); it is clamped to at least 2 (HDBSCAN's minimum).
- `min_samples=None` leaves HDBSCAN's default (equal to min_cluster_size).
- Other HDBSCAN settings are the library's defaults (Euclidean metric, excess-of-mass selection,
  allow_single_cluster=False).
- A degenerate step (fewer samples than min_cluster_size, or every ΔŶ row identical, e.g. a
  checkpoint repeated) is not clustered: all its samples are noise (-1).

Cost at scale. HDBSCAN's Borůvka tree search runs on one core and grows faster than n (about
1 s per step at n = 7,500, 15-30 s at n = 60,000 on one core). Two things keep it in bounds:
- `max_fit_samples`: with more samples than that, each step is fitted on the same seeded random
  subset of `max_fit_samples` samples, with min_cluster_size scaled by the subset's share so it
  still means the same fraction of the data, and every other sample gets its label from
  `hdbscan.approximate_predict` (the library's out-of-sample assignment: the cluster of its
  neighbourhood in the fitted condensed tree, or noise). At or below the limit nothing changes.
- From PARALLEL_MIN_SAMPLES samples on, the steps run in parallel worker processes (joblib), one
  step each. Each step is an independent, deterministic clustering, so the labels are the same
  either way.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import hdbscan
import numpy as np
from hdbscan.prediction import approximate_predict
from joblib import Parallel, delayed

from i2x.errors import UserError

#: From this many samples on, steps are clustered in parallel processes (below it, starting them costs more).
PARALLEL_MIN_SAMPLES = 10_000


def default_min_cluster_size(n: int) -> int:
    """The default HDBSCAN min_cluster_size for n samples (D7 in docs/ARCHITECTURE.md): max(10, n // 100)."""
    return max(10, n // 100)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class ConfidenceGroups:
    """Groups of samples whose softmax vectors changed alike between consecutive checkpoints.

    Learned: `labels_` [t-1, n] int32 (noise = -1), `n_groups_` [t-1] int (groups other than noise),
    `min_cluster_size_` (the value used, in samples of the whole set), `fit_rows_` (the samples
    HDBSCAN was fitted on; all of them unless there are more than `max_fit_samples`) and
    `fit_min_cluster_size_` (min_cluster_size on those rows).
    """

    def __init__(self, min_cluster_size: int | None = None, min_samples: int | None = None,
                 max_fit_samples: int | None = None, n_jobs: int | None = None, random_state: int = 0) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.max_fit_samples = max_fit_samples
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, probs: Any) -> ConfidenceGroups:
        """Cluster ΔŶ of each step of `probs` [t, n, m] (numpy or zarr; read one checkpoint at a time).

        ``n_jobs``: worker processes; None means every available core from PARALLEL_MIN_SAMPLES
        samples on and 1 below. ``max_fit_samples=None`` fits every step on all samples.
        """
        t, n, _ = tuple(probs.shape)
        if t < 2:
            raise UserError(f"confidence groups need at least 2 checkpoints, the store holds {t}; "
                            "add checkpoints to the checkpoint directory")
        for name in ("min_cluster_size", "min_samples", "max_fit_samples", "n_jobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise UserError(f"{name} must be a positive integer or None, got {value!r}")
        size = default_min_cluster_size(n) if self.min_cluster_size is None else int(self.min_cluster_size)
        self.min_cluster_size_ = max(2, size)
        if self.max_fit_samples is None or n <= self.max_fit_samples:
            self.fit_rows_ = np.arange(n)
        else:
            rng = np.random.default_rng(self.random_state)
            self.fit_rows_ = np.sort(rng.choice(n, int(self.max_fit_samples), replace=False))
        self.fit_min_cluster_size_ = max(2, round(self.min_cluster_size_ * len(self.fit_rows_) / n))
        jobs = min(self._jobs(n), t - 1)
        settings = dict(fit_rows=self.fit_rows_ if len(self.fit_rows_) < n else None,
                        min_cluster_size=self.fit_min_cluster_size_, min_samples=self.min_samples,
                        core_jobs=max(1, available_cores() // jobs))
        if jobs == 1:
            labels = [_cluster(delta, **settings) for delta in _deltas(probs)]
        else:  # max_nbytes=None: hand workers writable copies (HDBSCAN's Cython refuses read-only memmaps)
            cluster = delayed(_cluster)
            labels = Parallel(n_jobs=jobs, max_nbytes=None)(cluster(delta, **settings) for delta in _deltas(probs))
        self.labels_ = np.stack(labels).astype(np.int32, copy=False)
        self.n_groups_ = self.labels_.max(axis=1, initial=-1).astype(np.int64) + 1
        return self

    def _jobs(self, n: int) -> int:
        """How many processes cluster the steps."""
        if self.n_jobs is not None:
            return int(self.n_jobs)
        return available_cores() if n >= PARALLEL_MIN_SAMPLES else 1


def _deltas(probs: Any) -> Iterator[np.ndarray]:
    """ΔŶ[s] = probs[s + 1] - probs[s] for each step, reading one checkpoint at a time."""
    previous = np.asarray(probs[0], dtype=np.float64)
    for s in range(1, tuple(probs.shape)[0]):
        current = np.asarray(probs[s], dtype=np.float64)
        yield current - previous
        previous = current


def _cluster(delta: np.ndarray, fit_rows: np.ndarray | None, min_cluster_size: int, min_samples: int | None,
             core_jobs: int) -> np.ndarray:
    """HDBSCAN labels of the rows of one step's ΔŶ [n, m], fitted on ``fit_rows`` (None: all) and
    predicted for the others; all -1 for a degenerate step."""
    n = delta.shape[0]
    fit = delta if fit_rows is None else delta[fit_rows]
    if fit.shape[0] < min_cluster_size or np.all(delta == delta[:1]):
        return np.full(n, -1, dtype=np.int32)
    clusterer = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                                core_dist_n_jobs=core_jobs, prediction_data=fit_rows is not None)
    fitted = clusterer.fit_predict(fit).astype(np.int32)
    if fit_rows is None:
        return fitted
    labels = np.full(n, -1, dtype=np.int32)
    labels[fit_rows] = fitted
    if fitted.max() >= 0:  # with no cluster at all, every other sample is noise too
        rest = np.ones(n, dtype=bool)
        rest[fit_rows] = False
        labels[rest] = approximate_predict(clusterer, delta[rest])[0]
    return labels
