"""Where a concept lies in the input: its footprint in every analysed sample that holds it (a mask per sample) and
one mask per concept, the pixels that most of its class's footprints agree on; written to ``reliance_masks.npz``
and read back by :func:`concept_mask` and :func:`sample_masks`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from i2x.io.location import as_path
from i2x.io.workdir import RELIANCE_MASKS, write_bytes
from i2x.errors import UserError

#: the footprints of cell masks [B, h, w] in the images of store rows [B]: [B, H, W] (bool)
FootprintsOf = Callable[[np.ndarray, torch.Tensor], torch.Tensor]

MASK_RULE = ("a concept's mask: the pixels held by at least mask_agreement of its footprints in the analysed samples "
             "of its class that hold it (the same pixels in most images, as a tag is; class evidence that wanders "
             "drops out); a sample's mask: the concept's footprint in that sample within the concept's mask")


def footprints_of(unit_assign: np.ndarray, rows: np.ndarray, u: int, footprints: FootprintsOf,
                  batch_size: int) -> np.ndarray:
    """The footprints [n, H, W] (bool) of unit u in the analysed samples at store ``rows``."""
    out = [footprints(rows[lo:lo + batch_size], torch.from_numpy(unit_assign[rows[lo:lo + batch_size]] == u)).numpy()
           for lo in range(0, len(rows), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 1, 1), dtype=bool)


def agreeing(masks: np.ndarray, share: float) -> np.ndarray:
    """The pixels [H, W] that at least ``share`` of the masks [n, H, W] hold (none for no masks)."""
    if not len(masks):
        return np.zeros(masks.shape[1:], dtype=bool)
    return masks.mean(axis=0) >= share


def unit_masks(unit_assign: np.ndarray, labels: np.ndarray, u: int, c: int, footprints: FootprintsOf,
               share: float, batch_size: int) -> dict[str, np.ndarray]:
    """Unit u's masks: ``rows`` (the store rows holding it), ``samples`` [n, H, W] (its footprint in each, within
    the concept's mask) and ``concept`` [H, W] (the pixels at least ``share`` of its class-c footprints hold)."""
    rows = np.flatnonzero((unit_assign == u).reshape(len(unit_assign), -1).any(axis=1))
    raw = footprints_of(unit_assign, rows, u, footprints, batch_size)
    concept = agreeing(raw[labels[rows] == c], share)
    return {"rows": rows, "samples": raw & concept, "concept": concept}


def write_masks(out_dir: str | Path, masks: dict[int, dict[str, np.ndarray]],
                over_training: dict[int, np.ndarray] | None = None) -> None:
    """``reliance_masks.npz``: per concept id, ``concept_<id>`` [H, W], ``rows_<id>`` [n] and ``samples_<id>``
    [n, H, W] (bit-packed over pixels); per checkpoint index t, ``lead_at_<t>`` [H, W], the lead's mask there."""
    arrays: dict[str, np.ndarray] = {}
    for k, m in masks.items():
        arrays[f"concept_{k}"] = m["concept"]
        arrays[f"rows_{k}"] = m["rows"]
        arrays[f"samples_{k}"] = np.packbits(m["samples"].reshape(len(m["samples"]), -1), axis=1)
    for t, mask in (over_training or {}).items():
        arrays[f"lead_at_{t}"] = mask
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(as_path(out_dir) / RELIANCE_MASKS, buffer.getvalue())


def _load(out_dir: str | Path) -> dict[str, np.ndarray]:
    path = as_path(out_dir) / RELIANCE_MASKS
    if not path.exists():
        raise UserError(f"{path}: no concept masks; run `i2x reliance {out_dir}` first")
    with path.open("rb") as f, np.load(f) as z:
        return {k: z[k] for k in z.files}


def mask_concepts(out_dir: str | Path) -> list[int]:
    """The concept ids ``reliance_masks.npz`` holds masks of (the suspects of the reliance study)."""
    return sorted(int(k.split("_", 1)[1]) for k in _load(out_dir) if k.startswith("concept_"))


def concept_mask(out_dir: str | Path, concept: int) -> np.ndarray:
    """The mask [H, W] (bool, input pixels) of ``concept`` from the reliance study in ``out_dir``."""
    arrays = _load(out_dir)
    if f"concept_{concept}" not in arrays:
        raise UserError(f"concept {concept}: reliance_masks.npz in {out_dir} holds masks of concepts "
                        f"{', '.join(str(k) for k in mask_concepts(out_dir)) or 'none'}")
    return arrays[f"concept_{concept}"].astype(bool)


def sample_masks(out_dir: str | Path, concept: int) -> tuple[np.ndarray, np.ndarray]:
    """The store rows [n] holding ``concept`` and its mask in each [n, H, W] (bool)."""
    arrays = _load(out_dir)
    shape = concept_mask(out_dir, concept).shape
    rows = arrays[f"rows_{concept}"]
    bits = np.unpackbits(arrays[f"samples_{concept}"], axis=1, count=shape[0] * shape[1])
    return rows, bits.reshape(len(rows), *shape).astype(bool)
