"""The revision results: each method's measures over seeds (mean, std, 95% bootstrap interval), paired differences
against the controls, the table and the verdict."""

from __future__ import annotations

from typing import Any

import numpy as np

from i2x.metrics.bootstrap import bootstrap_means, percentile_interval
from i2x.metrics.paired import paired_difference
from i2x.stages.revision.measure import MEASURES
from i2x.stages.revision.methods import CONTROLS, FIXES

#: a revision removes the artefact when its gap is at most this (share) and its clean accuracy within ACCURACY_LOSS
MAX_GAP = 0.10
ACCURACY_LOSS = 0.02


def summarise(runs: list[dict[str, Any]], methods: list[str],
              keys: tuple[str, ...] = MEASURES + ("seconds",)) -> dict[str, dict[str, Any]]:
    """Per method and measure (``keys`` of the runs; None counts as missing): mean, sample std (ddof=1), 95% bootstrap
    interval of the mean and the values."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        out[method] = {}
        for key in keys:
            v = np.asarray([r[key] for r in mine], dtype=float)
            finite = np.isfinite(v)
            out[method][key] = {"mean": float(np.nanmean(v)) if finite.any() else None,
                                "std": float(np.nanstd(v, ddof=1)) if finite.sum() > 1 else 0.0,
                                "ci": percentile_interval(bootstrap_means(v[None, :])[:, 0]) if finite.any()
                                else [None, None],
                                "values": v.tolist()}
    return out


def paired(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Each fix against each control that ran, seed by seed: ``gap_reduction`` (control's gap minus the fix's:
    positive is better) and the fix's clean and attacked accuracy minus the control's."""
    by = {(r["method"], r["seed"]): r for r in runs}
    out = {}
    for fix in (m for m in methods if m in FIXES):
        for control in (m for m in methods if m in CONTROLS):
            seeds = sorted(s for (m, s) in by if m == fix and (control, s) in by)
            out[f"{fix} vs {control}"] = {
                "seeds": seeds,
                "gap_reduction": paired_difference([by[control, s]["gap"] - by[fix, s]["gap"] for s in seeds]),
                "clean_accuracy": paired_difference([by[fix, s]["clean_accuracy"] - by[control, s]["clean_accuracy"]
                                                     for s in seeds]),
                "attacked_accuracy": paired_difference([by[fix, s]["attacked_accuracy"]
                                                        - by[control, s]["attacked_accuracy"] for s in seeds])}
    return out


def verdict(before: dict[str, Any], methods: dict[str, dict[str, Any]], pairs: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per fix: does it remove the artefact (gap at most MAX_GAP, clean accuracy within ACCURACY_LOSS
    of the start) and beat every control (paired interval of the gap reduction above zero)?"""
    lines = []
    for fix, st in methods.items():
        if fix not in FIXES:
            continue
        gap, acc = st["gap"]["mean"], st["clean_accuracy"]["mean"]
        removed = gap is not None and gap <= MAX_GAP and acc >= before["clean_accuracy"] - ACCURACY_LOSS
        beats = [k.split(" vs ")[1] for k, d in pairs.items() if k.startswith(f"{fix} vs ")
                 and d["gap_reduction"]["ci"][0] is not None and d["gap_reduction"]["ci"][0] > 0]
        controls = [k.split(" vs ")[1] for k in pairs if k.startswith(f"{fix} vs ")]
        lines.append(f"{fix}: gap {100 * before['gap']:.1f} -> {100 * gap:.1f} pts, clean accuracy "
                     f"{100 * before['clean_accuracy']:.1f} -> {100 * acc:.1f}%: "
                     + ("removes the artefact" if removed else "does not remove the artefact")
                     + f"; beats {len(beats)} of {len(controls)} controls on the gap with a paired 95% interval above "
                     f"zero" + (f" ({', '.join(beats)})" if beats else "") + ".")
    return lines


def format_table(record: dict[str, Any]) -> str:
    """Method x gap, clean and attacked accuracy, flip rate, CAM share (mean ± std over seeds, in points) and time;
    then the paired gap reductions and the verdict."""
    header = ["method", "gap pts", "clean acc %", "attacked acc %", "flip %", "CAM on mask %", "s/run"]
    b, s = record["before"], record["settings"]
    name = "before (final checkpoint)" if s["methods"] else f"measured: {s['checkpoint']}"
    rows = [[name] + [_percent(b[k]) for k in MEASURES] + [""]]
    for method, st in record["methods"].items():
        rows.append([method] + [_pm(st[k]) for k in MEASURES] + [f"{st['seconds']['mean']:.1f}"])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for key, d in record["paired"].items():
        g = d["gap_reduction"]
        lo, hi = g["ci"]
        if g["mean"] is not None and lo is not None:
            lines.append(f"{key}: gap reduction {100 * g['mean']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}], "
                         f"clean accuracy {100 * d['clean_accuracy']['mean']:+.1f} pts")
    lines += paste_lines(record["paste"])
    mask = f"mask: {record['mask']['source']} ({record['mask']['pixels']} px)"
    if s["methods"]:
        lines.append(f"{len(s['seeds'])} seed(s) per method, {s['epochs']} epoch(s) each, {s['optimizer']} lr "
                     f"{s['lr']:g}; {mask}; ± is the sample std over seeds; [ ] a 95% bootstrap interval over seeds.")
    else:
        lines.append(f"{mask}; {b['attacked_images']} other-class test images pasted.")
    return "\n".join(lines + record["verdict"])


def paste_lines(paste: dict[str, Any]) -> list[str]:
    """The concept's paste test (the reliance study's) on the start model and per method: its flip rate against
    random patches' (mean over seeds) and its outcome in each seed."""
    b = paste["before"]
    lines = [f"paste test of concept {paste['concept']} (as in the reliance study): before {_percent(b['flip_rate'])}% "
             f"vs {_percent(b['random_flip_rate'])}% for random patches: {paste['before_outcome']}"]
    for method, st in paste["methods"].items():
        outcomes = st["outcomes"]
        lines.append(f"  {method}: {_mean(st['flip_rate'])}% vs {_mean(st['random_flip_rate'])}%: "
                     + ", ".join(f"{o} in {outcomes.count(o)}" for o in dict.fromkeys(outcomes))
                     + f" of {len(outcomes)} seed(s)")
    return lines


def _mean(stat: dict[str, Any]) -> str:
    return "n/a" if stat["mean"] is None else f"{100 * stat['mean']:.1f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def _pm(stat: dict[str, Any]) -> str:
    return "n/a" if stat["mean"] is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
