"""``summary.json`` of the analysis: what was analysed, with which settings, and what was found, with the
significance evidence of each uncertain prototype."""

from __future__ import annotations

from typing import Any

import numpy as np

from i2x.analysis import ConfidenceGroups, Prototypes, RidgeMapping, Structure, cartography_summary
from i2x.analysis.intensity import MIN_SHARE
from i2x.analysis.significance import FlipSignificance
from i2x.io.store import Store
from i2x.stages.analyze.config import AnalyzeConfig
from i2x.stages.analyze.uncertainty import uncertainty_counts, uncertainty_sentence


def build_summary(store: Store, cfg: AnalyzeConfig, protos: Prototypes, structure: Structure, mapping: RidgeMapping,
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
        uncertain.append({**u, "class_names": [names[a], names[b]],
                          "curation_excludes": curation_excludes(u, labels, share)})
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
                       "curation_min_share": MIN_SHARE},
        "warnings": list(protos.warnings_),
    }


def _number(x: float, digits: int = 6) -> float | None:
    """A float for strict JSON: rounded, None where it is not finite (a z over a zero standard error)."""
    return round(float(x), digits) if np.isfinite(x) else None


def curation_excludes(entry: dict[str, Any], labels: np.ndarray, share: np.ndarray) -> int:
    """Samples a curation on this uncertain entry would leave out: of its two classes, covered by its prototype for
    at least :data:`~i2x.analysis.intensity.MIN_SHARE` of their locations."""
    return int((np.isin(labels, entry["classes"]) & (share[:, entry["prototype"]] >= MIN_SHARE)).sum())


def significance_summary(sig: FlipSignificance, cfg: AnalyzeConfig, uncertain: list[dict[str, Any]],
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
    c = {
        "view": sig.view_,
        "level": cfg.significance_level,
        "z": round(sig.z_, 4),
        "fdr": cfg.fdr,
        "null_runs": cfg.null_runs,
        "expected_flagged": {"mean": _number(flag_mean, 3), "sd": _number(flag_sd, 3)},
        "expected_significant": {"mean": _number(sig_mean, 3), "sd": _number(sig_sd, 3)},
        "null_flagged": sig.null_flagged_.tolist(),
        "null_significant": sig.null_significant_.tolist(),
    }
    counts = uncertainty_counts(uncertain, c, int(sig.beta_.shape[1]))  # the counts every place shows
    c.update(flagged=counts.flagged, significant=counts.significant, significant_flagged=counts.significant_flagged,
             significant_below_floor=counts.significant_below_floor, sentence=uncertainty_sentence(counts))
    return {"uncertainty": c}
