"""The analysis stage: read an extracted store, run the estimators of :mod:`i2x.analysis`, write results back.

Order (each reads what the one before wrote): prototypes (PCA + FAISS k-means on the final
checkpoint's features) -> intensity ``P[t, n, k]`` -> confidence groups (HDBSCAN on ΔŶ) ->
ridge mapping ``β[s, k, m]`` -> structure (shared, specialized, uncertain prototypes) ->
significance of the uncertain ones (β's standard errors, a permutation null) -> cartography. Results go to the store's ``analysis/`` group and ``DIR/summary.json``.

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
from i2x.analysis.significance import FlipSignificance
from i2x.errors import UserError
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import SUMMARY, save_summary
from i2x.settings import device_option, option, validate, whole, whole_list, whole_or_auto

def _zero_is_all(text: str) -> int | None:
    """``--max-group-samples``: 0 means no sample limit."""
    return whole(text) or None


#: Default ceiling of HDBSCAN's min_samples (see :func:`_min_samples`).
MAX_MIN_SAMPLES = 50


def _check_k(k: int | str) -> None:
    if k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError("give a positive integer or 'auto'")


@dataclass
class AnalyzeConfig:
    """Settings of the analysis; every threshold is printed in the report."""

    k: int | str = option(32, "number of prototypes, or 'auto' to pick from --k-candidates by silhouette score on "
                          "a subsample", parse=whole_or_auto, check=_check_k)
    pca_dim: int = option(32, "PCA components before k-means (or d if smaller)", low=1)
    method: str = option("gradcam", "CAM method whose maps give prototype intensity")
    seed: int = option(0, "seed of the k-means and the vector subsample")
    max_fit_vectors: int = option(200_000, "k-means and PCA fit on a seeded sample of at most N location vectors",
                                  low=1, metavar="N")
    max_points_per_centroid: int = option(256, "FAISS k-means subsamples to N points per centroid (256 is FAISS's "
                                          "own default)", low=1, metavar="N")
    k_candidates: tuple[int, ...] = option((8, 16, 32, 64), "candidates for --k auto", parse=whole_list, low=2,
                                           metavar="K1,K2")
    min_cluster_size: int | None = option(None, "HDBSCAN min_cluster_size (default max(10, n/100))", low=2,
                                          metavar="N")
    min_samples: int | None = option(None, "HDBSCAN min_samples (default min_cluster_size, at most 50)", low=1,
                                     cli=False)
    max_group_samples: int | None = option(
        20_000, "HDBSCAN fits each step on a seeded sample of at most N samples and labels the others with "
        "hdbscan.approximate_predict; its cost grows faster than n (0: fit on all)", parse=_zero_is_all, low=1,
        metavar="N")
    alpha: float | None = option(None, "ridge penalty (default: RidgeCV over 1e-3..1e3)", low=0, low_open=True)
    shared_presence: float = option(0.9, "shared: present in at least this share of a class's samples", low=0,
                                    high=1)
    specialized_presence: float = option(0.9, "specialized: present in at least this share of one group's class "
                                         "samples", low=0, high=1)
    specialized_max_overall: float = option(0.5, "specialized: present in fewer than this share of all the class's "
                                            "samples", low=0, high=1)
    noise_quantile: float = option(0.75, "uncertain: |beta| must exceed this quantile of all |beta|", low=0, high=1)
    min_flips: int = option(2, "uncertain: flips between the same two classes", low=1)
    top_confused: int = option(3, "how many most-confused class pairs count as 'top confused'", low=0)
    significance_level: float = option(
        0.95, "uncertain: a flip is significant when, at both its ends, this level's interval of the leading class's "
        "β minus the other class's β lies above 0", low=0, high=0.999, low_open=True)
    null_runs: int = option(20, "uncertain: runs of the null model (confidence changes permuted across samples) that "
                                "give the number of uncertain prototypes expected by chance and the p values; 0: none",
                            low=0, high=10_000)
    fdr: float = option(0.1, "uncertain: a flagged prototype is significant when its Benjamini-Hochberg q is at most "
                             "this (and it has --min-flips significant flips)", low=0, high=1, low_open=True)
    jobs: int | None = option(None, "processes that run HDBSCAN's steps in parallel (default: every core from 10000 "
                              "samples on)", low=1, metavar="N")
    device: str = device_option("cpu keeps FAISS on the CPU; auto/cuda use a FAISS GPU if seen")


@dataclass
class AnalyzeResult:
    """The summary written to ``summary.json`` and the time each stage took."""

    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    summary_path: Path | None = None


class _Progress:
    """Times the named steps of the analysis and advances one progress bar per step."""

    def __init__(self, steps: int, progress: bool) -> None:
        self.timings: dict[str, float] = {}
        self.bar = tqdm(total=steps, desc="analysis", disable=not progress)
        self.start = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.start, 3)
        self.start = now
        self.bar.update()


def analyze(out: str | Path, config: AnalyzeConfig | None = None, progress: bool = True) -> AnalyzeResult:
    """Analyse the store in ``out`` and write ``analysis/`` arrays and ``summary.json``."""
    cfg = config or AnalyzeConfig()
    validate(cfg)
    with locked(out):
        store = Store.open(out, mode="a")
        store.require_complete()
        if store.attrs.get("task") == "segmentation":
            raise UserError(f"{store.path} holds a segmentation run; the prototype analysis (i2x analyze, run, reliance, "
                            "finetune) is for classifiers; i2x benchmark explains segmentation runs")
        return _analyze(store, Path(out), cfg, progress)


def _analyze(store: Store, out: Path, cfg: AnalyzeConfig, progress: bool) -> AnalyzeResult:
    """The analysis as a list of steps, each writing its arrays to the store's ``analysis/`` group."""
    finite, usable = _usable(store)
    labels = store.read("labels")
    groups_est, mapping_est, structure_est = _estimators(cfg, len(labels))  # settings checked before clearing
    steps = _Progress(8, progress)
    protos, k_scores = _prototypes(store, out, cfg)
    steps.done("prototypes")
    P, present, share = _intensity(store, cfg, protos, len(finite))
    steps.done("intensity")
    acc, loss, conf = _accuracy(store, labels, usable, len(finite))
    P_used, probs_used = _AtCheckpoints(P, usable), _AtCheckpoints(store.array("probs"), usable)
    groups = groups_est.fit(probs_used)
    store.write("analysis/groups", groups.labels_, chunks=(1, len(labels)))
    steps.done("groups")
    mapping = mapping_est.fit(P_used, probs_used, groups.labels_)
    _write_mapping(store, mapping, protos.k_, len(store.class_names))
    steps.done("mapping")
    structure = structure_est.fit(mapping.beta_, present, labels, groups.labels_, conf[usable[-1]])
    steps.done("structure")
    significance = FlipSignificance(
        level=cfg.significance_level, null_runs=cfg.null_runs, fdr=cfg.fdr, noise_quantile=cfg.noise_quantile,
        min_flips=cfg.min_flips, random_state=cfg.seed,
    ).fit(P_used, probs_used, mapping.alpha_, mapping.beta_)
    store.write("analysis/beta_se", significance.se_.astype(np.float32))
    steps.done("significance")
    carto = cartography(probs_used, labels)
    for key, value in carto.items():
        store.write(f"analysis/{key}", value)
    steps.done("cartography")
    steps.bar.close()

    step_pairs = [[int(a), int(b)] for a, b in zip(usable[:-1], usable[1:])]
    summary = _summary(store, cfg, protos, structure, mapping, groups, carto, acc, loss, conf, step_pairs, present,
                       labels, share, k_scores, finite)
    top_pairs = {(a, b) for a, b, _ in structure.top_confused_pairs_}
    summary.update(_significance_summary(significance, cfg, summary["uncertain"], top_pairs, store.class_names))
    for u in summary["uncertain"]:
        covered = np.isin(labels, u["classes"]) & (share[:, u["prototype"]] >= 0.1)
        u.setdefault("curation_excludes", int(covered.sum()))
    summary["timings"] = steps.timings
    store.set_analysis_attrs({"config": asdict(cfg), "k": protos.k_, "method": cfg.method, "steps": step_pairs})
    path = save_summary(out, summary)  # written last and atomically: readers never see half of it
    return AnalyzeResult(summary, steps.timings, path)


