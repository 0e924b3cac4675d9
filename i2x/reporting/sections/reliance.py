"""The report's reliance section: the shortcut suspects first, with what the interventions showed.

Reads ``DIR/reliance.json`` (written by :func:`i2x.reliance.reliance`); returns None when it is
absent, so the section is skipped. Put :func:`reliance_section` first in
:data:`i2x.report.sections.SECTIONS`: the most important finding must not be buried.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from i2x.io.workdir import RELIANCE
from i2x.stages.reliance import assign_digest
from i2x.reporting.images import HIGHLIGHT, jet, png_uri, resize, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, esc, img, table

TITLE = "Reliance: what the model depends on"
THUMB = 64


def cell_overlays(images: np.ndarray, masks: np.ndarray, size: int = THUMB, alpha: float = 0.45) -> np.ndarray:
    """Images ``[B, C, H, W]`` in [0, 1] with the grid cells of ``masks`` ``[B, h, w]`` tinted -> uint8
    ``[B, S, S, 3]``."""
    base = to_rgb(resize(images, size)).astype(np.float32)
    h, w = masks.shape[1:]
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    inside = masks[:, rows][:, :, cols][..., None]                       # nearest upsampling of the cells
    tinted = np.where(inside, (1 - alpha) * base + alpha * HIGHLIGHT.astype(np.float32), base)
    return (tinted + 0.5).astype(np.uint8)


def location_grid(locations: list[list[float]], size: int = THUMB) -> str:
    """A prototype's cell frequencies ``[h, w]`` (1 = its most frequent cell) as a small HTML grid in jet colours
    (built from the store alone, so it shows even when the input images are unavailable)."""
    grid = np.asarray(locations, dtype=np.float64)
    h, w = grid.shape
    cell = max(3, size // max(h, w))
    colours = jet(grid).reshape(-1, 3)
    spans = "".join(f'<span style="background:rgb({r},{g},{b})"></span>' for r, g, b in colours)
    return (f'<div role="img" aria-label="where it occurs" title="how often each grid cell holds this prototype '
            f'(red: most often)" style="display:grid;grid-template-columns:repeat({w},{cell}px);'
            f'grid-auto-rows:{cell}px;width:{w * cell}px">{spans}</div>')


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _facts(p: dict[str, Any], names: list[str]) -> str:
    d, t = p["deletion"] or {}, p["transplant"] or {}
    name = names[p["class"]]
    rows: list[tuple[str, Any]] = [
        ("suspicion", f"{p['suspicion']:.3g}"),
        ("class purity", f"{p['purity']:.0%} of the {p['samples']} samples holding it are {name} "
                         f"(lift over chance {p['lift']:.2f})"),
        ("where", f"concentration {p['concentration']:.2f} (1 = the same cells in every image), "
                  f"{p['cells_per_sample']:.1f} cells per image"),
    ]
    if d.get("effect") is not None:
        rows.append(("deleting it", f"{name}'s margin drops by {_num(d['effect'])} in {d['class_samples']} {name} "
                                    f"images; random cells: {_num(d['random'])} ± {_num(d['random_sd'], 2)}; "
                                    f"excess {_num(d['excess'])} (z {d['z']:.1f}); "
                                    f"per cell {_num(d['effect_per_cell'])} "
                                    f"vs {_num(d['random_per_cell'])}"))
    if t:
        rows.append(("pasting it", f"into {t['recipients']} held-out images of other classes: {_pct(t['flip_rate'])} "
                                   f"become {name} (random cells of the same area: {_pct(t['random_flip_rate'])}, "
                                   f"z {t['flip_z']:.1f}); {name}'s margin changes by {_num(t['logit_change'])} "
                                   f"(random: {_num(t['random_logit_change'])}, z {t['logit_z']:.1f})"))
    else:
        rows.append(("pasting it", "not measured: no donor of its class or no held-out image of another class"))
    return table(["", ""], rows, "facts")


def _card(r: ReportInputs, rank: int, p: dict[str, Any], assign: np.ndarray | None) -> str:
    names = r.names
    k = p["id"]
    pictures = f'<div class="muted">{esc(r.images_unavailable)}</div>' if r.images_unavailable else ""
    if assign is not None and not r.images_unavailable and p["gallery"]:
        rows = np.asarray(p["gallery"], dtype=np.int64)
        shots = cell_overlays(r.images(rows), assign[rows] == k)
        labels, index = r.read("labels")[rows], r.read("sample_index")[rows]
        pictures = '<div class="patches">' + "".join(
            img(png_uri(s), f"prototype {k} in a {names[y]} image", title=f"class {names[y]}, data set index {i}")
            for s, y, i in zip(shots, labels, index)) + "</div>"
    heat = location_grid(p["locations"])
    title = f"#{rank} prototype {k} " + str(chip(f"→ {names[p['class']]}", "warn" if rank == 1 else ""))
    return (f'<div class="ucard" id="reliance-{k}"><h3>{title}</h3><div class="row">'
            f'<div><div class="muted">its cells (tinted) in typical images</div>{pictures}'
            f'<div class="muted">where it occurs</div>{heat}</div>'
            f'<div style="flex:1;min-width:320px">{_facts(p, names)}</div></div></div>')


def _ranking_table(result: dict[str, Any], names: list[str]) -> str:
    protos = {p["id"]: p for p in result["prototypes"]}
    rows = []
    for rank, k in enumerate(result["ranking"], start=1):
        p = protos[k]
        d, t = p["deletion"] or {}, p["transplant"] or {}
        rows.append((rank, k, names[p["class"]], p["suspicion"], _pct(p["purity"]), p["concentration"],
                     _num(d.get("excess")), None if d.get("z") is None else round(d["z"], 1),
                     f"{_pct(t.get('flip_rate'))} vs {_pct(t.get('random_flip_rate'))}" if t else None))
    return table(["rank", "prototype", "class", "suspicion", "purity", "concentration", "deletion excess", "z",
                  "transplant flips vs random"], rows)


def reliance_section(r: ReportInputs) -> Section | None:
    """The shortcut suspects (gallery, location map, intervention results), the verdict and the full ranking."""
    result = r.optional_json(RELIANCE)
    if result is None:
        return None
    intro = ("Which prototypes the final model actually depends on, tested by intervention: deleting a prototype at "
             f"layer {result['layer']} and pasting its input footprint into other classes' images, each against "
             "random cells of the same area. Prototypes are ranked by shortcut suspicion: class-tied, in fixed "
             "places, and relied on.")
    assign = r.read("analysis/assign")
    if result.get("assign_digest") != assign_digest(assign):
        return Section("reliance", TITLE, intro, "", [
            f"{RELIANCE} was computed for another analysis of this store (the prototypes changed since); "
            f"rerun `i2x reliance {r.out_dir}`."])
    names = r.names
    protos = {p["id"]: p for p in result["prototypes"]}
    top = [protos[k] for k in result["ranking"][: result["config"]["top"]]]
    mark = chip("shortcut suspected", "warn") if result["shortcut_found"] else chip("no shortcut stands out")
    verdict = f'<p class="note"><b>{mark} {esc(result["verdict"])}</b></p>'
    cards = "".join(_card(r, i, p, assign) for i, p in enumerate(top, start=1))
    method = table(["", ""], [
        ("suspicion", result["formula"]),
        ("deletion fill", result["fill"]),
        ("transplant footprint", result["footprint"]),
        ("recipients", f"held-out split {result['held_out_split']}"),
        ("settings", ", ".join(f"{k} {v}" for k, v in result["config"].items())),
        ("checkpoint", f"{result['checkpoint']} ({result['seconds']:.1f} s)"),
    ], "facts")
    body = (verdict + cards + f"<details><summary>All {len(protos)} prototypes, ranked</summary>"
            f"{_ranking_table(result, names)}</details><details><summary>How this was measured</summary>{method}"
            "</details>")
    return Section("reliance", TITLE, intro, Raw(body))
