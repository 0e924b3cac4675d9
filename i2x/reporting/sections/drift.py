"""Report section of the semantic-drift study (``drift.json``), None when the study was not run.

Drift over consecutive checkpoints, the per-class distributions between the two compared checkpoints and the
class-stability rankings with the pairs that reverse between methods. :func:`drift_body` is shared with the page of
a segmentation run (:mod:`i2x.reporting.segmentation`), which counts its rows differently.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from i2x.io.workdir import DRIFT
from i2x.reporting.charts import ChartSet
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, esc, table
from i2x.reporting.sections.common import checkpoint_name, mean_pm
from i2x.reporting.drift_text import format_tau

#: Drift metrics offered in the charts' dropdown: key -> label.
DRIFT_LABELS = {
    "iou": "IoU of the top regions",
    "spearman": "Spearman correlation",
    "shift_px": "centroid shift (input px)",
    "shift_frac": "centroid shift (share of the diagonal)",
    "concentration_change": "concentration change",
}


def _consecutive_frame(d: dict[str, Any]) -> pd.DataFrame:
    """Long-form mean drift per consecutive checkpoint pair, method and metric."""
    c, rows = d["consecutive"], []
    for method, series in c["methods"].items():
        for metric in DRIFT_LABELS:
            for step, stats in zip(c["steps"], series[metric]):
                b = step["to"]
                rows.append({"method": method, "metric": DRIFT_LABELS[metric], "mean": stats["mean"],
                             "std": stats["std"], "n": stats["n"], "train_step": b["step"] if b["step"] is not None
                             else b["index"], "between": f"{step['from']['name']} → {b['name']}"})
    return pd.DataFrame(rows)


def consecutive_chart(frame: pd.DataFrame, counted: str = "samples correct at both") -> alt.Chart:
    """Mean drift between consecutive checkpoints over training, one line per method; a dropdown picks the metric.
    ``counted`` names what each mean is over."""
    labels = list(DRIFT_LABELS.values())
    metric = alt.param(name="metric", value=labels[0], bind=alt.binding_select(options=labels, name="metric "))
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("train_step:Q", title="training step (later checkpoint of the pair)"),
        y=alt.Y("mean:Q", title=f"mean over {counted}"),
        color=alt.Color("method:N", title="method"),
        tooltip=["between:N", "method:N", "metric:N", alt.Tooltip("mean:Q", format=".3f"),
                 alt.Tooltip("std:Q", format=".3f"), "n:Q"],
    ).add_params(metric).transform_filter("datum.metric == metric").properties(
        width=520, height=230, title="Drift between consecutive checkpoints")


def _box_frame(d: dict[str, Any]) -> pd.DataFrame:
    """Per method, metric and class the box-plot quantiles [min, q1, median, q3, max] between the two checkpoints."""
    rows = []
    for method, s in d["methods"].items():
        for cls, per_metric in s["quantiles"]["per_class"].items():
            for metric, label in DRIFT_LABELS.items():
                q = per_metric[metric]
                if q is not None:
                    rows.append({"method": method, "class": cls, "metric": label, "n": s["per_class"][cls][metric]["n"],
                                 **dict(zip(("min", "q1", "median", "q3", "max"), q))})
    return pd.DataFrame(rows)


def class_box_chart(frame: pd.DataFrame, names: list[str]) -> alt.LayerChart:
    """Per-class distributions (min-max whisker, quartile box, median tick) side by side per method; metric dropdown."""
    labels = list(DRIFT_LABELS.values())
    metric = alt.param(name="metric", value=labels[0], bind=alt.binding_select(options=labels, name="metric "))
    present = [n for n in names if n in set(frame["class"])]
    base = alt.Chart(frame).transform_filter("datum.metric == metric").encode(
        x=alt.X("class:N", sort=present, title="class"), xOffset=alt.XOffset("method:N"),
        color=alt.Color("method:N", title="method"),
        tooltip=["class:N", "method:N", "n:Q"] + [alt.Tooltip(f"{k}:Q", format=".3f")
                                                  for k in ("min", "q1", "median", "q3", "max")])
    whisker = base.mark_rule().encode(y=alt.Y("min:Q", title="value"), y2="max:Q")
    box = base.mark_bar(size=8).encode(y="q1:Q", y2="q3:Q")
    median = base.mark_tick(color="black", thickness=2, size=10).encode(y="median:Q")
    return alt.layer(whisker, box, median).add_params(metric).properties(
        width=max(300, min(900, 45 * len(present))), height=230, title="Per class, between the two checkpoints")


def _overall_table(d: dict[str, Any]) -> str:
    headers = ["method"] + [f"{label} (mean ± std)" for label in DRIFT_LABELS.values()]
    rows = [[method] + [mean_pm(s["overall"][k]) for k in DRIFT_LABELS] for method, s in d["methods"].items()]
    return table(headers, rows)


def _reversal_table(stability: dict[str, Any]) -> str:
    """The class ranking per method, then per method pair Kendall's tau and the reversed pairs
    (GradCAM++ vs LayerCAM first)."""
    higher = "higher" if stability["higher_is_stable"] else "lower"
    ranking = table(["method", f"classes, most stable first ({stability['metric']}: {higher} is stable)"],
                    [[m, ", ".join(order)] for m, order in stability["ranking"].items()])
    rows = []
    for c in stability["reversals"]:
        first, second = c["methods"]
        pairs = Raw("".join(chip(f"{a} > {b} vs {b} > {a}", "uncertain") for a, b in c["reversed_pairs"])
                    or '<span class="muted">none</span>')
        highlight = chip("the drift paper's comparison", "warn") if {first, second} == {"gradcampp", "layercam"} else ""
        tau = format_tau(c) + (f" (p = {c['p_value']:.3g})" if c["p_value"] is not None else "")
        rows.append([Raw(esc(f"{first} vs {second}") + " " + highlight), len(c["items"]), tau, pairs])
    reversals = table(["methods", "classes ranked", "Kendall's tau",
                       "reversed pairs (first method's order vs the second's)"], rows)
    return ranking + reversals


def drift_facts(d: dict[str, Any], counted: tuple[str, str]) -> list[tuple[str, str]]:
    """The facts table's rows: the checkpoints compared, what counts (``counted``: label and text), the top region
    and the unit of the shift."""
    h, w = d["grid"]
    return [
        ("Compared", f"{checkpoint_name(d['from'])} → {checkpoint_name(d['to'])}"
                     + (f" (phase split at {d['phase_split']})" if d.get("phase_split") is not None else "")),
        counted,
        ("Top region", f"the top {d['top']:.0%} of the {h} x {w} cells"),
        ("Shift unit", f"pixels of the {d['input_size'][0]} x {d['input_size'][1]} input "
                       f"({d['pixels_per_cell'][0]:.3g} px per cell)"),
    ]


def drift_body(d: dict[str, Any], charts: ChartSet, facts: list[tuple[str, str]], counted: str,
               caption: str) -> str:
    """The section's body: ``facts``, the overall table, the consecutive chart (its axis: the mean over ``counted``;
    ``caption`` under it), the per-class boxes and the class-stability rankings by method."""
    parts = [table(["", ""], facts, "facts"), "<h3>Overall</h3>", _overall_table(d)]
    if d.get("consecutive") and d["consecutive"]["steps"]:
        parts.append(charts.add("drift-consecutive", consecutive_chart(_consecutive_frame(d), counted),
                                export="drift_consecutive.png", caption=caption))
    boxes = _box_frame(d)
    if not boxes.empty:
        parts.append(charts.add("drift-classes", class_box_chart(boxes, d["class_names"]), export="drift_classes.png",
                                caption="Whiskers: min to max; boxes: quartiles; tick: median."))
    parts.append("<h3>Which classes are stable, by method</h3>" + _reversal_table(d["stability"]))
    return "".join(parts)


def drift_section(r: ReportInputs) -> Section | None:
    """Semantic-drift study of ``drift.json``; None when the study was not run."""
    d = r.optional_json(DRIFT)
    if d is None:
        return None
    counted = ("Samples", f"{d['n_correct_both']} of {d['n_samples']} classified correctly by both checkpoints")
    body = drift_body(d, r.charts, drift_facts(d, counted), "samples correct at both",
                      "Each point compares a checkpoint with the one before, on the samples both classify correctly.")
    notes = []
    if d["n_correct_both"] == 0:
        notes.append("No sample is classified correctly by both checkpoints, so there is nothing to compare.")
    return Section("drift", "Semantic drift of the maps",
                   "How much the maps moved between two points of training (or two training phases): overlap of the "
                   "top regions, centroid shift, rank correlation and concentration change, per class and per method, "
                   "and whether the methods agree on which classes are stable.", body, notes)

