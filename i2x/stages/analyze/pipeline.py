"""The analysis stage: read an extracted store, run the estimators of :mod:`i2x.analysis`, write results back.

Order (each reads what the one before wrote): prototypes (PCA + FAISS k-means on the final
checkpoint's features) -> intensity ``P[t, n, k]`` -> confidence groups (HDBSCAN on ΔŶ) ->
ridge mapping ``β[s, k, m]`` -> structure (shared, specialized, uncertain prototypes) ->
significance of the uncertain ones (β's standard errors, a permutation null) -> cartography. Results go to
the store's ``analysis/`` group (:mod:`i2x.stages.analyze.steps`) and ``DIR/summary.json``
(:mod:`i2x.stages.analyze.summary`).

Checkpoints whose weights held NaN/Inf (``finite[t] == 0``) are left out of the steps: a step s
runs between two consecutive *usable* checkpoints, listed in ``summary.json`` under ``steps``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from i2x.analysis import ConfidenceGroups, RidgeMapping, Structure, cartography
from i2x.analysis.groups import default_min_cluster_size
from i2x.analysis.significance import FlipSignificance
from i2x.errors import UserError
from i2x.io.location import RemotePath
from i2x.io.store import Store
from i2x.io.workdir import AnalysisDir, save_summary
from i2x.settings import validate
from i2x.stages.analyze.config import MAX_MIN_SAMPLES, AnalyzeConfig
from i2x.stages.analyze.steps import AtCheckpoints, write_accuracy, write_intensity, write_mapping, write_prototypes
from i2x.stages.analyze.summary import build_summary, curation_excludes, significance_summary


@dataclass
class AnalyzeResult:
    """The summary written to ``summary.json`` and the time each stage took."""

    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    summary_path: Path | RemotePath | None = None


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


def analyze(out_dir: str | Path | AnalysisDir, config: AnalyzeConfig | None = None, progress: bool = True) -> AnalyzeResult:
    """Analyse the store in ``out`` and write ``analysis/`` arrays and ``summary.json``."""
    cfg = config or AnalyzeConfig()
    validate(cfg)
    out = AnalysisDir.at(out_dir)
    with out.locked():
        store = out.store(mode="a")  # refuses a store that is or holds a link out of the directory
        store.require_complete()
        if store.segmentation:
            raise UserError(f"{store.path} holds a segmentation run; the prototype analysis (i2x analyze, run, reliance, "
                            "finetune) is for classifiers; i2x benchmark explains segmentation runs")
        return _analyze(store, out.path, cfg, progress)


def _analyze(store: Store, out: Path | RemotePath, cfg: AnalyzeConfig, progress: bool) -> AnalyzeResult:
    """The analysis as a list of steps, each writing its arrays to the store's ``analysis/`` group."""
    finite, usable = _usable(store)
    labels = store.read("labels")
    groups_est, mapping_est, structure_est = _estimators(cfg, len(labels))  # settings checked before clearing
    steps = _Progress(8, progress)
    protos, k_scores = write_prototypes(store, out, cfg)
    steps.done("prototypes")
    P, present, share = write_intensity(store, cfg, protos, len(finite))
    steps.done("intensity")
    acc, loss, conf = write_accuracy(store, labels, usable, len(finite))
    P_used, probs_used = AtCheckpoints(P, usable), AtCheckpoints(store.array("probs"), usable)
    groups = groups_est.fit(probs_used)
    store.write("analysis/groups", groups.labels_, chunks=(1, len(labels)))
    steps.done("groups")
    mapping = mapping_est.fit(P_used, probs_used, groups.labels_)
    write_mapping(store, mapping, protos.k_, len(store.class_names))
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
    summary = build_summary(store, cfg, protos, structure, mapping, groups, carto, acc, loss, conf, step_pairs, present,
                       labels, share, k_scores, finite)
    top_pairs = {(a, b) for a, b, _ in structure.top_confused_pairs_}
    summary.update(significance_summary(significance, cfg, summary["uncertain"], top_pairs, store.class_names))
    for u in summary["uncertain"]:  # entries added for significance only
        u.setdefault("curation_excludes", curation_excludes(u, labels, share))
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
    most = max(n, DEFAULT_K)  # the default stays allowed on small sets: k-means clamps it to the distinct vectors
    if cfg.k != "auto" and int(cfg.k) > most:  # k=20000 on 200 samples ran for minutes with no progress
        raise UserError(f"--k {cfg.k}: more prototypes than the {n} analysed samples (the mapping fits one "
                        f"coefficient per prototype and class from the samples); choose --k at most {most}, or "
                        "extract more samples (--limit)")
    return groups, mapping, structure


DEFAULT_K = next(f.default for f in fields(AnalyzeConfig) if f.name == "k")


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
