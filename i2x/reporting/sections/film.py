"""The CAM film strips: maps of chosen samples over the checkpoints."""

from __future__ import annotations

import numpy as np

from i2x.reporting.images import jet, overlays, png_uri, resize, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, class_ref, esc, img
from i2x.reporting.sections.common import MAX_FILM_COLUMNS, _even


def film_strips(r: ReportInputs) -> Section:
    intro = (f"{r.method} maps at every checkpoint, side by side, for typical and hard samples of each class and the "
             "most confused ones: where the model looked as it learned. Each frame is scaled to its own range for "
             "display; its caption gives the prediction, p(true class) and the raw peak, which is what I2X tracks.")
    if r.images_unavailable:
        return Section("films", "CAM film strips", intro, "", [f"Input images unavailable: {r.images_unavailable}"])
    rows, why = _film_rows(r)
    n_checkpoints = len(r.checkpoints)
    cols = _even(n_checkpoints, MAX_FILM_COLUMNS)
    order = np.argsort(rows)
    sorted_rows = rows[order]
    cam = r.store.cam(r.method).get_orthogonal_selection((cols, sorted_rows))
    probs = r.store.array("probs").get_orthogonal_selection((cols, sorted_rows))
    back = np.argsort(order)
    cam, probs = cam[:, back], probs[:, back]
    images = r.images(rows)
    frames = overlays(images, cam, size=64)
    inputs = to_rgb(resize(images, 64))
    labels, index = r.read("labels")[rows], r.read("sample_index")[rows]
    usable = r.read("finite")[cols].astype(bool)
    frames[~usable] = 200  # diverged checkpoints: grey frames
    peaks = np.where(usable[:, None], np.nan_to_num(cam).max(axis=(2, 3)), np.nan)
    pred = np.nan_to_num(probs).argmax(axis=2)
    p_true = probs[:, np.arange(rows.size), labels]
    head = "<th></th><th>input</th>" + "".join(
        f'<th title="{esc(r.checkpoints[t]["name"])}">step {r.train_step(t)}</th>' for t in cols)
    body = []
    for j in range(rows.size):  # one table row per shown sample (a handful)
        cells = []
        for i, t in enumerate(cols):
            wrong = pred[i, j] != labels[j]
            cap = (f'<div class="cap{" wrong" if wrong else ""}">→ {esc(r.names[pred[i, j]])} · '
                   f'p {p_true[i, j]:.2f}</div><div class="cap">peak {peaks[i, j]:.2g}</div>' if usable[i]
                   else '<div class="cap wrong">diverged</div>')
            alt_text = "CAM at " + r.checkpoints[t]["name"]
            cells.append(f"<td>{img(png_uri(frames[i, j]), alt_text)}{cap}</td>")
        who = (f'<td class="who">{class_ref(int(labels[j]), r.names[labels[j]])}<br>{esc(why[j])}<br>'
               f'<span class="muted">data set index {index[j]}</span></td>')
        picture = f"<td>{img(png_uri(inputs[j]), 'input image')}</td>"
        body.append("<tr>" + who + picture + "".join(cells) + "</tr>")
    legend = png_uri(jet(np.tile(np.linspace(0, 1, 140), (10, 1))))
    notes = [f"{n_checkpoints} checkpoints; {cols.size} evenly spaced ones shown."] if cols.size < n_checkpoints else []
    scale = (f'<p class="muted">low {img(legend, "colour scale", "legend-bar")} high '
             f"(per frame); the cell grid is {r.store.grid[0]} x {r.store.grid[1]}.</p>")
    return Section("films", "CAM film strips", intro,
                   scale + f'<div style="overflow-x:auto"><table class="film"><thead><tr>{head}</tr></thead>'
                   f'<tbody>{"".join(body)}</tbody></table></div>', notes)


def _film_rows(r: ReportInputs, per_class: int = 2, confused: int = 6) -> tuple[np.ndarray, list[str]]:
    """Store rows for the film strips with why each was picked: per class the most confident and the most variable
    sample, then the samples with the lowest final p(true class)."""
    labels = r.read("labels")
    conf_, var_ = r.read("analysis/confidence"), r.read("analysis/variability")
    m = len(r.names)
    classes = np.arange(min(m, 20))
    picks: list[tuple[int, int, str]] = []  # (sort key, row, why)
    for rank, (key, why) in enumerate(((-conf_, "most confident"), (-var_, "most variable"))[:per_class]):
        order = np.lexsort((key, labels))
        pos = np.searchsorted(labels[order], classes)
        has = (pos < order.size) & (labels[order][np.minimum(pos, order.size - 1)] == classes)
        picks += [(int(c) * per_class + rank, int(order[p]), why) for c, p in zip(classes[has], pos[has])]
    final = np.asarray(r.store.array("probs")[r.final])
    p_final = final[np.arange(labels.size), labels]
    wrong = final.argmax(axis=1) != labels
    for i in np.argsort(p_final, kind="stable")[:confused]:
        picks.append((m * per_class, int(i), "misclassified" if wrong[i] else "least confident at the end"))
    seen: dict[int, str] = {}
    for _key, i, why in sorted(picks, key=lambda p: p[0]):
        seen.setdefault(i, why)
    return np.array(list(seen), dtype=np.int64), list(seen.values())
