"""The report of a segmentation run: what was extracted (region targets), the attribution benchmark of its
region maps (``benchmark.json`` of :mod:`i2x.stages.benchmark.regions`) and their drift over training (``drift.json``
of :mod:`i2x.stages.drift`, drawn with the classification page's pieces). The prototype sections need the analysis,
which is for classifiers, so this page has its own three sections."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from i2x.io.location import RemotePath, command_path
from i2x.io.store import Store
from i2x.io.workdir import BENCHMARK, DRIFT, REPORT, read_json, write_text
from i2x.reporting.charts import ChartSet
from i2x.reporting.freshness import record
from i2x.reporting.page import Section, esc, render_page, shown_path, table
from i2x.reporting.sections.benchmark import METRIC_LABELS
from i2x.reporting.sections.common import mean_pm
from i2x.reporting.sections.drift import drift_body, drift_facts
from i2x.version import __version__

#: The region benchmark's table columns, in order (labels from the benchmark section's one table; ROI is the region).
METRICS = {k: METRIC_LABELS[k] for k in ("leakage", "leakage_vs_uniform", "relevance_mass", "relevance_rank",
                                          "pointing_game", "deletion_morf", "robust_spearman", "runtime_ms")}


def _run_section(store: Store, out: Path | RemotePath) -> Section:
    """What the store holds: model, data, region target, layer, rows and checkpoints."""
    config = store.config
    facts = table(["", ""], [
        ("Model", shown_path(config.get("model"), out)),
        ("Data", f"{shown_path(config.get('data'), out)}, {config.get('split')} split"),
        ("Classes", ", ".join(store.class_names)),
        ("Rows", f"{len(store.read('labels'))} (one per image and class present in its mask)"),
        ("Region target", "the predicted region of the class" if config.get("target") == "predicted"
         else "the ground-truth region of the class (fixed across checkpoints)"),
        ("Layer", f"{store.attrs['layer']}, grid {' x '.join(map(str, store.grid))}"),
        ("Checkpoints", ", ".join(c["name"] for c in store.checkpoints)),
        ("Methods stored", ", ".join(store.methods)),
    ], "facts")
    return Section("run", "Segmentation run",
                   "Each map explains the score of one class over one region: the class's per-pixel logit averaged "
                   "over the region.", facts)


def _over_training(b: dict[str, Any]) -> alt.Chart:
    rows = [{"checkpoint": c["name"], "step": c["step"] if c["step"] is not None else c["index"], "method": m,
             "metric": METRICS[key][0], "mean": s[key]["mean"]}
            for c in b["checkpoints"] for m, s in b["results"][c["name"]].items() for key in METRICS
            if isinstance(s.get(key), dict) and s[key].get("mean") is not None]
    labels = [label for label, _ in METRICS.values() if any(r["metric"] == label for r in rows)]
    metric = alt.param(name="smetric", value=labels[0], bind=alt.binding_select(options=labels, name="metric "))
    return alt.Chart(pd.DataFrame(rows)).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step"), y=alt.Y("mean:Q", title="mean over rows"),
        color=alt.Color("method:N"), tooltip=["checkpoint:N", "method:N", alt.Tooltip("mean:Q", format=".3f")],
    ).add_params(metric).transform_filter("datum.metric == smetric").properties(
        width=520, height=230, title="Each metric over the checkpoints")


def _benchmark_section(b: dict[str, Any] | None, charts: ChartSet, shown_dir: str) -> Section:
    """The region benchmark at the last benchmarked checkpoint and over training, or the command that runs it."""
    intro = ("Whether each map keeps its credit inside the region it explains (leakage, against the uniform map's), "
             "whether removing what it highlights inside the region lowers the region's score faster than random "
             "orders (deletion), how little it moves under small input changes, and its cost.")
    if b is None:
        return Section("benchmark", "Attribution benchmark on regions", intro, "",
                       [f"Not run yet: OMP_NUM_THREADS=1 i2x benchmark {shown_dir} --trust-analysis"])
    last = b["checkpoints"][-1]["name"]
    final = b["results"][last]
    body = table(["method"] + [label for label, _ in METRICS.values()],
                 [[m] + [mean_pm(s.get(k)) for k in METRICS] for m, s in final.items()])
    facts = table(["", ""], [
        ("Checkpoints", ", ".join(c["name"] for c in b["checkpoints"])),
        ("Rows", f"{b['n_samples']} for maps, leakage and runtime; {b['n_detail']} of them for deletion and "
                 "robustness"),
        ("Uniform map", f"leakage {mean_pm(b['uniform_leakage'][last])} at {last}: the share of the image outside the "
                        "region, what a map that says nothing leaks"),
        ("Deletion baseline", f"random orders inside the region: MoRF {mean_pm(b['random'][last]['morf'])}"),
        ("Run time", f"{b['seconds']:.1f} s"),
    ], "facts")
    parts = [facts, f"<h3>At {esc(last)}</h3>", body,
             charts.add("segmentation-benchmark-training", _over_training(b), export="segmentation_benchmark.png",
                        caption="Pick a metric in the dropdown.")]
    return Section("benchmark", "Attribution benchmark on regions", intro, "".join(parts), list(b.get("notes", [])))


def _drift_section(d: dict[str, Any] | None, charts: ChartSet, shown_dir: str, predicted: bool) -> Section:
    """The drift of the region maps between two checkpoints and over consecutive ones, or the command that runs it."""
    intro = ("How much the region maps moved over training: overlap of the top regions, centroid shift, rank "
             "correlation and concentration change, per class and method. Every row counts, since a row's map explains "
             "its class over its region at every checkpoint, even before the net names the region's class; a pair "
             "where either map is all zero (no evidence at one checkpoint) counts for no metric.")
    if d is None:
        return Section("drift", "Drift of the region maps", intro, "", [f"Not run yet: i2x drift {shown_dir}"])
    counted = d.get("n_counted", d["n_correct_both"])
    empty = {m: s.get("n_empty", 0) for m, s in d["methods"].items()}
    facts = drift_facts(d, ("Rows", f"{counted} of {d['n_samples']} counted; {d['n_correct_both']} of them with "
                                    "their class the region's top class at both checkpoints"))
    facts.insert(2, ("Empty maps", ", ".join(f"{m}: {n} rows" for m, n in empty.items())
                     + " with an all-zero map at either checkpoint, left out"))
    body = drift_body(d, charts, facts, "rows with a map at both",
                      "Each point compares a checkpoint with the one before, on the rows whose maps are not all zero "
                      "at either.")
    notes = [f"{m}: every row's map is all zero at {d['from']['name']} or {d['to']['name']}, so its drift between them "
             "is not defined." for m, s in d["methods"].items() if not s["overall"]["iou"]["n"]]
    if predicted:
        notes.append("The regions are the ones each checkpoint predicts, so the drift includes the change of the "
                     "region itself.")
    if d.get("rows") != "all":
        notes.append(f"This drift.json counts only rows classified right at both checkpoints; rerun i2x drift "
                     f"{shown_dir} to count every row.")
    return Section("drift", "Drift of the region maps", intro, body, notes)


def build_segmentation_report(store: Store, out: Path | RemotePath) -> Path | RemotePath:
    """Write ``out/report.html`` for a segmentation store (the caller holds the lock); returns its path."""
    start = time.perf_counter()
    path = out / BENCHMARK
    b = read_json(path, "i2x benchmark") if path.exists() else None
    d = read_json(out / DRIFT, "i2x drift") if (out / DRIFT).exists() else None
    charts = ChartSet()
    shown_dir = command_path(out)
    sections = [_run_section(store, out), _benchmark_section(b, charts, shown_dir),
                _drift_section(d, charts, shown_dir, store.config.get("target") == "predicted")]
    config = store.config
    title = f"{shown_path(config.get('model'), out)} on {shown_path(config.get('data'), out)}"
    subtitle = (f"Region maps of a segmentation model over {len(store.checkpoints)} checkpoints; the prototype "
                "analysis is for classifiers.")
    footer = (f"i2x {__version__} · store {shown_path(store.path, out)} · built in {time.perf_counter() - start:.1f} s"
              " · self-contained: opens offline, loads nothing from the network.")
    reads = {"run": [], "benchmark": [BENCHMARK], "drift": [DRIFT]}
    return write_text(out / REPORT, render_page(title, subtitle, sections, charts.specs, [], footer,
                                                inputs=record(out, reads)))
