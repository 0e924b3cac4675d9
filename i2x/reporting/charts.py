"""The report's charts as altair specs, and the collector that places them in the page and exports PNGs.

Each builder takes plain numbers (no store access) and returns an ``alt.Chart``. Colours that
carry meaning are fixed across charts: β is diverging blue (toward other classes) to orange
(toward the class), with one symmetric domain over all steps so the slider compares like with like.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import altair as alt
import numpy as np
import pandas as pd

from i2x.reporting.page import esc, vega_version

FONT = "-apple-system, Segoe UI, Roboto, Helvetica Neue, Arial, sans-serif"
BETA_SCHEME = "blueorange"  # diverging and colour-blind safe
SEQUENTIAL_SCHEME = "viridis"  # colour-blind safe and readable in grey (never rainbow or red-green)
PNG_DIGESTS = ".digests.json"  # beside the exported PNGs: each one's spec digest, to skip redrawing it


class ChartSet:
    """Collects the page's charts: ``add`` returns the container ``<div>`` and remembers the spec (and PNG name)."""

    def __init__(self) -> None:
        self.specs: dict[str, dict[str, Any]] = {}
        self.exports: dict[str, str] = {}

    def add(self, name: str, chart: alt.TopLevelMixin | dict[str, Any], export: str | None = None,
            caption: str = "") -> str:
        """Register ``chart`` (or a ready spec) as element ``chart-<name>``; ``export`` names its PNG in ``report/``."""
        chart_id = f"chart-{name}"
        if chart_id in self.specs:
            raise ValueError(f"chart {name} added twice")
        self.specs[chart_id] = chart if isinstance(chart, dict) else to_spec(chart)
        if export:
            self.exports[chart_id] = export
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        return f'<figure><div class="chart" id="{esc(chart_id)}"></div>{cap}</figure>'

    def export_pngs(self, folder: Path, scale: float = 2.0, previous: Path | None = None) -> list[Path]:
        """Write the exported charts as PNG files (vl-convert, no browser) and return their paths. A chart whose spec
        is unchanged since the export in ``previous`` (its digest in that folder's ``PNG_DIGESTS``) is copied, not
        rendered again: rebuilding the report after one more study redraws only what changed."""
        import vl_convert as vlc

        folder.mkdir(parents=True, exist_ok=True)
        before = _digests(previous)
        digests, paths = {}, []
        for chart_id, name in self.exports.items():
            path = folder / name
            digests[name] = hashlib.sha256(json.dumps([self.specs[chart_id], vega_version(), scale],
                                                      sort_keys=True, default=str).encode()).hexdigest()
            if previous is not None and before.get(name) == digests[name] and (previous / name).is_file():
                shutil.copyfile(previous / name, path)
            else:
                path.write_bytes(vlc.vegalite_to_png(self.specs[chart_id], vl_version=vega_version(), scale=scale))
            paths.append(path)
        (folder / PNG_DIGESTS).write_text(json.dumps(digests, indent=1))
        return paths


def _digests(folder: Path | None) -> dict[str, str]:
    """The PNG digests recorded in ``folder`` (empty when there are none or they cannot be read)."""
    try:
        found = json.loads((folder / PNG_DIGESTS).read_text()) if folder is not None else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def to_spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The Vega-Lite dict of a chart with the page's fonts (data inline, no row limit)."""
    chart = chart.configure(font=FONT).configure_view(stroke=None).configure_axis(labelFontSize=11, titleFontSize=12)
    with alt.data_transformers.disable_max_rows():
        return chart.to_dict(validate=False)  # the schema check costs a third of a report; the tests validate


def accuracy_loss(steps: Sequence[int], names: Sequence[str], accuracy: Sequence[float | None],
                  loss: Sequence[float | None]) -> alt.HConcatChart:
    """Accuracy and loss of the analysed split per checkpoint, side by side (diverged checkpoints left out)."""
    df = pd.DataFrame({"step": list(steps), "checkpoint": list(names), "accuracy": list(accuracy), "loss": list(loss)})
    df = df.dropna(subset=["accuracy"])
    base = alt.Chart(df).encode(x=alt.X("step:Q", title="training step"),
                                tooltip=["checkpoint:N", "step:Q", alt.Tooltip("accuracy:Q", format=".4f"),
                                         alt.Tooltip("loss:Q", format=".4f")])
    acc = base.mark_line(point=True, color="#2e6fd8").encode(
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]))).properties(
        width=330, height=200, title="Accuracy")
    lss = base.mark_line(point=True, color="#c0392b").encode(
        y=alt.Y("loss:Q", title="cross-entropy loss")).properties(width=330, height=200, title="Loss")
    return alt.hconcat(acc, lss)


