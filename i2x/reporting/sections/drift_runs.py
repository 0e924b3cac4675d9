"""The sections of the cross-run drift page (:func:`i2x.stages.drift.runs.compare_models`): the runs x methods table,
a slope chart of the rankings, Kendall's tau and the reversals."""

from __future__ import annotations

from typing import Any

import pandas as pd

from i2x.reporting.charts import ChartSet, rank_slopes
from i2x.reporting.page import Raw, Section, chip, esc, table
from i2x.reporting.drift_text import format_tau, reversal_label
from i2x.reporting.sections.drift import DRIFT_LABELS

#: The stability metrics runs are ranked by, labelled as in the one-run charts.
STABILITY_LABELS = {k: DRIFT_LABELS[k] for k in ("iou", "spearman", "shift_frac")}


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
