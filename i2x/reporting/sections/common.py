"""Helpers and limits shared by the report's sections."""

from __future__ import annotations

from typing import Any, Callable


from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, class_ref, img, proto_ref

SectionBuilder = Callable[[ReportInputs], "Section | None"]  # a section, or None to leave it out

THRESHOLD_HELP = {
    "shared_presence": "shared: present in at least this share of the class's samples",
    "specialized_presence": "specialized: present in at least this share of one group's class samples",
    "specialized_max_overall": "specialized: present in fewer than this share of all the class's samples",
    "min_group_samples": "specialized: a group needs at least this many samples of the class",
    "noise_quantile": "uncertain: quantile of |β| taken as the noise floor",
    "noise_floor": "uncertain: |β| (|margin| with two classes) must exceed this (the quantile above)",
    "min_flips": "uncertain: flips between the same two classes",
    "top_confused": "most confused class pairs checked against",
    "significance_level": "uncertain: level of the β intervals a flip must clear at both its ends",
    "null_runs": "uncertain: runs of the null model (confidence changes permuted across samples)",
    "fdr": "uncertain: significant when the Benjamini-Hochberg q is at most this",
    "min_cluster_size": "HDBSCAN minimum group size",
    "curation_min_share": "curation: a sample is excluded if the prototype covers this share of its locations",
}

MAX_UNCERTAIN_CARDS = 8
MAX_CARTOGRAPHY_POINTS = 5000
MAX_HEATMAP_CELLS = 60_000  # β rows (step x prototype x class) embedded for the slider


def _chips(r: ReportInputs, ids: list[int], kind: str) -> Raw:
    """Classes as chips linked to their rows in the class structure section, or a muted 'none'."""
    return Raw("".join(class_ref(i, r.names[i], kind) for i in ids) or '<span class="muted">none</span>')


def _ids(ks: list[int], kind: str) -> Raw:
    """Prototype ids as chips (P3, P17) linked to their cards, or a muted 'none'."""
    return Raw("".join(proto_ref(k, kind) for k in ks) or '<span class="muted">none</span>')


def _patch_imgs(r: ReportInputs, k: int) -> str:
    patches = r.prototype_patches.get(k, [])
    if not patches:
        return '<div class="muted">no example patch</div>'
    return '<div class="patches">' + "".join(
        img(p.uri, f"prototype {k}, sample {p.sample}",
            title=f"data set index {p.sample}, class {r.names[p.label]}, final CAM {p.cam:.3g}")
        for p in patches) + "</div>"


def _groups_fact(s: dict) -> str:
    """How HDBSCAN ran: on every sample, or on a seeded subset with the rest predicted."""
    g, n = s["groups"], s["n_samples"]
    text = f"HDBSCAN on ΔŶ per step, min_cluster_size {g['min_cluster_size']}, min_samples {g['min_samples']}"
    fit = g.get("fit_samples", n)
    if fit < n:
        text += (f"; fitted on a seeded sample of {fit:,} of the {n:,} samples (min_cluster_size "
                 f"{g['fit_min_cluster_size']} there), the others labelled by hdbscan.approximate_predict")
    return text


def mean_pm(stats: dict[str, Any] | None, mean: str = "mean", spread: str = "std") -> str:
    """``mean ± spread`` with 3 decimals (a dash when missing)."""
    if not stats or stats.get(mean) is None:
        return "–"
    s = stats.get(spread)
    return f"{stats[mean]:.3f}" + (f" ± {s:.3f}" if s is not None else "")


def checkpoint_name(c: dict[str, Any]) -> str:
    """A checkpoint as the study JSON names it: name, step and phase where known."""
    step = f", step {c['step']}" if c.get("step") is not None else ""
    phase = f", {c['phase']}" if c.get("phase") else ""
    return f"{c['name']}{step}{phase}"

