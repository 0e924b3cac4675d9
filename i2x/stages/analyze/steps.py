"""The analysis steps that read the store and write their arrays to its ``analysis/`` group: prototypes,
intensity, accuracy, the ridge mapping's β; :mod:`i2x.stages.analyze` runs them in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from i2x.analysis import Prototypes, RidgeMapping, accuracy, choose_k, confusion, intensity, presence_share
from i2x.errors import UserError
from i2x.io.location import RemotePath
from i2x.io.store import Store
from i2x.io.workdir import SUMMARY
from i2x.stages.analyze.config import AnalyzeConfig


def write_prototypes(store: Store, out: Path | RemotePath, cfg: AnalyzeConfig) -> tuple[Prototypes, dict[int, float]]:
    """Fit the prototypes on the final checkpoint's features, then clear the previous analysis and write them."""
    features = store.array("features")
    k_scores: dict[int, float] = {}
    k = cfg.k
    if k == "auto":
        k, k_scores = choose_k(features, tuple(cfg.k_candidates), seed=cfg.seed, pca_dim=cfg.pca_dim,
                               max_points_per_centroid=cfg.max_points_per_centroid, use_gpu=_gpu(cfg.device))
    protos = Prototypes(k=int(k), pca_dim=cfg.pca_dim, seed=cfg.seed, max_fit_vectors=cfg.max_fit_vectors,
                        max_points_per_centroid=cfg.max_points_per_centroid, use_gpu=_gpu(cfg.device)).fit(features)
    (out / SUMMARY).unlink(missing_ok=True)  # the old summary describes the analysis cleared below
    store.clear_analysis()
    store.write("analysis/pca_mean", protos.pca_.mean_.astype(np.float32))
    store.write("analysis/pca_components", protos.pca_.components_.astype(np.float32))
    store.write("analysis/centroids", protos.centroids_)
    store.write("analysis/assign", protos.assign_, chunks=(store.chunk_n,) + protos.assign_.shape[1:])
    return protos, k_scores


def write_intensity(store: Store, cfg: AnalyzeConfig, protos: Prototypes,
               n_ckpt: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Stream P[t, n, k] into the store; returns it (lazy), the presence mask and each prototype's share."""
    n, K = len(store.read("labels")), protos.k_
    P, _ = intensity(store.cam(cfg.method), protos.assign_, K, out=(
        store.create("analysis/intensity", (n_ckpt, n, K), "float32", (1, store.chunk_n, K)),
        store.create("analysis/present", (n, K), "bool", (store.chunk_n, K))))
    share = presence_share(protos.assign_, K)
    store.write("analysis/share", share)
    return P, store.read("analysis/present"), share


def write_accuracy(store: Store, labels: np.ndarray, usable: np.ndarray,
              n_ckpt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy, loss and confusion matrix per usable checkpoint (NaN elsewhere); at least two are needed."""
    probs, m = store.array("probs"), len(store.class_names)
    acc, loss = np.full(n_ckpt, np.nan), np.full(n_ckpt, np.nan)
    conf = np.zeros((n_ckpt, m, m), dtype=np.int64)
    rows = np.arange(len(labels))
    for t in usable:
        p = probs[int(t)]
        acc[t] = accuracy(p, labels)
        loss[t] = float(-np.log(np.clip(p[rows, labels], 1e-12, None)).mean())
        conf[t] = confusion(p, labels, m)
    store.write("analysis/accuracy", acc)
    store.write("analysis/loss", loss)
    store.write("analysis/confusion", conf)
    if len(usable) < 2:
        raise UserError(
            f"{store.path}: only {len(usable)} usable checkpoint(s); prototypes, intensity and accuracy are written, "
            "but confidence groups, the ridge mapping and the structure need two or more checkpoints (deltas)"
        )
    return acc, loss, conf


class AtCheckpoints:
    """A lazy view of a ``[t, ...]`` array at the usable checkpoints: ``view[i]`` reads ``array[usable[i]]``.

    The estimators read one checkpoint at a time, so ``[t, n, k]`` and ``[t, n, m]`` never sit in memory whole.
    """

    def __init__(self, array: Any, usable: np.ndarray) -> None:
        self.array = array
        self.usable = usable
        self.shape = (len(usable), *tuple(array.shape)[1:])

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.array[int(self.usable[i])])


def _gpu(device: str) -> bool | str:
    """FAISS on the GPU only when asked for CUDA (``auto`` lets FAISS decide by what it sees)."""
    return False if device == "cpu" else "auto"


def write_mapping(store: Store, mapping: RidgeMapping, k: int, m: int) -> None:
    """The global β, λ and R² per step, and per-group β as a padded ``[s, g, k, m]`` array (NaN where a slot
    is unused) with ``group_ids``."""
    store.write("analysis/beta", mapping.beta_)
    store.write("analysis/alpha", mapping.alpha_)
    store.write("analysis/r2", mapping.r2_)
    n_steps = len(mapping.beta_)
    per_step: dict[int, list[int]] = {}
    for step, group in sorted(mapping.group_beta_):
        per_step.setdefault(step, []).append(group)
    g = max((len(v) for v in per_step.values()), default=0)
    ids = np.full((n_steps, max(g, 1)), -1, dtype=np.int32)
    betas = np.full((n_steps, max(g, 1), k, m), np.nan, dtype=np.float32)
    for step, groups in per_step.items():
        for slot, group in enumerate(groups):
            ids[step, slot] = group
            betas[step, slot] = mapping.group_beta_[(step, group)]
    store.write("analysis/group_ids", ids)
    store.write("analysis/group_beta", betas)
