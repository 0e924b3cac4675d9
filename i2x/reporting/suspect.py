"""The suspect concept of the reliance study as the first screen shows it: its input mask, where that lies in words,
and the enlarged pictures of its strongest images with the mask drawn over them.

:func:`suspect_mask` is the one place that says which pixels are the suspect's; today it reads the gallery footprints
of ``reliance.json`` (what the paste test pastes), so a stored mask per concept can replace it in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from i2x.errors import UserError
from i2x.io.workdir import RELIANCE, assign_digest, unpack_mask
from i2x.reporting.images import HIGHLIGHT, png_uri, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import esc, img
from i2x.stages.reliance.masks import concept_mask

#: pictures of the suspect on the first screen, and their size on the page (pixels, enlarged by an integer factor)
SHOWN = 3
PICTURE = 168


@dataclass
class SuspectMask:
    """The suspect concept's pixels: ``mask`` ``[H, W]`` (input pixels) and the store rows of its strongest images of
    its class (``rows``), the gallery order of the study."""

    concept: dict[str, Any]
    mask: np.ndarray
    rows: np.ndarray


def reliance_result(r: ReportInputs) -> dict[str, Any] | None:
    """reliance.json when it belongs to this analysis (the reliance section says so when it does not), else None."""
    result = r.optional_json(RELIANCE)
    if result is None or "concepts" not in result or result.get("assign_digest") != assign_digest(
            r.read("analysis/assign")):
        return None
    return result


def suspect_cells(r: ReportInputs, suspect: SuspectMask, rows: np.ndarray) -> np.ndarray:
    """``[B, h, w]``: the grid cells of store rows ``rows`` that hold the suspect (its prototypes' cells there, or a
    cell over its mask's pixels)."""
    members = suspect.concept.get("members") or [suspect.concept["id"]]
    held = np.isin(r.read("analysis/assign")[rows], members)
    h, w = held.shape[1:]
    ys, xs = np.nonzero(suspect.mask)
    over = np.zeros((h, w), dtype=bool)
    over[ys * h // suspect.mask.shape[0], xs * w // suspect.mask.shape[1]] = True
    return held | over[None]


def suspect_mask(r: ReportInputs, result: dict[str, Any], shown: int = SHOWN) -> SuspectMask | None:
    """The suspect concept's input mask (the one the reliance study localised; for older studies the pixels in the
    footprints of at least half its gallery images of its class, or their union when no pixel is in half of them),
    and its ``shown`` strongest images of its class. None when the study found no shortcut or stored no footprint."""
    if not result.get("shortcut_found") or result.get("suspect") is None:
        return None
    concept = result["concepts"][result["suspect"]]
    size = tuple(int(v) for v in r.store.attrs.get("input_size") or r.input_size or ())
    gallery, prints = concept.get("gallery") or [], concept.get("footprints") or []
    if len(size) != 2 or not prints:
        return None
    labels = r.read("labels")
    own = [i for i, row in enumerate(gallery[: len(prints)]) if labels[row] == concept["class"]] or \
        list(range(len(prints)))
    try:  # the mask the reliance study localised
        mask = concept_mask(r.out_dir, int(concept["id"]))
    except UserError:  # a study from before the masks were kept: the footprints most of its images agree on
        masks = np.stack([unpack_mask(prints[i], size) for i in own])  # type: ignore[arg-type]
        agreeing = masks.mean(axis=0) >= 0.5
        mask = agreeing if agreeing.any() else masks.any(axis=0)
    return SuspectMask(concept, mask, np.asarray([gallery[i] for i in own[:shown]], dtype=np.int64))


def where_in_words(mask: np.ndarray) -> str:
    """Where a pixel mask lies, as a reader says it: "top-left corner, about 10x10 px (rows 2-11, columns 2-11 of
    28x28)"; the box is the mask's bounding box, placed by its centre in thirds of the image."""
    ys, xs = np.nonzero(mask)
    if not ys.size:
        return "nowhere (empty mask)"
    h, w = mask.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    row = ("top", "middle", "bottom")[min(2, int(3 * (y0 + y1 + 1) / 2 / h))]
    col = ("left", "centre", "right")[min(2, int(3 * (x0 + x1 + 1) / 2 / w))]
    place = ("centre" if (row, col) == ("middle", "centre") else
             f"{row}-{col} corner" if row != "middle" and col != "centre" else f"{row} {col}")
    return (f"{place}, about {x1 - x0 + 1}x{y1 - y0 + 1} px ({int(mask.sum())} px in rows {y0}-{y1}, columns "
            f"{x0}-{x1} of the {h}x{w} input)")


def mask_overlay(mask: np.ndarray, scale: int, alpha: int = 110) -> np.ndarray:
    """The mask enlarged ``scale`` times as an RGBA picture: translucent red inside, an opaque red outline, clear
    elsewhere (drawn over the image by the page, so its pixels are the mask's and nothing else)."""
    big = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    pad = np.pad(big, 1)
    edge = big & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    out = np.zeros((*big.shape, 4), dtype=np.uint8)
    out[..., :3] = HIGHLIGHT
    out[..., 3] = np.where(edge, 255, np.where(big, alpha, 0))
    return out


def suspect_pictures(r: ReportInputs, suspect: SuspectMask) -> str:
    """The suspect's strongest images enlarged (nearest neighbour), each with the mask drawn over it, captioned."""
    if r.images_unavailable:
        return f'<div class="muted">no picture: {esc(r.images_unavailable)}</div>'
    images = r.images(suspect.rows)
    scale = max(1, PICTURE // max(images.shape[-2:]))
    overlay = png_uri(mask_overlay(suspect.mask, scale))
    labels, index = r.read("labels")[suspect.rows], r.read("sample_index")[suspect.rows]
    shots = []
    for pic, y, i in zip(to_rgb(images), labels, index):
        big = pic.repeat(scale, axis=0).repeat(scale, axis=1)
        name = r.names[int(y)]
        shots.append(f'<figure class="suspect-shot">{img(png_uri(big), f"a {name} image, data set index {i}")}'
                     f'{img(overlay, "the suspect concept", "mask")}'
                     f'<figcaption>{esc(name)}, index {int(i)}</figcaption></figure>')
    return '<div class="suspect-shots">' + "".join(shots) + "</div>"
