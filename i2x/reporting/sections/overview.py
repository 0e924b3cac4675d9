"""The overview section: what was analysed, accuracy over checkpoints, the confused pairs and the settings."""

from __future__ import annotations

import numpy as np

from i2x.reporting import charts
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, class_ref, esc, scrub_paths, shown_path, table
from i2x.reporting.sections.common import THRESHOLD_HELP, _groups_fact


def overview(r: ReportInputs) -> Section:
    s, names, ckpts = r.summary, r.names, r.checkpoints
    km = s["kmeans"]
    h, w = r.store.grid
    size = r.input_size
    cell = f", one cell ≈ {size[0] / h:.3g} x {size[1] / w:.3g} px of the input" if size else ""
    facts = [
        ("Data", f"{shown_path(s['data'], r.out_dir)} (split {s['split']}, {s['n_samples']} samples, {len(names)} classes)"),
        ("Input size", f"{size[0]} x {size[1]} px" if size else "the data set's default"),
        ("Model", shown_path(s["model"], r.out_dir)),
        ("Target layer and grid", f"{s['layer']}: {h} x {w}{cell}"),
        ("CAM target", f"{s['target']} class; maps stored: {', '.join(s['methods_stored'])}; analysed: {s['method']}"),
        ("Prototypes", f"K = {s['k']} (asked {s['k_requested']}), PCA to {s['pca_dim']} dims "
                       f"({s['pca_explained_variance']:.1%} of the variance), FAISS k-means on {km['fit_vectors']} "
                       f"vectors, max {km['max_points_per_centroid']} points per centroid, seed {km['seed']}"),
        ("Checkpoints", f"{len(ckpts)} ({len(s['diverged'])} diverged), {len(s['steps'])} steps between usable ones"),
        ("Confidence groups", _groups_fact(s)),
    ]
    parts = []
    if s["warnings"] or s["diverged"]:
        items = [chip("diverged", "warn") + esc(f" {name}: its weights hold NaN/Inf; left out of every step")
                 for name in s["diverged"]] + [chip("warning", "warn") + " " + esc(scrub_paths(w, r.out_dir))
                                               for w in s["warnings"]]
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    steps = [r.train_step(t) for t in range(len(ckpts))]
    curves = charts.accuracy_loss(steps, [c["name"] for c in ckpts], s["accuracy"], s["loss"])
    matrix = charts.confusion_heatmap(np.asarray(s["final_confusion"]), names, f"Confusion at {ckpts[r.final]['name']}")
    parts.append('<div class="row">' + r.charts.add("accuracy", curves, export="accuracy_loss.png")
                 + r.charts.add("confusion", matrix, export="confusion.png") + "</div>")
    diverged = set(s["diverged"])
    rows = [(i, c["name"], steps[i], s["accuracy"][i], s["loss"][i],
             chip("diverged", "warn") if c["name"] in diverged else "ok") for i, c in enumerate(ckpts)]
    ck_table = table(["#", "checkpoint", "training step", "accuracy", "loss", "status"], rows, "sortable")
    parts.append(f"<details{' open' if len(rows) <= 12 else ''}><summary>Checkpoints</summary>{ck_table}</details>")
    pairs = [(Raw(f"{class_ref(a, names[a])} ↔ {class_ref(b, names[b])}"), p["count"])
             for p in s["top_confused_pairs"] for a, b in [p["classes"]]]
    parts.append("<h3>Most confused pairs (final checkpoint)</h3>" + (
        table(["pair", "confusions (both ways)"], pairs) if pairs
        else '<p class="muted">none: no sample is misclassified</p>'))
    thresholds = [(k, v, THRESHOLD_HELP.get(k, "")) for k, v in s["thresholds"].items()]
    parts.append("<h3>Settings</h3>" + table(None, facts, "facts"))
    parts.append("<h3>Thresholds used</h3>" + table(["setting", "value", "meaning"], thresholds))
    return Section("overview", "Overview", "How well the model did and what was analysed: accuracy and loss along "
                   "training, the final confusions, the checkpoints, then the data, model, layer and every threshold used.",
                   "".join(parts))
