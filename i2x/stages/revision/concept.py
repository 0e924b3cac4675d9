"""What the analysis directory says about a suspect concept's artefact, without annotations: its input mask and the
training samples that carry it. The one place that turns reliance.json (and the store) into an artefact mask.

The mask is the union of the concept's agreeing gallery footprints (reliance.json's ``footprints``: the input
pixels its cells respond to in each gallery image): the pixels that at least ``MASK_AGREEMENT`` of them hold, so a
footprint's stray pixels elsewhere drop out while the pixels the donors share (a tag at a fixed place) stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from i2x.errors import UserError
from i2x.io.location import as_path
from i2x.io.workdir import RELIANCE, read_json, unpack_mask
from i2x.stages.reliance import masks
from i2x.stages.revision.config import MASK_AGREEMENT


def reliance_concept(out_dir: str | Path, concept: int | None) -> dict[str, Any]:
    """reliance.json's row of ``concept`` (default: the lead of its ranking); a UserError when it is missing."""
    path = as_path(out_dir) / RELIANCE
    if not path.is_file():
        raise UserError(f"{path}: no reliance study; run `i2x reliance {out_dir}` first")
    result = read_json(path, "i2x reliance")
    concepts = {int(c["id"]): c for c in result.get("concepts", [])}
    chosen = result["ranking"][0] if concept is None and result.get("ranking") else concept
    if chosen not in concepts:
        raise UserError(f"--concept {concept}: reliance.json has concepts {', '.join(map(str, sorted(concepts)))}; "
                        "see its ranking or the report's reliance section")
    return concepts[chosen]


def concept_mask(out_dir: str | Path, concept: int | None, size: tuple[int, int]) -> np.ndarray:
    """Boolean [H, W]: the concept's mask the reliance study localised (:func:`i2x.stages.reliance.masks.concept_mask`,
    kept for its suspects), else the pixels that at least ``MASK_AGREEMENT`` of its gallery footprints hold."""
    row = reliance_concept(out_dir, concept)
    try:
        return masks.concept_mask(out_dir, row["id"])
    except UserError:  # not a suspect of the study, or a study from before the masks were kept
        pass
    footprints = [unpack_mask(bits, size) for bits in row.get("footprints", [])]
    if not footprints:
        raise UserError(f"{as_path(out_dir) / RELIANCE}: concept {row['id']} has no footprints; rerun `i2x reliance "
                        f"{out_dir}` with this version of i2x")
    mask = np.mean(footprints, axis=0) >= MASK_AGREEMENT
    if not mask.any():
        raise UserError(f"concept {row['id']}: its footprints share no pixel (they wander), so it has no artefact mask "
                        "to revise; give --artefact-mask FILE or choose another --concept")
    return mask