def accuracy_of_runs(frame: pd.DataFrame, runs: Sequence[str]) -> alt.Chart:
    """Accuracy per checkpoint of several runs (columns run, step, checkpoint, accuracy), one line each."""
    return alt.Chart(frame.dropna(subset=["accuracy"])).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step"),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("run:N", title="run", sort=list(runs), scale=alt.Scale(range=["#2e6fd8", "#e69f00"])),
        tooltip=["run:N", "checkpoint:N", "step:Q", alt.Tooltip("accuracy:Q", format=".4f")],
    ).properties(width=520, height=200, title="Accuracy along training")


#: a confusion chart of at most this many classes labels its zero cells too ("no sample" is a finding there)
LABEL_ZEROS_UP_TO = 12


def confusion_heatmap(matrix: np.ndarray, names: Sequence[str], title: str) -> alt.LayerChart:
    """Counts of true (rows) by predicted (columns) class, log-coloured so small confusions stay visible; every cell
    labelled with its count (only the non-zero ones above :data:`LABEL_ZEROS_UP_TO` classes)."""
    m = len(names)
    true, pred = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    df = pd.DataFrame({"true": np.asarray(names, dtype=object)[true.ravel()],
                       "predicted": np.asarray(names, dtype=object)[pred.ravel()],
                       "count": np.asarray(matrix).ravel().astype(int)})
    df["shade"] = np.log1p(df["count"])
    size = max(220, min(520, 26 * m))
    base = alt.Chart(df).encode(
        x=alt.X("predicted:N", sort=list(names), title="predicted class"),
        y=alt.Y("true:N", sort=list(names), title="true class"),
        tooltip=["true:N", "predicted:N", "count:Q"])
    top = int(df["count"].max()) if len(df) else 0
    ticks = sorted({0, *(v for v in (1, 10, 100, 1000, 10_000) if v < top), top})
    cells = base.mark_rect().encode(color=alt.Color(
        "shade:Q", scale=alt.Scale(range=["#f7f9fc", "#08519c"]),
        legend=alt.Legend(title="samples (log scale)", values=[float(np.log1p(v)) for v in ticks],
                          labelExpr="format(round(exp(datum.value) - 1), ',')", gradientLength=140)))
    text = base.mark_text(fontSize=10).encode(
        text=alt.condition("datum.count > 0" if m > LABEL_ZEROS_UP_TO else "true", "count:Q", alt.value("")),
        color=alt.condition(f"datum.shade > {0.6 * float(df['shade'].max() or 1):.6f}", alt.value("white"),
                            alt.value("#1d2430")))
    return alt.layer(cells, text).properties(width=size, height=size, title=title)


def beta_limit(beta: np.ndarray) -> tuple[float, bool]:
    """The colour domain's half-width for β (the 95th percentile of |β|, so a few extreme cells do not wash the rest
    out) and whether it caps any value (then the legend and caption say so)."""
    top = float(np.max(np.abs(beta))) if beta.size else 0.0
    limit = float(np.quantile(np.abs(beta), 0.95)) if beta.size else 0.0
    limit = limit or top or 1.0
    return limit, top > limit


def strongest_step(beta: np.ndarray) -> int:
    """The step whose largest |β| is the largest: where the slider opens (never an all-zero step unless all are)."""
    return int(np.argmax(np.abs(beta).reshape(beta.shape[0], -1).max(axis=1))) if beta.size else 0


