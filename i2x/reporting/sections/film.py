"""The CAM film strips: maps of chosen samples over the checkpoints, for every stored CAM method (a switch picks one),
scaled per frame or per strip (a second switch), and for a misclassified sample also the maps of the class the
model answered. The samples and those maps come from the store (:mod:`i2x.stages.film`, run by ``i2x report``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from i2x.reporting.images import jet, map_tiles, png_uri, resize, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, class_ref, esc, img, scrub_paths
from i2x.reporting.suspect import reliance_result, suspect_cells, suspect_mask

SCALES = {"frame": "each frame to its own peak", "strip": "one scale per strip (weak maps look weak)"}


def _switches(methods: list[str]) -> str:
    """The method and scale drop-downs (the page's script shows the frames whose data-method/data-scale match)."""
    options = "".join(f'<option value="{esc(m)}">{esc(m)}</option>' for m in methods)
    scales = "".join(f'<option value="{k}">{esc(v)}</option>' for k, v in SCALES.items())
    return (f'<div class="switch">method <select class="switch-select" data-attr="method" aria-label="CAM method">'
            f'{options}</select> scale <select class="switch-select" data-attr="scale" aria-label="colour scale">'
            f"{scales}</select></div>")


def _frames(tiles: dict[str, dict[str, np.ndarray]], i: int, j: int, alt_text: str) -> str:
    """Every method's and scale's tile of frame (checkpoint column i, strip j), only one of them shown at a time."""
    return "".join(f'<img data-method="{esc(m)}" data-scale="{scale}" src="{png_uri(t[i, j])}" alt="{esc(m)} {esc(alt_text)}">'
                   for m, per_scale in tiles.items() for scale, t in per_scale.items())


def film_strips(r: ReportInputs) -> Section:
    """The strips of the samples :func:`_film_rows` picks, over evenly spaced checkpoints, with their switches."""
    explains = "the true class" if r.store.config.get("target", "true") == "true" else "the predicted class"
    intro = (f"CAM maps at every checkpoint, side by side, for typical and hard samples of each class and the most "
             f"confused ones: where the model looked as it learned. Stored maps explain {explains}; a misclassified "
             "sample gets a second strip for the class the model answered at the end (the evidence for the mistake). "
             "The switches pick the CAM method and whether each frame is scaled to its own peak or the strip shares "
             "one scale; captions give the prediction, p(the strip's class) and the raw peak, which is what I2X tracks.")
    if r.images_unavailable:
        return Section("films", "CAM film strips", intro, "", [f"Input images unavailable: {r.images_unavailable}"])
    film = r.store.attrs.get("film")
    if film is None or not r.store.has("film/rows"):
        return Section("films", "CAM film strips", intro, "",
                       [f"Not prepared: `i2x report {r.shown_dir}` picks the samples and computes their maps."])
    rows, why, cols = r.read("film/rows"), film["why"], r.read("film/columns")
    away = _away_from_suspect(r, rows)
    why = [w + ("; its final map peaks away from the shortcut" if a else "") for w, a in zip(why, away)]
    methods = [r.method] + [m for m in r.store.methods if m != r.method]
    order = np.argsort(rows)
    back = np.argsort(order)
    cams = {m: r.store.cam(m).get_orthogonal_selection((cols, rows[order]))[:, back] for m in methods}
    probs = r.store.array("probs").get_orthogonal_selection((cols, rows[order]))[:, back]
    images = r.images(rows)
    labels, index = r.read("labels")[rows], r.read("sample_index")[rows]
    usable = r.read("finite")[cols].astype(bool)
    pred = np.nan_to_num(probs).argmax(axis=2)
    final = np.zeros(rows.size, dtype=np.int64)
    wrong = np.asarray(film["answered"], dtype=np.int64)
    final[wrong] = film["answer_class"]
    notes = [] if not away.any() else [
        f"{int(away.sum())} of these strips show an image holding the shortcut the reliance study found, of its class, "
        f"whose final {r.method} map peaks away from it: the map does not show what the model relies on there (the "
        "paste test does; see the verdict)."]
    answered = {m: r.read(f"film/answer/{m}") for m in methods} if wrong.size and not film["unavailable"] else None
    if film["unavailable"]:
        notes.append(f"Maps for the class the model answered are unavailable: {scrub_paths(film['unavailable'], r.out_dir)}")
    strips = [(j, cams, labels[j], None) for j in range(rows.size)]
    if answered:
        extra = {int(j): n for n, j in enumerate(wrong)}
        strips = [s for j in range(rows.size) for s in
                  [(j, cams, labels[j], None)] + ([(j, answered, final[j], extra[j])] if j in extra else [])]
    head = "<th></th><th>input</th>" + "".join(
        f'<th title="{esc(r.checkpoints[t]["name"])}">step {r.train_step(t)}</th>' for t in cols)
    facts = _Facts(labels, index, why, pred, probs, usable, cols)
    body = [_strip_row(r, facts, j, maps, int(cls), col) for j, maps, cls, col in strips]
    inputs = to_rgb(resize(images, 64))
    backgrounds = "".join(f"#films .film-in-{j} {{ background-image:url({png_uri(inputs[j])}); }}"
                          for j in range(rows.size))
    legend = png_uri(jet(np.tile(np.linspace(0, 1, 140), (10, 1))))
    if cols.size < len(r.checkpoints):
        notes.append(f"{len(r.checkpoints)} checkpoints; {cols.size} evenly spaced ones shown.")
    scale = (f'<p class="muted">low {img(legend, "colour scale", "legend-bar")} high; the cell grid is '
             f"{r.store.grid[0]} x {r.store.grid[1]}.</p>")
    return Section("films", "CAM film strips", intro,
                   f"<style>{backgrounds}</style>" + _switches(methods) + scale
                   + f'<div style="overflow-x:auto"><table class="film"><thead><tr>{head}</tr></thead>'
                   f'<tbody>{"".join(body)}</tbody></table></div>', notes)


def _away_from_suspect(r: ReportInputs, rows: np.ndarray) -> np.ndarray:
    """Per shown sample: it holds the reliance study's shortcut, is of its class, and its final stored map peaks at a
    grid cell away from it (a map that glows elsewhere while the model relies on the shortcut)."""
    result = reliance_result(r)
    suspect = suspect_mask(r, result) if result else None
    if suspect is None or not rows.size:
        return np.zeros(rows.size, dtype=bool)
    members = suspect.concept.get("members") or [suspect.concept["id"]]
    holds = np.isin(r.read("analysis/assign")[rows], members).reshape(rows.size, -1).any(axis=1)
    cam = np.nan_to_num(r.final_cam[rows], nan=-np.inf).reshape(rows.size, -1)
    on = suspect_cells(r, suspect, rows).reshape(rows.size, -1)[np.arange(rows.size), cam.argmax(axis=1)]
    return holds & (r.read("labels")[rows] == suspect.concept["class"]) & ~on


@dataclass
class _Facts:
    """What every strip of the table reads: per shown sample its label, data set index and why it was picked; per
    checkpoint column and sample the prediction and probabilities; which columns are usable and their checkpoints."""

    labels: np.ndarray
    index: np.ndarray
    why: list[str]
    pred: np.ndarray
    probs: np.ndarray
    usable: np.ndarray
    cols: np.ndarray


def _strip_row(r: ReportInputs, f: _Facts, j: int, maps: dict[str, np.ndarray], cls: int, col: int | None) -> str:
    """One table row: sample ``j``'s maps of class ``cls`` over the checkpoints; ``col`` is its column in ``maps`` when
    they are the answer strips (None: the stored maps, column ``j``)."""
    m_maps = {m: a[:, [j if col is None else col]] for m, a in maps.items()}
    tiles = {m: {s: map_tiles(a, shared=(s == "strip")) for s in SCALES} for m, a in m_maps.items()}
    cells = []
    for i, t in enumerate(f.cols):
        if not f.usable[i]:
            cap = '<div class="cap wrong">diverged</div>'
        else:
            miss = f.pred[i, j] != f.labels[j]
            peaks = "".join(f'<div class="cap" data-method="{esc(m)}">peak {np.nan_to_num(a[i, 0]).max():.2g}</div>'
                            for m, a in m_maps.items())
            cap = (f'<div class="cap{" wrong" if miss else ""}">→ {esc(r.names[f.pred[i, j]])} · '
                   f"p {f.probs[i, j, cls]:.2f}</div>{peaks}")
        frames = _frames(tiles, i, 0, "map at " + r.checkpoints[t]["name"])
        cells.append(f'<td><div class="frame film-in-{j}">{frames}</div>{cap}</td>')
    if col is None:
        who = (f'{class_ref(int(f.labels[j]), r.names[f.labels[j]])}<br>{esc(f.why[j])}<br>'
               f'<span class="muted">data set index {f.index[j]}</span>')
    else:
        who = (f'evidence for its answer {class_ref(cls, r.names[cls], "uncertain")}<br>'
               '<span class="muted">same sample, maps of the class it predicts at the end</span>')
    picture = f'<td><div class="frame film-in-{j}" role="img" aria-label="input image"></div></td>'
    return f'<tr><td class="who">{who}</td>' + picture + "".join(cells) + "</tr>"
