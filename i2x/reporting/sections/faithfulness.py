"""Report section of the faithfulness study (``faithfulness.json``), None when the study was not run.

Deletion/insertion curves per bucket (CAM order against random order, mean and spread over samples) and a
per-bucket table of AUCs and drops.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from i2x.io.workdir import FAITHFULNESS
from i2x.metrics.faithfulness import OOD_NOTE
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, table
from i2x.reporting.sections.common import checkpoint_name, mean_pm

BUCKET_LABELS = {"tp": "true positives", "fp": "false positives", "random": "random samples"}
#: What each fill of :data:`i2x.metrics.faithfulness.FILLS` does, for the page.
FILL_LABELS = {"road": "ROAD noisy linear imputation from the neighbours", "mean": "the data set's mean colour",
               "black": "black pixels", "blur": "a Gaussian-blurred copy (kernel 11, sigma 5)"}

ORDER_COLOURS = alt.Scale(domain=["CAM order", "random order"], range=["#2e6fd8", "#98a2b3"])


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
            row = [method, BUCKET_LABELS.get(bucket, bucket), s["n"], mean_pm(d["cam"]),
                   mean_pm(d["random"], spread="std_draws"),
                   f"{d['share_beating_random']:.0%}", mean_pm(i["cam"]), mean_pm(i["random"], spread="std_draws")]
            for x in fractions:
                drop = s["drop"][x]
                gained = f", {drop['cam']['share_gained']:.0%} gained" if drop["cam"]["share_gained"] else ""
                row += [f"{mean_pm(drop['cam'])} ({drop['cam']['relative']:.0%} of p{gained})",
                        mean_pm(drop["random"], spread="std_draws")]
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
        ("Checkpoint", checkpoint_name(f["checkpoint"])),
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

