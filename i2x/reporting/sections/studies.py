"""Report sections of the faithfulness and drift studies (:mod:`i2x.studies`), skipped when the study was not run.

``faithfulness_section`` shows the deletion/insertion curves per bucket (CAM order against random
order, mean and spread over samples) and a per-bucket table; ``drift_section`` shows drift over
consecutive checkpoints, the per-class distributions between the two compared checkpoints and the
class-stability rankings with the pairs that reverse between methods. Both follow the builder
interface of :mod:`i2x.report.sections`: ``builder(r: ReportInputs) -> Section | None``.
``drift_comparison_sections`` renders the cross-run comparison (:func:`i2x.stages.drift_runs.compare_models`)
for its own page: the runs x methods table, a slope chart of the rankings, tau and the reversals.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from i2x.io.workdir import DRIFT, FAITHFULNESS
from i2x.reporting.charts import ChartSet, rank_slopes
from i2x.metrics.faithfulness import OOD_NOTE
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, esc, table
from i2x.reporting.drift_text import format_tau, reversal_label

#: Drift metrics offered in the charts' dropdown: key -> label.
DRIFT_LABELS = {
    "iou": "IoU of the top regions",
    "spearman": "Spearman correlation",
    "shift_px": "centroid shift (input px)",
    "shift_frac": "centroid shift (share of the diagonal)",
    "concentration_change": "concentration change",
}
BUCKET_LABELS = {"tp": "true positives", "fp": "false positives", "random": "random samples"}
#: What each fill of :data:`i2x.metrics.faithfulness.FILLS` does, for the page.
FILL_LABELS = {"road": "ROAD noisy linear imputation from the neighbours", "mean": "the data set's mean colour",
               "black": "black pixels", "blur": "a Gaussian-blurred copy (kernel 11, sigma 5)"}

ORDER_COLOURS = alt.Scale(domain=["CAM order", "random order"], range=["#2e6fd8", "#98a2b3"])


def _pm(stats: dict[str, Any] | None, mean: str = "mean", spread: str = "std") -> str:
    """``mean ± spread`` with 3 decimals (a dash when missing)."""
    if not stats or stats.get(mean) is None:
        return "–"
    s = stats.get(spread)
    return f"{stats[mean]:.3f}" + (f" ± {s:.3f}" if s is not None else "")


def _checkpoint(c: dict[str, Any]) -> str:
    step = f", step {c['step']}" if c.get("step") is not None else ""
    phase = f", {c['phase']}" if c.get("phase") else ""
    return f"{c['name']}{step}{phase}"


# ---- faithfulness ------------------------------------------------------------------------------
def _curve_frame(f: dict[str, Any]) -> pd.DataFrame:
    """Long-form mean curves: one row per method, bucket, mode, order and fraction, with a ±std band."""
    grid, rows = f["fractions_grid"], []
    for method, per_bucket in f["methods"].items():
        for bucket, s in per_bucket.items():
            if not s["n"]:
                continue
            label = f"{BUCKET_LABELS.get(bucket, bucket)} (n={s['n']})"
            for mode, c in s["curves"].items():
                for order, key in (("CAM order", "cam"), ("random order", "random")):
                    for x, m, sd in zip(grid, c[f"{key}_mean"], c[f"{key}_std"]):
                        rows.append({"method": method, "bucket": label, "mode": mode, "order": order,
                                     "fraction": x, "mean": m, "lo": m - sd, "hi": m + sd})
    return pd.DataFrame(rows)


def curves_chart(frame: pd.DataFrame, methods: list[str], buckets: list[str]) -> alt.FacetChart:
    """Deletion (top) and insertion (bottom) curves per bucket, CAM vs random order; a dropdown picks the method."""
    method = alt.param(name="method", value=methods[0], bind=alt.binding_select(options=methods, name="method "))
    base = alt.Chart(frame).transform_filter("datum.method == method").encode(
        x=alt.X("fraction:Q", title="fraction of pixels changed"),
        color=alt.Color("order:N", title=None, scale=ORDER_COLOURS))
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("lo:Q", title="p(target class)"), y2="hi:Q")
    line = base.mark_line().encode(
        y=alt.Y("mean:Q", scale=alt.Scale(domain=[0, 1], clamp=True)),
        tooltip=["order:N", alt.Tooltip("fraction:Q", format=".2f"), alt.Tooltip("mean:Q", format=".3f")])
    return alt.layer(band, line).properties(width=210, height=150).facet(
        row=alt.Row("mode:N", title=None, sort=["deletion", "insertion"]),
        column=alt.Column("bucket:N", title=None, sort=buckets),
    ).add_params(method)


def _faithfulness_table(f: dict[str, Any]) -> str:
    """One row per method and bucket: AUCs and drops, CAM against random."""
    fractions = [f"{x:g}" for x in f["settings"]["fractions"]]
    headers = ["method", "bucket", "n", "deletion AUC: CAM", "random (± over draws)", "CAM < random",
               "insertion AUC: CAM", "random (± over draws)"]
    headers += [h for x in fractions for h in (f"drop at {float(x):.0%}: CAM", "random")]
    rows = []
    for method, per_bucket in f["methods"].items():
        for bucket, s in per_bucket.items():
            if not s["n"]:
                rows.append([method, BUCKET_LABELS.get(bucket, bucket), 0] + [None] * (len(headers) - 3))
                continue
            d, i = s["deletion_auc"], s["insertion_auc"]
            row = [method, BUCKET_LABELS.get(bucket, bucket), s["n"], _pm(d["cam"]),
                   _pm(d["random"], spread="std_draws"),
                   f"{d['share_beating_random']:.0%}", _pm(i["cam"]), _pm(i["random"], spread="std_draws")]
            for x in fractions:
                drop = s["drop"][x]
                gained = f", {drop['cam']['share_gained']:.0%} gained" if drop["cam"]["share_gained"] else ""
                row += [f"{_pm(drop['cam'])} ({drop['cam']['relative']:.0%} of p{gained})",
                        _pm(drop["random"], spread="std_draws")]
            rows.append(row)
    return table(headers, rows)


def _random_wins(f: dict[str, Any]) -> list[str]:
    """One note per method, bucket and mode where the random pixel order beats the map, with the likely cause."""
    notes = []
    for method, per_bucket in f["methods"].items():
        for bucket, s in per_bucket.items():
            for mode in s.get("random_beats_map", []):
                a, fill = s[f"{mode}_auc"], f["baselines"][mode]
                notes.append(f"The random order beats {method} in {mode} on the {BUCKET_LABELS.get(bucket, bucket)} "
                             f"(AUC {a['cam']['mean']:.3f} vs random {a['random']['mean']:.3f}, {fill} fill)."
                             + (" " + OOD_NOTE if fill in ("mean", "black") else ""))
    return notes


def faithfulness_section(r: ReportInputs) -> Section | None:
    """Deletion/insertion study of ``faithfulness.json``; None when the study was not run."""
    f = r.optional_json(FAITHFULNESS)
    if f is None:
        return None
    st = f["settings"]
    positive = st.get("positive_class")
    facts = table(["", ""], [
        ("Checkpoint", _checkpoint(f["checkpoint"])),
        ("Buckets", f"{', '.join(BUCKET_LABELS.get(b, b) for b in st['buckets'])}; up to {st['per_bucket']} samples "
                    f"each, drawn at random (seed {st['seed']})"
                    + (f"; positive class {f['class_names'][positive]}" if positive is not None else "")),
        ("Class explained and scored", f["target_rule"]),
        ("Pixel fills", f"deletion: {FILL_LABELS.get(f['baselines']['deletion'], f['baselines']['deletion'])}; "
                        "insertion starts from: "
                        f"{FILL_LABELS.get(f['baselines']['insertion'], f['baselines']['insertion'])}"),
        ("Curves", f"{st['steps']} steps; random baseline: {st['random_draws']} random pixel orders per bucket, "
                   "shared by all methods"),
        ("Run time", f"{f['seconds']:.1f} s"),
    ], "facts")
    buckets = [b for b in st["buckets"] if b in f["buckets"]]
    frame = _curve_frame(f)
    labels = [f"{BUCKET_LABELS.get(b, b)} (n={f['buckets'][b]['n']})" for b in buckets if f["buckets"][b]["n"]]
    parts = [facts]
    if not frame.empty:
        parts.append(r.charts.add("faithfulness-curves", curves_chart(frame, st["methods"], labels),
                                  export="faithfulness_curves.png",
                                  caption="Mean p(target class) as pixels are deleted (top) or inserted (bottom) in "
                                          "CAM order and in random order; bands: ± 1 std over the bucket's samples."))
    parts.append("<h3>Per bucket</h3>" + _faithfulness_table(f))
    notes = [f"No {BUCKET_LABELS.get(b, b)} at this checkpoint." for b in buckets if not f["buckets"][b]["n"]]
    notes += _random_wins(f)
    return Section("faithfulness", "Faithfulness: deletion and insertion",
                   "Does the map point at what the model uses? Deleting the most salient pixels first should lower "
                   "the confidence faster than deleting random pixels (lower deletion AUC), and inserting them first "
                   "should raise it faster (higher insertion AUC).", "".join(parts), notes)


# ---- drift -------------------------------------------------------------------------------------
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


def consecutive_chart(frame: pd.DataFrame) -> alt.Chart:
    """Mean drift between consecutive checkpoints over training, one line per method; a dropdown picks the metric."""
    labels = list(DRIFT_LABELS.values())
    metric = alt.param(name="metric", value=labels[0], bind=alt.binding_select(options=labels, name="metric "))
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("train_step:Q", title="training step (later checkpoint of the pair)"),
        y=alt.Y("mean:Q", title="mean over samples correct at both"),
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
    rows = [[method] + [_pm(s["overall"][k]) for k in DRIFT_LABELS] for method, s in d["methods"].items()]
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


def drift_section(r: ReportInputs) -> Section | None:
    """Semantic-drift study of ``drift.json``; None when the study was not run."""
    d = r.optional_json(DRIFT)
    if d is None:
        return None
    h, w = d["grid"]
    facts = table(["", ""], [
        ("Compared", f"{_checkpoint(d['from'])} → {_checkpoint(d['to'])}"
                     + (f" (phase split at {d['phase_split']})" if d.get("phase_split") is not None else "")),
        ("Samples", f"{d['n_correct_both']} of {d['n_samples']} classified correctly by both checkpoints"),
        ("Top region", f"the top {d['top']:.0%} of the {h} x {w} cells"),
        ("Shift unit", f"pixels of the {d['input_size'][0]} x {d['input_size'][1]} input "
                       f"({d['pixels_per_cell'][0]:.3g} px per cell)"),
    ], "facts")
    parts = [facts, "<h3>Overall</h3>", _overall_table(d)]
    notes = []
    if d.get("consecutive") and d["consecutive"]["steps"]:
        parts.append(r.charts.add("drift-consecutive", consecutive_chart(_consecutive_frame(d)),
                                  export="drift_consecutive.png",
                                  caption="Each point compares a checkpoint with the one before, on the samples both "
                                          "classify correctly."))
    boxes = _box_frame(d)
    if not boxes.empty:
        parts.append(r.charts.add("drift-classes", class_box_chart(boxes, d["class_names"]), export="drift_classes.png",
                                  caption="Whiskers: min to max; boxes: quartiles; tick: median."))
    if d["n_correct_both"] == 0:
        notes.append("No sample is classified correctly by both checkpoints, so there is nothing to compare.")
    parts.append("<h3>Which classes are stable, by method</h3>" + _reversal_table(d["stability"]))
    return Section("drift", "Semantic drift of the maps",
                   "How much the maps moved between two points of training (or two training phases): overlap of the "
                   "top regions, centroid shift, rank correlation and concentration change, per class and per method, "
                   "and whether the methods agree on which classes are stable.", "".join(parts), notes)


# ---- drift across runs -------------------------------------------------------------------------------
STABILITY_LABELS = {"iou": "IoU of the top regions", "spearman": "Spearman correlation",
                    "shift_frac": "centroid shift (share of the diagonal)"}


def _slope_frame(d: dict[str, Any]) -> pd.DataFrame:
    """Long-form ranks: one row per stability metric, method and ranked run."""
    rows = []
    for metric, e in d["stability"].items():
        for method, ranks in e["ranks"].items():
            for run, rank in ranks.items():
                lo, hi = e["intervals"][method][run]
                rows.append({"metric": STABILITY_LABELS.get(metric, metric), "method": method, "run": run,
                             "rank": rank, "score": e["scores"][method][run],
                             "interval": "–" if lo is None else f"[{lo:.3f}, {hi:.3f}]"})
    return pd.DataFrame(rows)


def _run_table(d: dict[str, Any], metric: str) -> str:
    """Runs x methods: mean of ``metric`` with its bootstrap interval and rank, or why it is not defined."""
    e = d["stability"][metric]
    rows = []
    for run in d["names"]:
        r = d["runs"][run]
        row: list[Any] = [run, f"{r['from']['name']} → {r['to']['name']}", r["n_correct_both"]]
        for m in d["methods"]:
            score, (lo, hi) = e["scores"][m].get(run), e["intervals"][m][run]
            if score is None:
                row.append(Raw(chip("not defined", "warn") + esc(f" {e['left_out'][m].get(run, '')}")))
                continue
            interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
            row.append(f"{score:.3f}{interval} · rank {e['ranks'][m][run]}")
        rows.append(row)
    level = f"{d['bootstrap']['confidence']:.0%}"
    return table(["run", "compared", "samples counted"] + [f"{m}: mean [{level} interval] · rank" for m in d["methods"]],
                 rows)


def _comparison_table(e: dict[str, Any]) -> str:
    """Per method pair: Kendall's tau between the run rankings and each reversed pair, labelled clear or within noise."""
    rows = []
    for c in e["reversals"]:
        first, second = c["methods"]
        chips = []
        for rev in c.get("reversals", []):
            a, b = rev["pair"]
            label = reversal_label(rev)
            detail = "; ".join(f"{m}: {v['estimate']:+.3f} [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]"
                               if v["interval"][0] is not None else f"{m}: {v['estimate']:+.3f}"
                               for m, v in rev["difference"].items())
            share = f"; reversed in {rev['share_reversed']:.0%} of resamples" if rev["share_reversed"] is not None else ""
            chips.append(chip(f"{a} > {b} under {first}, {b} > {a} under {second}: {label}",
                              "uncertain" if label == "clear" else "")
                         + esc(f" (stability difference {detail}{share})"))
        highlight = chip("the drift paper's comparison", "warn") if {first, second} == {"gradcampp", "layercam"} else ""
        rows.append([Raw(esc(f"{first} vs {second}") + " " + highlight), len(c["items"]), format_tau(c),
                     Raw("<br>".join(chips) or '<span class="muted">none</span>')])
    return table(["methods", "runs ranked", "Kendall's tau [interval]", "reversed pairs"], rows)