def beta_slider(beta: np.ndarray, names: Sequence[str], step_labels: Sequence[str], initial: int) -> alt.VConcatChart:
    """β[s, k, m] as a prototype x class heatmap under a line naming the step; a range slider picks the step s.
    The colour scale is symmetric and shared by the steps; its legend title says when it caps values."""
    s, k, m = beta.shape
    ss, kk, mm = np.meshgrid(np.arange(s), np.arange(k), np.arange(m), indexing="ij")
    df = pd.DataFrame({"s": ss.ravel(), "prototype": kk.ravel(), "class": np.asarray(names, dtype=object)[mm.ravel()],
                       "beta": beta.ravel().astype(float).round(5)})
    steps = pd.DataFrame({"s": np.arange(s), "between": list(step_labels)})
    limit, capped = beta_limit(beta)
    legend = f"β (capped at ±{limit:.3g})" if capped else "β"
    step = alt.param(name="step", value=int(initial),
                     bind=alt.binding_range(min=0, max=max(s - 1, 0), step=1, name="step "))
    width = max(200, min(520, 30 * m))
    heat = alt.Chart(df).mark_rect().transform_filter("datum.s == step").transform_lookup(
        lookup="s", from_=alt.LookupData(steps, "s", ["between"])).encode(
        x=alt.X("class:N", sort=list(names), title="class"),
        y=alt.Y("prototype:O", title="prototype"),
        color=alt.Color("beta:Q", title=legend, scale=alt.Scale(scheme=BETA_SCHEME, domain=[-limit, limit], clamp=True)),
        tooltip=[alt.Tooltip("between:N", title="checkpoints"), "prototype:O", "class:N",
                 alt.Tooltip("beta:Q", format=".4f", title="β")],
    ).properties(width=width, height=max(200, min(900, 13 * k)))
    label = alt.Chart(steps).mark_text(align="left", x=0, y=8, fontSize=13, fontWeight="bold").encode(
        text=alt.Text("between:N")).transform_filter("datum.s == step").properties(width=width, height=16)
    return alt.vconcat(label, heat, spacing=4).add_params(step).properties(
        title="Ridge map β: prototype-intensity change → confidence change, per step")


def class_betas(frame: pd.DataFrame, names: Sequence[str]) -> alt.Chart:
    """β toward the selected class over training for its shared / specialized prototypes (class dropdown)."""
    choice = alt.param(name="cls", value=names[0],
                       bind=alt.binding_select(options=list(names), name="class "))
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("train_step:Q", title="training step (end of the step)"),
        y=alt.Y("beta:Q", title="β toward the class"),
        color=alt.Color("prototype:N", title="prototype"),
        strokeDash=alt.StrokeDash("role:N", title="role", scale=alt.Scale(domain=["shared", "specialized"]),
                                  legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2, symbolSize=300)),
        tooltip=["class:N", "prototype:N", "role:N", alt.Tooltip("between:N", title="checkpoints"),
                 alt.Tooltip("beta:Q", format=".4f", title="β")],
    ).add_params(choice).transform_filter("datum['class'] == cls").properties(
        width=560, height=260, title="β of the class's prototypes over training")


def group_sizes(frame: pd.DataFrame, names: Sequence[str]) -> alt.Chart:
    """Stacked sizes of the HDBSCAN confidence-change groups per step, coloured by each group's main class."""
    palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
               "#bab0ac", "#1f77b4", "#aec7e8", "#ff7f0e", "#2ca02c", "#98df8a", "#d62728", "#9467bd", "#8c564b",
               "#e377c2", "#17becf"]
    domain = [*names, "mixed", "noise"]
    colours = [palette[i % len(palette)] for i in range(len(names))] + ["#6b7280", "#dde1e7"]
    return alt.Chart(frame).mark_bar(stroke="white", strokeWidth=0.7).encode(
        x=alt.X("s:O", title="step (checkpoint pair)"),
        y=alt.Y("size:Q", title="samples"),
        color=alt.Color("colour:N", title="main class", scale=alt.Scale(domain=domain, range=colours)),
        order=alt.Order("rank:Q"),
        tooltip=[alt.Tooltip("between:N", title="checkpoints"), "group:N", "size:Q",
                 alt.Tooltip("main_class:N", title="main class"),
                 alt.Tooltip("main_share:Q", format=".0%", title="share of main class"),
                 alt.Tooltip("r2:Q", format=".3f", title="ridge R² of the step")],
    ).properties(width=300, height=300, title="Confidence-change groups per step (HDBSCAN)")