def _usable(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """Which checkpoints have finite weights, and their indices; the final one must be among them."""
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
    return finite, usable


def _estimators(cfg: AnalyzeConfig, n: int) -> tuple[ConfidenceGroups, RidgeMapping, Structure]:
    """The estimators of the later steps, their settings checked now (scikit-learn style, fit would check them
    only after the previous analysis is cleared)."""
    groups = ConfidenceGroups(min_cluster_size=cfg.min_cluster_size, min_samples=_min_samples(cfg, n),
                              max_fit_samples=cfg.max_group_samples, n_jobs=cfg.jobs, random_state=cfg.seed)
    mapping = RidgeMapping(alpha=cfg.alpha)
    structure = Structure(
        shared_presence=cfg.shared_presence, specialized_presence=cfg.specialized_presence,
        specialized_max_overall=cfg.specialized_max_overall, noise_quantile=cfg.noise_quantile,
        min_flips=cfg.min_flips, top_confused=cfg.top_confused,
    )
    mapping._check_settings()
    structure._check_settings()
    return groups, mapping, structure


def _prototypes(store: Store, out: Path, cfg: AnalyzeConfig) -> tuple[Prototypes, dict[int, float]]:
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


def _intensity(store: Store, cfg: AnalyzeConfig, protos: Prototypes,
               n_ckpt: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Stream P[t, n, k] into the store; returns it (lazy), the presence mask and each prototype's share."""
    n, K = len(store.read("labels")), protos.k_
    P, _ = intensity(store.cam(cfg.method), protos.assign_, K, out=(
        store.create("analysis/intensity", (n_ckpt, n, K), "float32", (1, store.chunk_n, K)),
        store.create("analysis/present", (n, K), "bool", (store.chunk_n, K))))
    share = presence_share(protos.assign_, K)
    store.write("analysis/share", share)
    return P, store.read("analysis/present"), share


def _accuracy(store: Store, labels: np.ndarray, usable: np.ndarray,
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


def _write_mapping(store: Store, mapping: RidgeMapping, k: int, m: int) -> None:
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
        "thresholds": {**structure.thresholds_, "significance_level": cfg.significance_level,
                       "null_runs": cfg.null_runs, "fdr": cfg.fdr, "min_cluster_size": groups.min_cluster_size_,
                       "curation_min_share": 0.1},
        "warnings": list(protos.warnings_),
    }


def _number(x: float, digits: int = 6) -> float | None:
    """A float for strict JSON: rounded, None where it is not finite (a z over a zero standard error)."""
    return round(float(x), digits) if np.isfinite(x) else None


def _significance_summary(sig: FlipSignificance, cfg: AnalyzeConfig, uncertain: list[dict[str, Any]],
                          top_pairs: set[tuple[int, int]], names: list[str]) -> dict[str, Any]:
    """Evidence into each uncertain entry (in place), entries for significant prototypes below the noise floor,
    and the flagged-versus-expected counts, for summary.json."""
    (flag_mean, flag_sd), (sig_mean, sig_sd) = sig.expected_["flagged"], sig.expected_["significant"]

    def evidence(k: int) -> dict[str, Any]:
        e = sig.evidence_[k]
        return {
            "significant": e["significant"], "significant_flips": e["significant_flips"],
            "significant_classes": e["classes"], "statistic": _number(e["statistic"], 4),
            "p": _number(e["p"]), "q": _number(e["q"]),
            "flip_evidence": [{**{key: f[key] for key in ("from_step", "to_step", "from_class", "to_class")},
                               **{end: {key: _number(v) for key, v in f[end].items()} for end in ("before", "after")}}
                              for f in e["flip_evidence"]],
            "null_expected": {"flagged": _number(flag_mean, 3), "significant": _number(sig_mean, 3)},
        }

    for u in uncertain:
        u.update(evidence(u["prototype"]), below_noise_floor=False)
    listed = {u["prototype"] for u in uncertain}
    for k, e in sig.evidence_.items():
        if e["significant"] and k not in listed:  # well determined, yet below the quantile floor
            a, b = e["classes"]
            uncertain.append({"prototype": k, "classes": [a, b], "flips": e["significant_flips"],
                              "score": e["score"], "flip_steps": e["flip_steps"],
                              "in_top_confused": (a, b) in top_pairs, **evidence(k), "below_noise_floor": True,
                              "class_names": [names[a], names[b]]})
    return {"uncertainty": {
        "view": sig.view_,
        "level": cfg.significance_level,
        "z": round(sig.z_, 4),
        "fdr": cfg.fdr,
        "null_runs": cfg.null_runs,
        "flagged": len(sig.flagged_),
        "significant": sum(e["significant"] for e in sig.evidence_.values()),
        "expected_flagged": {"mean": _number(flag_mean, 3), "sd": _number(flag_sd, 3)},
        "expected_significant": {"mean": _number(sig_mean, 3), "sd": _number(sig_sd, 3)},
        "null_flagged": sig.null_flagged_.tolist(),
        "null_significant": sig.null_significant_.tolist(),
    }}
