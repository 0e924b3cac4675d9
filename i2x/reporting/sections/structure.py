"""The class structure section: per class its shared and specialized prototypes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from i2x.reporting import charts
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, class_ref, esc, table
from i2x.reporting.sections.common import _ids


def class_structure(r: ReportInputs) -> Section:
    names, s = r.names, r.summary
    labels = r.read("labels")
    conf = np.asarray(s["final_confusion"])
    recall = np.divide(np.diag(conf), conf.sum(axis=1), out=np.full(len(names), np.nan), where=conf.sum(axis=1) > 0)
    shared = {c: [] for c in range(len(names))}
    special = {c: [] for c in range(len(names))}
    for p in s["prototypes"]:
        for c in p["shared_for"]:
            shared[c].append(p["id"])
        for c in p["specialized_for"]:
            special[c].append(p["id"])
    off = conf - np.diag(np.diag(conf))
    rows = []
    for c, name in enumerate(names):
        other = int(np.argmax(off[c])) if off[c].max() > 0 else None
        worst = Raw(f"{class_ref(other, names[other])} ({off[c, other]}x)") if other is not None else None
        rows.append((Raw(f'<span id="class-{c}">{esc(name)}</span>'), int((labels == c).sum()), None if np.isnan(recall[c]) else float(recall[c]),
                     _ids(shared[c], "shared"), _ids(special[c], "specialized"),
                     worst))
    body = table(["class", "samples", "final recall", "shared prototypes", "specialized prototypes",
                  "most often taken for"], rows, "sortable")
    beta = r.read("analysis/beta")
    frame = [{"class": names[c], "prototype": f"P{k}", "role": role, "train_step": r.train_step(b),
              "between": r.step_label(i), "beta": round(float(beta[i, k, c]), 5)}
             for c in range(len(names)) for role, ks in (("shared", shared[c]), ("specialized", special[c]))
             for k in ks for i, (_a, b) in enumerate(r.steps)]
    notes = []
    if frame:
        body += r.charts.add("class-beta", charts.class_betas(pd.DataFrame(frame), names), export="class_structure.png",
                             caption="Pick a class: lines are its shared (solid) and specialized (dashed) prototypes; "
                                     "β > 0 means a rise in the prototype's intensity raised the class's confidence.")
    else:
        notes.append("No class has a shared or specialized prototype under the thresholds used; lower "
                     "--shared-presence or --specialized-presence to see more.")
    return Section("classes", "Class structure",
                   "Which prototypes each class relies on: shared ones (in nearly all of the class's samples, pushing "
                   "its confidence up over training) and specialized ones (typical of one group of the class only), "
                   "and how their pull toward the class (β) developed.", body, notes)
