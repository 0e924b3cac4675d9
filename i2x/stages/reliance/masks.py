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

#: the images [B, C, H, W] of store rows [B]
ImagesOf = Callable[[np.ndarray], torch.Tensor]
#: the footprints [B, H, W] (bool) of cell masks [B, h, w] in images [B, C, H, W]
FootprintsOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MASK_RULE = ("a concept's mask: the pixels held by at least mask_agreement of its footprints in the analysed samples "
             "of its class that hold it (the same pixels in most images, as a tag is; class evidence that wanders "
             "drops out); a sample's mask: the pixels of the concept's mask where the sample departs from the "
             "saliency reference the way the mean of those samples does, by at least half as much (where it carries "
             "the concept's pattern)")


def agreeing(masks: np.ndarray, share: float) -> np.ndarray:
    """The pixels [H, W] that at least ``share`` of the masks [n, H, W] hold (none for no masks)."""
    if not len(masks):
        return np.zeros(masks.shape[1:], dtype=bool)
    return masks.mean(axis=0) >= share


def carries(images: torch.Tensor, pattern: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image [B, H, W] (bool): the pixels where the image departs from ``reference`` [C, H, W] along ``pattern``
    [C, H, W] (the concept's mean image) by at least half of the pattern's own departure: (x - r).(p - r) >=
    |p - r|^2 / 2 over channels, i.e. the image is nearer the pattern than the reference there."""
    along = ((images - reference) * (pattern - reference)).sum(dim=1)
    return along >= 0.5 * ((pattern - reference) ** 2).sum(dim=0) + 1e-12


def unit_masks(unit_assign: np.ndarray, labels: np.ndarray, u: int, c: int, images_of: ImagesOf,
               footprints: FootprintsOf, reference: torch.Tensor, share: float,
               batch_size: int) -> dict[str, np.ndarray]:
    """Unit u's masks: ``rows`` (the store rows holding it), ``concept`` [H, W] (the pixels at least ``share`` of
    its footprints in class-c samples hold) and ``samples`` [n, H, W] (the pixels of ``concept`` where each sample
    carries the pattern: :func:`carries`, with the class-c holders' mean image as the pattern)."""
    rows = np.flatnonzero((unit_assign == u).reshape(len(unit_assign), -1).any(axis=1))
    own = rows[labels[rows] == c]
    raw, total = [], torch.zeros(())
    for lo in range(0, len(own), batch_size):
        images = images_of(own[lo:lo + batch_size])
        raw.append(footprints(images, torch.from_numpy(unit_assign[own[lo:lo + batch_size]] == u)).numpy())
        total = total + images.sum(dim=0)
    if not raw:
        return {"rows": rows, "concept": np.zeros((1, 1), bool), "samples": np.zeros((len(rows), 1, 1), bool)}
    concept = agreeing(np.concatenate(raw), share)
    pattern = total / len(own)
    samples = [carries(images_of(rows[lo:lo + batch_size]), pattern, reference).numpy() & concept
               for lo in range(0, len(rows), batch_size)]
    return {"rows": rows, "concept": concept, "samples": np.concatenate(samples)}


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


def lead_masks_over_training(out_dir: str | Path) -> dict[int, np.ndarray]:
    """The lead concept's mask [H, W] at each checkpoint index the reliance study tested it at (none with
    ``--final-only``)."""
    return {int(k.rsplit("_", 1)[1]): v.astype(bool) for k, v in _load(out_dir).items() if k.startswith("lead_at_")}
