"""Report section of the minimal evidence study (``i2x evidence``), skipped when it has not run.

Per sample at the last explained checkpoint: the image, the stored CAM, the minimal mask and the
evidence (the image where the mask keeps it, the study's fill elsewhere); then the mean evidence area per
class over the explained checkpoints (does the model need less of the image as it learns).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from i2x.io.workdir import EVIDENCE
from i2x.reporting.images import overlays, png_uri, resize, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, esc, img, table
from i2x.stages.evidence.study import masks_line

MAX_EVIDENCE_ROWS = 24
PICTURE = 64


def _area_frame(e: dict) -> pd.DataFrame:
    """Mean evidence area and decision-kept share per class (and over all samples) per explained checkpoint."""
    rows = []
    for c in e["per_checkpoint"]:
        step = c["checkpoint"]["step"] if c["checkpoint"].get("step") is not None else c["checkpoint"]["index"]
        rows.append({"train_step": step, "checkpoint": c["checkpoint"]["name"], "class": "all samples",
                     "area": round(c["area"]["mean"], 4), "kept": c["kept"], "n": c["n"]})
        rows += [{"train_step": step, "checkpoint": c["checkpoint"]["name"], "class": name,
                  "area": round(v["area"], 4), "kept": v["kept"], "n": v["n"]} for name, v in c["per_class"].items()]
    return pd.DataFrame(rows)


def _area(c: dict) -> str:
    """The mean area of the masks that are neither empty nor full (named in the notes), else a dash."""
    area = c.get("area_informative", c["area"])
    if not area:
        return "–"
    degenerate = c.get("empty", 0) + c.get("full", 0)
    return f"{area['mean']:.3f}" + (f" ({degenerate} empty or full left out)" if degenerate else "")


def area_chart(frame: pd.DataFrame) -> alt.Chart:
    """Mean evidence area over training, one line per class and a thick one over all samples."""
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("train_step:Q", title="training step"),
        y=alt.Y("area:Q", title="mean minimal evidence area (share of the image)"),
        color=alt.Color("class:N", title="class"),
        strokeWidth=alt.condition("datum['class'] == 'all samples'", alt.value(3.5), alt.value(1.2)),
        tooltip=["checkpoint:N", "class:N", alt.Tooltip("area:Q", format=".3f"), alt.Tooltip("kept:Q", format=".0%"),
                 "n:Q"],
    ).properties(width=420, height=220)


def _fill(images: np.ndarray, kind: str) -> np.ndarray:
    """The fill of removed pixels for display images ``[n, C, H, W]`` in [0, 1], ``[n, C, 1, 1]``: per image the
    median of its outermost pixels (``border``), black, or (``mean``) the shown images' mean colour."""
    if kind == "border":
        ring = np.concatenate([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], -1)
        return np.sort(ring, axis=-1)[..., (ring.shape[-1] - 1) // 2][..., None, None]  # the lower median, as torch's
    if kind == "mean":
        return np.broadcast_to(images.mean(axis=(0, 2, 3), keepdims=True), (images.shape[0], images.shape[1], 1, 1))
    return np.zeros((*images.shape[:2], 1, 1), dtype=images.dtype)


def _pictures(r: ReportInputs, e: dict) -> str:
    """Table rows: image | CAM | mask | evidence, per sample, at the last explained checkpoint."""
    u = len(e["checkpoints"]) - 1
    t = int(e["checkpoints"][u]["index"])
    rows = np.asarray(e["samples"]["rows"], dtype=np.int64)[:MAX_EVIDENCE_ROWS]
    masks = r.store.array("evidence/masks")[u, :rows.size].astype(np.float32)
    images = r.images(rows)
    order = np.argsort(rows)
    cam = np.asarray(r.store.cam(r.method).get_orthogonal_selection((t, rows[order])))[np.argsort(order)]
    shown = to_rgb(resize(images, PICTURE))
    cams = overlays(images, cam[None], size=PICTURE)[0]
    mask_pics = to_rgb(resize(masks[:, None], PICTURE))
    m = masks[:, None]
    evidence_pics = to_rgb(resize(images * m + (1 - m) * _fill(images, e["settings"].get("fill", "black")), PICTURE))
    area, kept = r.read("evidence/area")[u], r.read("evidence/kept")[u].astype(bool)
    target, names = r.read("evidence/target")[u], r.names
    body = []
    for j, row in enumerate(rows):
        who = (f'<td class="who"><b>{esc(names[e["samples"]["labels"][j]])}</b><br>{esc(e["samples"]["why"][j])}<br>'
               f'<span class="muted">data set index {e["samples"]["sample_index"][j]}</span></td>')
        pics = "".join(f"<td>{img(png_uri(p[j]), f'{what}, store row {row}')}</td>"
                       for p, what in ((shown, "image"), (cams, "CAM"), (mask_pics, "minimal mask"),
                                       (evidence_pics, "evidence")))
        cap = (f'<td><div class="cap{"" if kept[j] else " wrong"}">→ {esc(names[target[j]])} '
               f'{"kept" if kept[j] else "lost"}</div><div class="cap">area {area[j]:.0%}</div></td>')
        body.append(f"<tr>{who}{pics}{cap}</tr>")
    head = "<th></th><th>image</th><th>CAM</th><th>minimal mask</th><th>evidence</th><th>decision</th>"
    return (f'<h3>At {esc(e["checkpoints"][u]["name"])}</h3><div style="overflow-x:auto"><table class="film">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def evidence_section(r: ReportInputs) -> Section | None:
    """The minimal evidence study of ``evidence.json`` and ``store.zarr/evidence``; None when it has not run."""
    e = r.optional_json(EVIDENCE)
    if e is None or not r.store.has("evidence/masks"):
        return None
    st = e["settings"]
    intro = ("The smallest part of each image that, shown alone on the image's own background, keeps the model's "
             "decision and its activations at the target layer (Med-CAM minimal evidence), next to the CAM of the "
             "same checkpoint.")
    rows = [(c["checkpoint"]["name"], c["n"], f"{c['kept']:.0%}", _area(c),
             f"{c['robust']['mean']:.2f}", ", ".join(f"{m} {v['mean']:.2f}" for m, v in c["iou"].items() if v))
            for c in e["per_checkpoint"]]
    parts = [f'<p class="muted">{esc(st["generator"])} generator, {esc(st["iterations"])} Adam steps (lr '
             f'{esc(st["lr"])}), threshold {esc(st["threshold"])}, weights matching:minimality:robustness '
             f'{esc(":".join(f"{w:g}" for w in st["weights"]))}, fill {esc(st.get("fill", "black"))}, noise width '
             f'{esc(st["noise"])}, seed {esc(st["seed"])}'
             + (f', {esc(st["precision_used"])} passes' if "precision_used" in st else "")
             + f'; samples: {esc(st["samples"])}.</p>',
             table(["checkpoint", "masks", "decision kept", "mean area", "robust to noise infill",
                    "IoU with CAM at equal area"], rows)]
    if len(e["per_checkpoint"]) > 1:
        parts.append(r.charts.add("evidence-area", area_chart(_area_frame(e)), export="evidence_area.png",
                                  caption="Mean share of the image the minimal evidence needs, per class, at each "
                                          "explained checkpoint."))
    notes = [f"{c['checkpoint']['name']}: {masks_line(c)}." for c in e["per_checkpoint"]
             if c.get("empty") or c.get("full")]
    if r.images_unavailable:
        notes.append(f"Input images unavailable: {r.images_unavailable}")
    else:
        parts.append(_pictures(r, e))
        if len(e["samples"]["rows"]) > MAX_EVIDENCE_ROWS:
            notes.append(f"The first {MAX_EVIDENCE_ROWS} of {len(e['samples']['rows'])} samples are shown.")
    return Section("evidence", "Minimal evidence", intro, "".join(parts), notes)
