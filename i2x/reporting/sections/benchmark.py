"""Report section of the attribution benchmark (``benchmark.json``), skipped when it was not run.

A method x metric table at the last benchmarked checkpoint (mean ± std over samples), the
faithfulness-versus-robustness scatter and every metric over the checkpoints.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from i2x.io.workdir import BENCHMARK
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, esc, table
from i2x.reporting.sections.common import mean_pm

#: Metric key -> (label, which way is better) of every benchmark, classification and region alike.
METRIC_LABELS = {
    "road_morf_pixel": ("ROAD MoRF, pixels (lower better)", "lower"),
    "road_lerf_pixel": ("ROAD LeRF, pixels (higher better)", "higher"),
    "road_combined_pixel": ("ROAD combined, pixels", "higher"),
    "road_combined_region": ("ROAD combined, cells", "higher"),
    "road_drop_0.2_pixel": ("drop at 20% removed", "higher"),
    "road_drop_0.5_pixel": ("drop at 50% removed", "higher"),
    "leakage": ("leakage outside ROI", "lower"),
    "leakage_vs_uniform": ("leakage / uniform map's", "lower"),
    "relevance_mass": ("relevance mass in the ROI", "higher"),
    "relevance_rank": ("relevance rank accuracy", "higher"),
    "pointing_game": ("pointing game", "higher"),
    "energy_pointing_game": ("energy pointing game", "higher"),
    "deletion_morf": ("deletion in the ROI, MoRF", "lower"),
    "robust_spearman": ("robustness (mean Spearman)", "higher"),
    "flip_iou": ("flip top-k IoU", "higher"),
    "max_sensitivity": ("max-sensitivity (captum)", "lower"),
    "similarity_to_first": ("Spearman to first checkpoint", "—"),
    "randomised_similarity": ("Spearman after full randomisation (lower passes)", "lower"),
    "runtime_ms": ("ms per image", "lower"),
}
#: The classification benchmark's table columns, in order.
METRICS = {k: v for k, v in METRIC_LABELS.items() if k not in ("leakage_vs_uniform", "relevance_mass", "deletion_morf")}


def _long(b: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for c in b["checkpoints"]:
        for method, scores in b["results"][c["name"]].items():
            for key, (label, _) in METRICS.items():
                s = scores.get(key)
                if isinstance(s, dict) and s.get("mean") is not None:
                    rows.append({"checkpoint": c["name"], "step": c["step"] if c["step"] is not None else c["index"],
                                 "method": method, "metric": label, "mean": s["mean"]})
    return pd.DataFrame(rows)


def _scatter(b: dict[str, Any]) -> alt.Chart:
    rows = [{"method": m, "checkpoint": c["name"], "faithfulness": s["road_combined_pixel"]["mean"],
             "robustness": s["robust_spearman"]["mean"]}
            for c in b["checkpoints"] for m, s in b["results"][c["name"]].items()
            if s["road_combined_pixel"]["mean"] is not None and s["robust_spearman"]["mean"] is not None]
    return alt.Chart(pd.DataFrame(rows)).mark_point(filled=True, size=80).encode(
        x=alt.X("robustness:Q", title="robustness: mean Spearman of map(x) and map(T x)"),
        y=alt.Y("faithfulness:Q", title="faithfulness: ROAD combined (pixels)"),
        color=alt.Color("method:N"), shape=alt.Shape("checkpoint:N"),
        tooltip=["method:N", "checkpoint:N", alt.Tooltip("faithfulness:Q", format=".3f"),
                 alt.Tooltip("robustness:Q", format=".3f")],
    ).properties(width=420, height=260, title="Faithfulness against robustness")


def _over_training(frame: pd.DataFrame) -> alt.Chart:
    labels = [label for label, _ in METRICS.values() if label in set(frame["metric"])]
    metric = alt.param(name="bmetric", value=labels[0], bind=alt.binding_select(options=labels, name="metric "))
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step"), y=alt.Y("mean:Q", title="mean over samples"),
        color=alt.Color("method:N"), tooltip=["checkpoint:N", "method:N", alt.Tooltip("mean:Q", format=".3f")],
    ).add_params(metric).transform_filter("datum.metric == bmetric").properties(
        width=520, height=230, title="Each metric over the checkpoints")


def benchmark_section(r: ReportInputs) -> Section | None:
    """The attribution benchmark of ``benchmark.json``; None when it was not run."""
    b = r.optional_json(BENCHMARK)
    if b is None:
        return None
    last = b["checkpoints"][-1]["name"]
    final = b["results"][last]
    keys = [k for k in METRICS if any(isinstance(s.get(k), dict) for s in final.values())]
    body = table(["method"] + [METRICS[k][0] for k in keys],
                 [[m] + [mean_pm(s.get(k)) for k in keys] for m, s in final.items()])
    facts = table(["", ""], [
        ("Checkpoints", ", ".join(c["name"] for c in b["checkpoints"])),
        ("Samples", f"{b['n_samples']} for maps, runtime, leakage and checkpoint similarity; {b['n_detail']} of them "
                    "for ROAD, robustness and randomisation"),
        ("Faithfulness", "ROAD noisy linear imputation (neighbours 1/6 orthogonal, 1/12 diagonal, noise "
                         f"{b['settings']['noise']}), removing {', '.join(f'{f:.0%}' for f in b['removed_fractions'])} "
                         "of the map; combined = (LeRF - MoRF) / 2 (pytorch-grad-cam's ROADCombined); random "
                         f"baseline MoRF {mean_pm(b['random'][last]['pixel']['morf'], spread='std_draws')} (± over draws)"),
        ("Perturbations", "; ".join(f"{k}: {v}" for k, v in b["transforms"].items())),
        ("DEA", "O + a (G - O) / 2 with G, O the peak-normalised GradCAM and occlusion maps and a = 1 - |G - O|"),
        ("Run time", f"{b['seconds']:.1f} s ({b['ms_per_image']:.1f} ms per image and checkpoint)"
                     + (f", {b['cpu_seconds']:.1f} s of CPU time" if "cpu_seconds" in b else "")),
    ], "facts")
    parts = [facts, f"<h3>At {esc(last)}</h3>", body]
    parts.append(r.charts.add("benchmark-tradeoff", _scatter(b), export="benchmark_tradeoff.png",
                              caption="One point per method and checkpoint."))
    frame = _long(b)
    if not frame.empty:
        parts.append(r.charts.add("benchmark-training", _over_training(frame), export="benchmark_training.png",
                                  caption="Pick a metric in the dropdown."))
    notes = list(b.get("notes", []))
    if not b.get("roi"):
        notes.append("No region of interest was given (--roi), so leakage was not measured.")
    return Section("benchmark", "Attribution benchmark over training",
                   "Which map is faithful (removing what it highlights lowers the confidence), robust (it barely "
                   "moves under small input changes), sane (it breaks when the model is randomised) and cheap, "
                   "and how that changes during training.", "".join(parts), notes)