def cartography(frame: pd.DataFrame, names: Sequence[str]) -> alt.Chart:
    """Dataset cartography: confidence vs variability per sample, coloured by correctness; a dropdown shows one
    class or all ("" stands for all, so a class may be called anything)."""
    pick = alt.param(name="carto_class", value="", bind=alt.binding_select(
        options=["", *names], labels=["all classes", *names], name="class "))
    return alt.Chart(frame).mark_circle(size=22, opacity=0.75).add_params(pick).transform_filter(
        "carto_class == '' || datum['class'] == carto_class").encode(
        x=alt.X("variability:Q", title="variability (std of p(true class))"),
        y=alt.Y("confidence:Q", title="confidence (mean p(true class))", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("correctness:Q", title="correctness", scale=alt.Scale(scheme=SEQUENTIAL_SCHEME, domain=[0, 1])),
        tooltip=[alt.Tooltip("row:Q", title="store row"), alt.Tooltip("sample:Q", title="data set index"),
                 "class:N", alt.Tooltip("confidence:Q", format=".3f"), alt.Tooltip("variability:Q", format=".3f"),
                 alt.Tooltip("correctness:Q", format=".2f"), "forgetting:Q"],
    ).properties(width=420, height=320, title="Dataset cartography")


def uncertain_trajectory(beta_frame: pd.DataFrame, confusion_frame: pd.DataFrame, floor: float,
                         flips: pd.DataFrame, first: int) -> alt.HConcatChart:
    """β toward the two classes over training (flips marked; bands: their intervals where the frame has ``low`` and
    ``high``) beside the pair's confusion count per checkpoint.

    The frames hold every uncertain prototype (column ``prototype``); the top-level param ``proto``
    (initially ``first``) picks one, so one spec serves every card (see :func:`with_param`).
    """
    proto = alt.param(name="proto", value=first)
    pick = "datum.prototype == proto"
    lines = alt.Chart(beta_frame).mark_line(point=True).encode(
        x=alt.X("train_step:Q", title="training step", scale=alt.Scale(zero=False)),
        y=alt.Y("beta:Q", title="β"),
        color=alt.Color("slot:N", title="β toward", scale=alt.Scale(domain=["a", "b"], range=["#2e6fd8", "#e67e22"]),
                        legend=None),
        tooltip=[alt.Tooltip("between:N", title="checkpoints"), alt.Tooltip("toward:N", title="β toward"),
                 alt.Tooltip("beta:Q", format=".4f", title="β")]).transform_filter(pick)
    labels = alt.Chart(beta_frame).mark_text(align="left", dx=6, fontSize=11).encode(
        x=alt.X("train_step:Q", aggregate="max"), y=alt.Y("beta:Q", aggregate={"argmax": "train_step"}),
        text=alt.Text("toward:N", aggregate={"argmax": "train_step"}),
        color=alt.Color("slot:N", scale=alt.Scale(domain=["a", "b"], range=["#2e6fd8", "#e67e22"]), legend=None),
        detail="slot:N").transform_filter(pick)
    rule = alt.Chart(pd.DataFrame({"floor": [floor]})).mark_rule(strokeDash=[4, 3], color="#999").encode(
        y="floor:Q", tooltip=[alt.Tooltip("floor:Q", title="noise floor", format=".3g")])
    marks = alt.Chart(flips).mark_rule(color="#c0392b", opacity=0.3, strokeWidth=6).encode(
        x="train_step:Q", tooltip=[alt.Tooltip("between:N", title="flip at")]).transform_filter(pick)
    layers = [marks, rule, lines, labels]
    if "low" in beta_frame:  # the coefficients' intervals (summary.json's uncertainty level)
        layers.insert(2, alt.Chart(beta_frame).mark_area(opacity=0.15).encode(
            x="train_step:Q", y="low:Q", y2="high:Q",
            color=alt.Color("slot:N", scale=alt.Scale(domain=["a", "b"], range=["#2e6fd8", "#e67e22"]), legend=None),
        ).transform_filter(pick))
    left = alt.layer(*layers).properties(width=290, height=180, title="Flip trajectory (β toward each class)")
    right = alt.Chart(confusion_frame).mark_bar(color="#c0392b", opacity=0.8).encode(
        x=alt.X("train_step:O", title="training step"),
        y=alt.Y("count:Q", title="confusions (both ways)"),
        tooltip=["checkpoint:N", "count:Q"]).transform_filter(pick).properties(
        width=200, height=180, title="The pair's confusions")
    return alt.hconcat(left, right).add_params(proto)


def with_param(spec: dict[str, Any], name: str, value: Any, rows_key: str | None = None) -> dict[str, Any]:
    """A copy of ``spec`` whose top-level param ``name`` starts at ``value``.

    With ``rows_key``, inline data rows whose ``rows_key`` field differs from ``value`` are dropped
    (rows without that field are kept), so each copy carries only its own data.
    """
    params = [dict(p, value=value) if p.get("name") == name else p for p in spec.get("params", [])]
    if not any(p.get("name") == name for p in params):
        raise KeyError(f"the spec has no top-level param {name}")
    out = {**spec, "params": params}
    if rows_key is not None:
        out["datasets"] = {key: [row for row in rows if row.get(rows_key, value) == value]
                           for key, rows in spec.get("datasets", {}).items()}
    return out


def rank_slopes(frame: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str], initial: str) -> alt.LayerChart:
    """Slope chart of rankings: one line per run from its rank under one method to the next (1 = most stable);
    crossing lines are reversals. ``frame``: metric, method, run, rank, score, interval; a dropdown picks the metric."""
    metric = alt.param(name="metric", value=initial, bind=alt.binding_select(options=list(metrics), name="metric "))
    top = int(frame["rank"].max()) if not frame.empty else 1
    base = alt.Chart(frame).transform_filter("datum.metric == metric").encode(
        x=alt.X("method:N", sort=list(methods), title="CAM method", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("rank:Q", title="rank (1 = most stable)", scale=alt.Scale(domain=[top + 0.3, 0.7]),
                axis=alt.Axis(values=list(range(1, top + 1)), format="d")),
        color=alt.Color("run:N", title="run"),
        detail="run:N",
        tooltip=["run:N", "method:N", "rank:Q", alt.Tooltip("score:Q", format=".3f"), "interval:N"])
    line = base.mark_line(strokeWidth=2)
    points = base.mark_circle(size=80, opacity=1)
    labels = base.transform_filter(alt.FieldEqualPredicate(field="method", equal=list(methods)[-1])).mark_text(
        align="left", dx=8, fontSize=11).encode(text="run:N")
    return alt.layer(line, points, labels).add_params(metric).properties(
        width=max(260, 170 * len(methods)), height=max(140, 50 * top), title="Ranking of the runs by stability")


def paste_over_training(frame: pd.DataFrame, onset: int | None,
                        revised: pd.DataFrame | None = None) -> alt.LayerChart | alt.HConcatChart:
    """The lead concept's paste flip rate and random patches' at every checkpoint (columns step, checkpoint, what,
    rate), with a rule at the onset step (the first checkpoint whose paste test passes); with ``revised`` (columns
    method, what, rate, low, high, seeds: the models revised from the final checkpoint, mean and 95% interval over
    seeds, low and high missing for one seed), a panel after it with one point and interval per method."""
    colour = alt.Color("what:N", title=None, scale=alt.Scale(range=["#d55e00", "#7f7f7f"]))
    rate = alt.Y("rate:Q", title="recipients turned", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
    lines = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step"), y=rate, color=colour,
        tooltip=["checkpoint:N", "step:Q", "what:N", alt.Tooltip("rate:Q", format=".0%")])
    layers: list[alt.Chart] = [lines]
    if onset is not None:
        layers.append(alt.Chart(pd.DataFrame({"step": [onset]})).mark_rule(strokeDash=[4, 3], color="#1d2430")
                      .encode(x="step:Q"))
    over = alt.layer(*layers).properties(width=420, height=200, title="The lead concept's paste test over training")
    if revised is None or revised.empty:
        return over
    base = alt.Chart(revised).encode(
        x=alt.X("method:N", title="method", sort=list(dict.fromkeys(revised["method"])), axis=alt.Axis(labelAngle=-30)),
        xOffset=alt.XOffset("what:N"), color=colour,
        tooltip=["method:N", "what:N", alt.Tooltip("rate:Q", format=".0%"), alt.Tooltip("low:Q", format=".0%"),
                 alt.Tooltip("high:Q", format=".0%"), "seeds:Q"])
    after = alt.layer(base.mark_rule(strokeWidth=2).encode(y=alt.Y("low:Q", scale=alt.Scale(domain=[0, 1])),
                                                         y2="high:Q"),
                      base.mark_point(filled=True, size=60).encode(y=rate)).properties(
        width=max(80, 40 * revised["method"].nunique()), height=200, title="After revision (from the final checkpoint)")
    return alt.hconcat(over, after).resolve_scale(y="shared")
