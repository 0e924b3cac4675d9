"""Prototypes (D5 in docs/ARCHITECTURE.md): PCA + FAISS k-means of the final checkpoint's location feature vectors.

Every spatial location of every sample is one d-dimensional vector. Fitting uses a seeded
subsample of at most `max_fit_vectors` of them (drawn uniformly without replacement over all
n*h*w locations), read sample-chunk by sample-chunk so a zarr store is never loaded whole.
scikit-learn's PCA (whiten=False) is fitted on that subsample and projects to
p = min(pca_dim, d, subsample size) dimensions; FAISS k-means clusters the projected subsample.
FAISS k-means trains on at most `k * max_points_per_centroid` vectors; that draw is made here
(a seeded prefix of a random permutation of the projected subsample) rather than inside FAISS, so
the sampling is explicit: with the defaults (k=32, 256) k-means sees 8,192 vectors. Lloyd
iterations start from k-means++ seeds (scikit-learn's `kmeans_plusplus` on those vectors,
seeded by `seed`) instead of FAISS's uniform random pick, which often puts two seeds in one
cluster and never separates them. `predict` assigns every location to its nearest centroid
(L2, faiss IndexFlatL2).

Defaults chosen here where the design is silent:
- If the k-means training vectors hold fewer distinct vectors than `k`, k is clamped to that
  number (a `warnings.warn` and a message in `warnings_`), because k-means cannot place more
  centroids than distinct points.
- `use_gpu="auto"` uses FAISS GPU k-means when `faiss.get_num_gpus() > 0`; `True` requires a GPU.
- `choose_k` (for `--k auto`) picks the candidate with the highest silhouette score, computed on
  a PCA-projected subsample of up to `max_vectors` vectors (k-means as in `Prototypes`; the
  silhouette on a seeded sample of up to `silhouette_sample` of them, since it costs O(n^2));
  ties go to the smaller k.
"""

from __future__ import annotations

import warnings
from typing import Any

import faiss
import numpy as np
from sklearn.cluster import kmeans_plusplus
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from i2x.analysis._chunks import chunk_len, sample_slices
from i2x.errors import UserError


def _check_features(features: Any) -> tuple[int, int, int, int]:
    """Shape (n, h, w, d) of a 4-D feature array, or UserError."""
    shape = tuple(features.shape)
    if len(shape) != 4 or min(shape) < 1:
        raise UserError(f"features must have shape [n, h, w, d] with every size >= 1, got {shape}; "
                        "re-run extraction so the store holds the target layer's feature map")
    return shape  # type: ignore[return-value]


def sample_vectors(features: Any, max_vectors: int, seed: int, chunk: int | None = None) -> np.ndarray:
    """A seeded uniform subsample (without replacement) of at most `max_vectors` location vectors, float32 [v, d].

    Reads `features` [n, h, w, d] in chunks of samples, so only the chosen vectors are held in float32.
    """
    n, h, w, d = _check_features(features)
    per_sample = h * w
    total = n * per_sample
    if max_vectors >= total:
        chosen = np.arange(total)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_vectors, replace=False))
    out = np.empty((chosen.size, d), dtype=np.float32)
    length = chunk_len(features, 0, chunk)
    for sl in sample_slices(n, length):
        lo, hi = np.searchsorted(chosen, [sl.start * per_sample, sl.stop * per_sample])
        if lo == hi:
            continue
        block = np.asarray(features[sl]).reshape(-1, d)
        out[lo:hi] = block[chosen[lo:hi] - sl.start * per_sample]
    return out


def _faiss_gpu(use_gpu: bool | str) -> bool:
    """Whether to run FAISS on the GPU, from the `use_gpu` setting ("auto", True or False)."""
    available = faiss.get_num_gpus() > 0
    if use_gpu == "auto":
        return available
    if use_gpu is True and not available:
        raise UserError("use_gpu=True but FAISS sees no GPU; install faiss-gpu (pip install i2x[gpu]) "
                        "or pass use_gpu='auto'")
    if use_gpu not in (True, False):
        raise UserError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
    return bool(use_gpu)


def _kmeans(projected: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int,
            gpu: bool) -> tuple[np.ndarray, int]:
    """FAISS k-means of the projected vectors -> (centroids [k', p] float32, distinct).

    Trains on a seeded draw of at most k * max_points_per_centroid rows, from k-means++ seeds;
    k' = min(k, number of distinct rows in that draw).
    """
    order = np.random.default_rng(seed).permutation(projected.shape[0])
    train = projected[order[: k * max_points_per_centroid]]
    distinct = np.unique(train, axis=0).shape[0]
    k = min(k, distinct)
    train = np.ascontiguousarray(train[: k * max_points_per_centroid], dtype=np.float32)
    init, _ = kmeans_plusplus(train, k, random_state=seed)
    km = faiss.Kmeans(train.shape[1], k, niter=niter, seed=seed,
                      max_points_per_centroid=max_points_per_centroid, gpu=gpu)
    km.train(train, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32), distinct