def drift_comparison_sections(d: dict[str, Any], charts: ChartSet) -> list[Section]:
    """The sections of the cross-run drift page: setup, the leading metric's table and slope chart, then every metric."""
    s, b = d["samples"], d["bootstrap"]
    rule = ("each run's own true positives at both checkpoints" if s["rule"] == "each"
            else f"the {s.get('n_correct_in_all', 0)} samples every run classifies correctly at both checkpoints")
    facts = table(["", ""], [
        ("Runs", ", ".join(f"{n} ({d['runs'][n]['model']}, {d['runs'][n]['dir']})" for n in d["names"])),
        ("Samples", f"{s['n_common']} shared by all runs (same sample index and label; {s['n_label_mismatch']} "
                    f"with different labels left out); counted: {rule}"),
        ("Intervals", f"{b['confidence']:.0%} percentile intervals over {b['replicates']} bootstrap resamples of the "
                      f"shared samples (one paired resample for every run and method; seed {b['seed']})"),
        ("Reversal within noise", "the two runs' stability difference has an interval containing 0 under either "
                                  "method"),
        ("Top region", f"the top {d['settings']['top']:.0%} of each run's CAM grid"),
    ], "facts")
    headline = d["headline"]
    frame = _slope_frame(d)
    parts = [facts, f"<h3>Mean {esc(STABILITY_LABELS[headline])} per run and method</h3>", _run_table(d, headline)]
    if not frame.empty:
        parts.append(charts.add("drift-rank-slopes", rank_slopes(frame, d["methods"],
                                                                 [STABILITY_LABELS[k] for k in d["stability"]],
                                                                 STABILITY_LABELS[headline]),
                                caption="Each line is a run, from its rank under one method to its rank under the "
                                        "next; lines that cross are runs whose order the methods reverse."))
    parts.append(_comparison_table(d["stability"][headline]))
    notes = [f"{run} is not ranked: {d['runs'][run]['undefined']}." for run in d["names"] if d["runs"][run]["undefined"]]
    sections = [Section("drift-runs", "Semantic drift across runs",
                        "How much each run's maps moved between the two compared checkpoints (or training phases), "
                        "which runs are most stable under each CAM method, and whether the methods agree.",
                        "".join(parts), notes)]
    others = [f"<h3>{esc(STABILITY_LABELS[k])}</h3>" + _run_table(d, k) + _comparison_table(d["stability"][k])
              for k in d["stability"] if k != headline]
    sections.append(Section("drift-runs-metrics", "The other stability metrics",
                            "The same comparison with the runs ranked by the other metrics.", "".join(others)))
    return sections
