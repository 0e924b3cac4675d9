"""The training dynamics section: the ridge maps over steps, confidence groups and cartography."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from i2x.reporting import charts
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section
from i2x.metrics.stats import evenly_spaced
from i2x.reporting.sections.common import MAX_CARTOGRAPHY_POINTS, MAX_HEATMAP_CELLS


def dynamics(r: ReportInputs) -> Section:
    names, s = r.names, r.summary
    beta = r.read("analysis/beta")
    shown = evenly_spaced(beta.shape[0], max(2, MAX_HEATMAP_CELLS // (beta.shape[1] * beta.shape[2])))
    labels_step = [r.step_label(int(i)) for i in shown]
    initial = charts.strongest_step(beta[shown])
    caption = (f"Move the slider to walk through training; it opens on the step with the largest |β| "
               f"({labels_step[initial]}). Colours share one scale across steps.")
    limit, capped = charts.beta_limit(beta[shown])
    if capped:
        caption += (f" The scale is capped at ±{limit:.3g} (the 95th percentile of |β|) while β reaches "
                    f"±{float(np.abs(beta[shown]).max()):.3g}: cells beyond show the end colours; hover for values.")
    if shown.size < beta.shape[0]:
        caption += f" {shown.size} of the {beta.shape[0]} steps, evenly spaced, are shown."
    heat = r.charts.add("beta", charts.beta_slider(beta[shown], names, labels_step, initial=initial),
                        export="beta_heatmap.png", caption=caption)
    groups = r.charts.add("groups", charts.group_sizes(_group_frame(r), names), export="groups.png",
                          caption="Each segment is one group of samples whose confidences changed alike in that "
                                  "step, coloured by its main class (mixed: none above half; grey: noise).")
    carto = r.charts.add("cartography", charts.cartography(_cartography_frame(r), names), export="cartography.png",
                         caption=_cartography_caption(s["cartography"]))
    parts = [f'<div class="row">{heat}{groups}</div>', f'<h3>How each sample was learned</h3>{carto}']
    return Section("dynamics", "Training dynamics",
                   "How the evidence moved during training: the ridge map β from prototype-intensity changes to "
                   "confidence changes at each step, the groups of samples that changed together, and each sample's "
                   "learning trajectory (dataset cartography).", "".join(parts))




def _group_frame(r: ReportInputs) -> pd.DataFrame:
    groups, labels = r.read("analysis/groups"), r.read("labels")
    m, r2 = len(r.names), r.summary["mapping"]["r2"]
    rows = []
    for i, row in enumerate(groups):  # one iteration per step (few): group sizes and main class
        ids = np.unique(row)
        counts = np.bincount(np.searchsorted(ids, row) * m + labels, minlength=ids.size * m).reshape(ids.size, m)
        sizes = counts.sum(axis=1)
        for rank, j in enumerate(np.argsort(-sizes, kind="stable")):
            main, share = r.names[int(counts[j].argmax())], float(counts[j].max() / sizes[j])
            colour = "noise" if ids[j] < 0 else (main if share > 0.5 else "mixed")
            rows.append({"s": i, "between": r.step_label(i), "group": "noise" if ids[j] < 0 else str(ids[j]),
                         "colour": colour, "size": int(sizes[j]), "rank": rank, "main_class": main,
                         "main_share": share, "r2": r2[i]})
    return pd.DataFrame(rows)


def _cartography_frame(r: ReportInputs) -> pd.DataFrame:
    labels = r.read("labels")
    frame = pd.DataFrame({
        "row": np.arange(labels.size), "sample": r.read("sample_index"),
        "class": np.asarray(r.names, dtype=object)[labels],
        **{key: r.read(f"analysis/{key}").round(4) for key in ("confidence", "variability", "correctness")},
        "forgetting": r.read("analysis/forgetting")})
    if len(frame) > MAX_CARTOGRAPHY_POINTS:
        frame = frame.sample(MAX_CARTOGRAPHY_POINTS, random_state=0).sort_values("row")
    return frame


def _cartography_caption(c: dict[str, Any]) -> str:
    reg = c["regions"]
    shown = f" ({MAX_CARTOGRAPHY_POINTS} shown)" if c["n"] > MAX_CARTOGRAPHY_POINTS else ""
    return (f"{c['n']} samples{shown}: {reg['easy']} easy, {reg['ambiguous']} ambiguous (variability ≥ "
            f"{c['cutoffs']['variability']}), {reg['hard']} hard; {c['forgotten_at_least_once']} forgotten at "
            "least once.")