def _nearest(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each row of x, int32."""
    _, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int32)


class Prototypes:
    """Prototypes of the final model's feature map: PCA + FAISS k-means, reproducible by `seed`.

    Learned: `pca_` (sklearn PCA), `centroids_` [k_, p] float32, `k_` (k after clamping),
    `assign_` [n, h, w] int32 (nearest centroid of every location), `n_fit_vectors_`
    (subsample size), `warnings_` (messages for the report, e.g. a clamped k).
    """

    def __init__(self, k: int = 32, pca_dim: int = 32, seed: int = 0, max_fit_vectors: int = 200_000,
                 max_points_per_centroid: int = 256, niter: int = 25, use_gpu: bool | str = "auto",
                 chunk: int | None = None) -> None:
        self.k = k
        self.pca_dim = pca_dim
        self.seed = seed
        self.max_fit_vectors = max_fit_vectors
        self.max_points_per_centroid = max_points_per_centroid
        self.niter = niter
        self.use_gpu = use_gpu
        self.chunk = chunk

    def _check_settings(self) -> None:
        for name in ("k", "pca_dim", "max_fit_vectors", "max_points_per_centroid", "niter"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")

    def fit(self, features: Any) -> Prototypes:
        """Fit PCA and k-means on a subsample of `features` [n, h, w, d], then assign every location."""
        self._check_settings()
        gpu = _faiss_gpu(self.use_gpu)
        sample = sample_vectors(features, self.max_fit_vectors, self.seed, self.chunk)
        self.n_fit_vectors_ = sample.shape[0]
        p = min(self.pca_dim, sample.shape[1], sample.shape[0])
        with np.errstate(invalid="ignore", divide="ignore"):  # identical vectors: variance ratios 0/0, no harm
            self.pca_ = PCA(n_components=p, whiten=False, random_state=self.seed).fit(sample)
        projected = np.ascontiguousarray(self.pca_.transform(sample), dtype=np.float32)
        del sample
        self.centroids_, distinct = _kmeans(projected, self.k, self.niter, self.seed,
                                            self.max_points_per_centroid, gpu)
        self.k_ = self.centroids_.shape[0]
        self.warnings_: list[str] = []
        if self.k_ < self.k:
            message = (f"k={self.k} prototypes requested but the feature vectors k-means trained on hold "
                       f"only {distinct} distinct ones; using k={self.k_}")
            if distinct == 1:
                message += ("; every location has the same feature vector, so the target layer is dead (e.g. a ReLU "
                            "that outputs 0 everywhere): choose another --layer")
            warnings.warn(message, stacklevel=2)
            self.warnings_.append(message)
        self.assign_ = self.predict(features)
        return self

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """PCA projection of location vectors [v, d] -> [v, p] float32."""
        return np.ascontiguousarray(self.pca_.transform(np.asarray(vectors, dtype=np.float32)), dtype=np.float32)

    def predict(self, features: Any, chunk: int | None = None) -> np.ndarray:
        """Nearest prototype of every location of `features` [n, h, w, d] -> [n, h, w] int32, chunk by chunk."""
        n, h, w, d = _check_features(features)
        if d != self.pca_.n_features_in_:
            raise UserError(f"features have d={d} channels but the prototypes were fitted on "
                            f"{self.pca_.n_features_in_}; refit the prototypes on this layer's features")
        index = faiss.IndexFlatL2(self.centroids_.shape[1])
        index.add(self.centroids_)
        assign = np.empty((n, h, w), dtype=np.int32)
        for sl in sample_slices(n, chunk_len(features, 0, chunk or self.chunk)):
            block = np.asarray(features[sl]).reshape(-1, d)
            assign[sl] = _nearest(index, self.transform(block)).reshape(-1, h, w)
        return assign


def choose_k(features: Any, candidates: tuple[int, ...] = (8, 16, 32, 64), seed: int = 0,
             max_vectors: int = 20_000, pca_dim: int = 32, niter: int = 25,
             max_points_per_centroid: int = 256, silhouette_sample: int = 5_000,
             use_gpu: bool | str = "auto") -> tuple[int, dict[int, float]]:
    """Pick k for `--k auto`: the candidate with the highest silhouette score on the PCA-projected subsample.

    Returns (k, {candidate: silhouette}); a candidate larger than the number of distinct vectors gets NaN.
    """
    if not candidates or any(int(c) < 2 for c in candidates):
        raise UserError(f"--k auto candidates must be integers >= 2, got {candidates!r}")
    gpu = _faiss_gpu(use_gpu)
    sample = sample_vectors(features, max_vectors, seed)
    p = min(pca_dim, sample.shape[1], sample.shape[0])
    projected = np.ascontiguousarray(PCA(n_components=p, random_state=seed).fit_transform(sample), dtype=np.float32)
    index = faiss.IndexFlatL2(p)
    scores: dict[int, float] = {}
    for k in sorted({int(c) for c in candidates}):
        centroids, _ = _kmeans(projected, k, niter, seed, max_points_per_centroid, gpu)
        index.reset()
        index.add(centroids)
        labels = _nearest(index, projected)
        if centroids.shape[0] < k or np.unique(labels).size < 2:
            scores[k] = float("nan")  # fewer distinct vectors than k: this candidate cannot be fitted
            continue
        scores[k] = float(silhouette_score(projected, labels, sample_size=min(silhouette_sample, len(labels)),
                                           random_state=seed))
    valid = {k: s for k, s in scores.items() if np.isfinite(s)}
    if not valid:
        raise UserError(f"--k auto: the features hold too few distinct vectors for any of the candidates "
                        f"{sorted(scores)}; pass --k with a smaller value")
    best = max(valid, key=lambda k: (valid[k], -k))
    return best, scores
