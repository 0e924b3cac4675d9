"""The report's first section: what a reader must know before the details (shortcut verdict, uncertain pairs,
accuracy from the first to the final checkpoint), each with a link to the section that backs it."""

from __future__ import annotations

from typing import Any

import numpy as np

from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, class_ref, esc, proto_ref, table
from i2x.stages.analyze.uncertainty import summary_sentence
from i2x.stages.context import sample_line, sample_warning
from i2x.stages.normalisation import preprocessing_line

MAX_VERDICT_PAIRS = 5


def _shortcut(r: ReportInputs) -> Raw:
    entry = r.summary.get("reliance")
    if not entry:
        return Raw(f'<span class="muted">not run</span>: <code>i2x reliance {esc(r.shown_dir)}</code> tests by '
                   "intervention whether the model depends on a prototype tied to one class in fixed places.")
    mark = chip("shortcut suspected", "warn") if entry.get("shortcut_found") else chip("no shortcut stands out")
    suspects = entry.get("suspects") or []
    named = " ".join(proto_ref(p["id"]) for p in suspects[:3])
    return Raw(f'{mark} {esc(entry["verdict"])} <a href="#reliance">details</a>'
               + (f"<br>top suspects: {named}" if named else ""))


def _uncertain(r: ReportInputs) -> Raw:
    found = r.summary["uncertain"]
    head = summary_sentence(r.summary)
    if not found:
        return Raw(f'<span class="muted">none</span>: no prototype flipped between two classes ({esc(head)}).')
    items = []
    for u in found[:MAX_VERDICT_PAIRS]:
        a, b = u["classes"]
        flag = ("" if "significant" not in u else
                chip("significant", "shared") if u["significant"] else chip("not significant", "warn"))
        items.append(f"<li>{proto_ref(u['prototype'], 'uncertain')} {class_ref(a, r.names[a])} ↔ "
                     f"{class_ref(b, r.names[b])} {flag}</li>")
    more = f'<li class="muted">{len(found) - MAX_VERDICT_PAIRS} more below</li>' if len(found) > MAX_VERDICT_PAIRS else ""
    return Raw(f'{esc(head)} (<a href="#uncertain">details</a>)<ul class="tight">{"".join(items)}{more}</ul>')


def _accuracy(s: dict[str, Any], names: list[str]) -> str:
    acc = [(n, a) for n, a in zip(names, s["accuracy"]) if a is not None]
    if not acc:
        return "no usable checkpoint"
    (n0, a0), (n1, a1) = acc[0], acc[-1]
    return f"{a0:.1%} at {n0} → {a1:.1%} at {n1} ({s['split']} split, {s['n_samples']} samples)"


def _inputs(r: ReportInputs) -> Raw:
    """The preprocessing used and whether the model confirms it, and how the samples were chosen."""
    attrs = r.store.attrs
    pre, sample = attrs.get("preprocessing"), attrs.get("sample")
    if pre is None:
        told = '<span class="muted">preprocessing not recorded (extracted before i2x recorded it)</span>'
    else:
        check = pre["check"]
        kind = {"fits": "shared", "unchecked": "", "doubtful": "warn", "skipped": "warn"}[check["status"]]
        told = (f"{esc(preprocessing_line(pre))} {chip(check['status'], kind)}<br>{esc(check['line'])}"
                + "".join(f"<br>{esc(note)}" for note in check["notes"]))
    if sample is not None:
        warning = sample_warning(sample, r.names)
        told += f"<br>samples: {esc(sample_line(sample))}" + (f" {chip('thin', 'warn')} {esc(warning)}" if warning else "")
    return Raw(told)


def verdict_section(r: ReportInputs) -> Section:
    """The verdict card: the answers first, each linked to the section that shows the evidence."""
    s = r.summary
    conf = np.asarray(s["final_confusion"])
    wrong = int(conf.sum() - np.trace(conf))
    rows = [
        ("Shortcut", _shortcut(r)),
        ("Uncertain pairs", _uncertain(r)),
        ("Accuracy", _accuracy(s, [c["name"] for c in r.checkpoints])),
        ("Errors at the end", f"{wrong} of {int(conf.sum())} samples misclassified"),
        ("Inputs", _inputs(r)),
    ]
    return Section("verdict", "Verdict", "What the analysis found, before the details: does the model lean on a "
                   "shortcut, which prototypes have not settled between two classes, and how well it did.",
                   f'<div class="verdict">{table(None, rows, "facts")}</div>')
