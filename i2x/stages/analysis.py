"""The analysis stage: read an extracted store, run the estimators of :mod:`i2x.analysis`, write results back.

Order (each reads what the one before wrote): prototypes (PCA + FAISS k-means on the final
checkpoint's features) -> intensity ``P[t, n, k]`` -> confidence groups (HDBSCAN on ΔŶ) ->
ridge mapping ``β[s, k, m]`` -> structure (shared, specialized, uncertain prototypes) ->
cartography. Results go to the store's ``analysis/`` group and ``DIR/summary.json``.

Checkpoints whose weights held NaN/Inf (``finite[t] == 0``) are left out of the steps: a step s
runs between two consecutive *usable* checkpoints, listed in ``summary.json`` under ``steps``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from i2x.analysis import (ConfidenceGroups, Prototypes, RidgeMapping, Structure, accuracy, cartography,
                       cartography_summary, choose_k, confusion, intensity, presence_share)
from i2x.analysis.groups import default_min_cluster_size
from i2x.errors import UserError
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import SUMMARY, save_summary
from i2x.settings import validate

#: Default ceiling of HDBSCAN's min_samples (see :func:`_min_samples`).
MAX_MIN_SAMPLES = 50


@dataclass
class AnalyzeConfig:
    """Settings of the analysis (DESIGN D5-D9); every threshold is printed in the report."""

    k: int | str = 32
    pca_dim: int = 32
    method: str = "gradcam"
    seed: int = 0
    max_fit_vectors: int = 200_000
    max_points_per_centroid: int = 256
    k_candidates: tuple[int, ...] = (8, 16, 32, 64)
    min_cluster_size: int | None = None
    min_samples: int | None = None
    max_group_samples: int | None = 20_000
    alpha: float | None = None
    shared_presence: float = 0.9
    specialized_presence: float = 0.9
    specialized_max_overall: float = 0.5
    noise_quantile: float = 0.75
    min_flips: int = 2
    top_confused: int = 3
    jobs: int | None = None
    device: str = "auto"


@dataclass
class AnalyzeResult:
    """The summary written to ``summary.json`` and the time each stage took."""

    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    summary_path: Path | None = None


def _timed(timings: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - start, 3)
    return now


def analyze(out: str | Path, config: AnalyzeConfig | None = None, progress: bool = True) -> AnalyzeResult:
    """Analyse the store in ``out`` and write ``analysis/`` arrays and ``summary.json``."""
    cfg = config or AnalyzeConfig()
    validate(cfg)
    with locked(out):
        store = Store.open(out, mode="a")
        store.require_complete()
        return _analyze(store, Path(out), cfg, progress)


def _analyze(store: Store, out: Path, cfg: AnalyzeConfig, progress: bool) -> AnalyzeResult:
    cams = store.cam(cfg.method)
    probs = store.array("probs")
    labels = store.read("labels")
    names = store.class_names
    m = len(names)
    finite = store.read("finite").astype(bool)
    usable = np.flatnonzero(finite)
    if usable.size == 0:
        raise UserError(f"{store.path}: every checkpoint's weights hold NaN/Inf; nothing to analyse")
    if not finite[-1]:  # the prototypes come from the final checkpoint's features
        raise UserError(
            f"{store.path}: the final checkpoint {store.checkpoints[-1]['name']} diverged (NaN/Inf weights), and the "
            f"prototypes are built from the final checkpoint's features; extract again without it (e.g. add "
            f"--first {usable[-1] + 1} --overwrite to the `i2x extract` command)"
        )
    # every setting is checked (by building the estimators) before the previous analysis is cleared below
    group_est = ConfidenceGroups(min_cluster_size=cfg.min_cluster_size, min_samples=_min_samples(cfg, len(labels)),
                                 max_fit_samples=cfg.max_group_samples, n_jobs=cfg.jobs, random_state=cfg.seed)
    mapping_est = RidgeMapping(alpha=cfg.alpha)
    structure_est = Structure(
        shared_presence=cfg.shared_presence, specialized_presence=cfg.specialized_presence,
        specialized_max_overall=cfg.specialized_max_overall, noise_quantile=cfg.noise_quantile,
        min_flips=cfg.min_flips, top_confused=cfg.top_confused,
    )
    mapping_est._check_settings()  # the estimators check their settings in fit (scikit-learn style): check now
    structure_est._check_settings()
    timings: dict[str, float] = {}
    bar = tqdm(total=6, desc="analysis", disable=not progress)
    t0 = time.perf_counter()

    features = store.array("features")
    k_scores: dict[int, float] = {}
    k = cfg.k
    if k == "auto":
        k, k_scores = choose_k(features, tuple(cfg.k_candidates), seed=cfg.seed, pca_dim=cfg.pca_dim,
                               max_points_per_centroid=cfg.max_points_per_centroid, use_gpu=_gpu(cfg.device))
    protos = Prototypes(k=int(k), pca_dim=cfg.pca_dim, seed=cfg.seed, max_fit_vectors=cfg.max_fit_vectors,
                        max_points_per_centroid=cfg.max_points_per_centroid, use_gpu=_gpu(cfg.device)).fit(features)
    K = protos.k_
    (out / SUMMARY).unlink(missing_ok=True)  # the old summary describes the analysis cleared below
    store.clear_analysis()
    store.write("analysis/pca_mean", protos.pca_.mean_.astype(np.float32))
    store.write("analysis/pca_components", protos.pca_.components_.astype(np.float32))
    store.write("analysis/centroids", protos.centroids_)
    store.write("analysis/assign", protos.assign_, chunks=(store.chunk_n,) + protos.assign_.shape[1:])
    t0 = _timed(timings, "prototypes", t0)
    bar.update()

    n_ckpt, n = len(finite), len(labels)
    P, _ = intensity(cams, protos.assign_, K, out=(
        store.create("analysis/intensity", (n_ckpt, n, K), "float32", (1, store.chunk_n, K)),
        store.create("analysis/present", (n, K), "bool", (store.chunk_n, K))))
    present = store.read("analysis/present")
    share = presence_share(protos.assign_, K)
    store.write("analysis/share", share)
    t0 = _timed(timings, "intensity", t0)
    bar.update()

    P_used, probs_used = _AtCheckpoints(P, usable), _AtCheckpoints(probs, usable)
    steps = [[int(a), int(b)] for a, b in zip(usable[:-1], usable[1:])]
    acc = np.full(len(finite), np.nan)
    loss = np.full(len(finite), np.nan)
    conf = np.zeros((len(finite), m, m), dtype=np.int64)
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
    groups = group_est.fit(probs_used)
    store.write("analysis/groups", groups.labels_, chunks=(1, len(labels)))
    t0 = _timed(timings, "groups", t0)
    bar.update()

    mapping = mapping_est.fit(P_used, probs_used, groups.labels_)
    store.write("analysis/beta", mapping.beta_)
    store.write("analysis/alpha", mapping.alpha_)
    store.write("analysis/r2", mapping.r2_)
    _write_group_betas(store, mapping, len(steps), K, m)
    t0 = _timed(timings, "mapping", t0)
    bar.update()

    structure = structure_est.fit(mapping.beta_, present, labels, groups.labels_, conf[usable[-1]])
    t0 = _timed(timings, "structure", t0)
    bar.update()

    carto = cartography(probs_used, labels)
    for key, value in carto.items():
        store.write(f"analysis/{key}", value)
    t0 = _timed(timings, "cartography", t0)
    bar.update()
    bar.close()

    summary = _summary(store, cfg, protos, structure, mapping, groups, carto, acc, loss, conf, steps, present,
                       labels, share, k_scores, finite)
    summary["timings"] = timings
    store.set_analysis_attrs({"config": asdict(cfg), "k": K, "method": cfg.method, "steps": steps})
    path = save_summary(out, summary)  # written last and atomically: readers never see half of it
    return AnalyzeResult(summary, timings, path)


class _AtCheckpoints:
    """A lazy view of a ``[t, ...]`` array at the usable checkpoints: ``view[i]`` reads ``array[usable[i]]``.

    The estimators read one checkpoint at a time, so ``[t, n, k]`` and ``[t, n, m]`` never sit in memory whole.
    """

    def __init__(self, array: Any, usable: np.ndarray) -> None:
        self.array = array
        self.usable = usable
        self.shape = (len(usable), *tuple(array.shape)[1:])

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.array[int(self.usable[i])])


def _min_samples(cfg: AnalyzeConfig, n: int) -> int:
    """HDBSCAN's min_samples: as given, else min_cluster_size (HDBSCAN's default) capped at MAX_MIN_SAMPLES.

    HDBSCAN keeps a [n, min_samples] nearest-neighbour table; with min_cluster_size = n/100 (D7) and
    min_samples equal to it, that table grows as n^2 (0.6 GB at n = 60,000, twice that while it is built);
    the cap keeps it linear in n.
    """
    if cfg.min_samples is not None:
        return cfg.min_samples
    min_cluster_size = default_min_cluster_size(n) if cfg.min_cluster_size is None else cfg.min_cluster_size
    return max(1, min(min_cluster_size, MAX_MIN_SAMPLES))


def _gpu(device: str) -> bool | str:
    """FAISS on the GPU only when asked for CUDA (``auto`` lets FAISS decide by what it sees)."""
    return False if device == "cpu" else "auto"


def _write_group_betas(store: Store, mapping: RidgeMapping, n_steps: int, k: int, m: int) -> None:
    """Per-group β as a padded ``[s, g, k, m]`` array (NaN where a slot is unused) with ``group_ids``."""
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


def _summary(store: Store, cfg: AnalyzeConfig, protos: Prototypes, structure: Structure, mapping: RidgeMapping,
             groups: ConfidenceGroups, carto: dict[str, np.ndarray], acc: np.ndarray, loss: np.ndarray,
             conf: np.ndarray, steps: list[list[int]], present: np.ndarray, labels: np.ndarray, share: np.ndarray,
             k_scores: dict[int, float], finite: np.ndarray) -> dict[str, Any]:
    """The JSON summary: what was analysed, with which settings, and what was found."""
    names = store.class_names
    K = protos.k_
    sizes = np.bincount(protos.assign_.ravel(), minlength=K)
    shared_for: dict[int, list[int]] = {k: [] for k in range(K)}
    specialized_for: dict[int, list[int]] = {k: [] for k in range(K)}
    for c, ks in structure.shared_.items():
        for k in ks:
            shared_for[k].append(int(c))
    for c, entries in structure.specialized_.items():
        for k, _step, _group in entries:
            if int(c) not in specialized_for[k]:
                specialized_for[k].append(int(c))
    prototypes = [
        {
            "id": k,
            "size": int(sizes[k]),
            "samples": int(present[:, k].sum()),
            "presence": [round(float(v), 4) for v in structure.presence_rate_[:, k]],
            "beta_sum": [round(float(v), 6) for v in structure.beta_sum_[k]],
            "shared_for": shared_for[k],
            "specialized_for": specialized_for[k],
        }
        for k in range(K)
    ]
    uncertain = []
    for u in structure.uncertain_:
        a, b = u["classes"]
        pair_classes = np.isin(labels, [a, b])
        excluded = int((pair_classes & (share[:, u["prototype"]] >= 0.1)).sum())
        uncertain.append({**u, "class_names": [names[a], names[b]], "curation_excludes": excluded})
    attrs = store.attrs
    final = int(np.flatnonzero(finite)[-1])
    return {
        "i2x_version": attrs["i2x_version"],
        "store": str(store.path),
        "model": attrs["config"]["model"],
        "data": attrs["config"]["data"],
        "split": attrs["config"]["split"],
        "input_size": attrs["config"].get("input_size"),
        "layer": attrs["layer"],
        "grid": attrs["grid"],
        "method": cfg.method,
        "methods_stored": attrs["methods"],
        "target": attrs["config"]["target"],
        "n_samples": int(len(labels)),
        "classes": names,
        "checkpoints": [{"name": c["name"], "step": c["step"], "sha256": c["sha256"]} for c in attrs["checkpoints"]],
        "diverged": [c["name"] for c, ok in zip(attrs["checkpoints"], finite) if not ok],
        "steps": steps,
        "accuracy": [None if np.isnan(a) else round(float(a), 6) for a in acc],
        "loss": [None if np.isnan(v) else round(float(v), 6) for v in loss],
        "final_confusion": conf[final].tolist(),
        "top_confused_pairs": [{"classes": [a, b], "count": c} for a, b, c in structure.top_confused_pairs_],
        "k": K,
        "k_requested": cfg.k,
        "k_scores": {str(k): v for k, v in k_scores.items()},
        "pca_dim": int(protos.pca_.n_components_),
        "pca_explained_variance": round(float(np.nansum(protos.pca_.explained_variance_ratio_)), 4),
        "kmeans": {"seed": cfg.seed, "max_points_per_centroid": cfg.max_points_per_centroid,
                   "fit_vectors": int(protos.n_fit_vectors_), "max_fit_vectors": cfg.max_fit_vectors},
        "prototypes": prototypes,
        "shared": {names[c]: ks for c, ks in structure.shared_.items()},
        "specialized": {names[c]: [list(e) for e in v] for c, v in structure.specialized_.items()},
        "uncertain": uncertain,
        "groups": {"min_cluster_size": groups.min_cluster_size_, "min_samples": groups.min_samples,
                   "fit_samples": len(groups.fit_rows_), "fit_min_cluster_size": groups.fit_min_cluster_size_,
                   "per_step": groups.n_groups_.tolist(),
                   "noise_share": [round(float((row < 0).mean()), 4) for row in groups.labels_]},
        "mapping": {"alpha": mapping.alpha_.tolist(), "r2": [round(float(v), 4) for v in mapping.r2_],
                    "min_group_size": mapping.min_group_size_},
        "cartography": cartography_summary(carto),
        "thresholds": {**structure.thresholds_, "min_cluster_size": groups.min_cluster_size_,
                       "curation_min_share": 0.1},
        "warnings": list(protos.warnings_),
    }
