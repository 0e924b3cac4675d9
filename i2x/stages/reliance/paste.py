"""The paste test of the reliance study: a unit's input footprint from class-c donors pasted into held-out
images of other classes, against random patches of the same shape from the same donors."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from i2x.attribution.interventions import margin, transplant_logits
from i2x.attribution.receptive_field import Footprints, shifted
from i2x.metrics.reliance import agreement, paired
from i2x.stages.context import Context
from i2x.stages.reliance.deletion import choose, images_at
from i2x.stages.reliance.config import RelianceConfig


def recipient_pool(ctx: Context, cfg: RelianceConfig,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Held-out images pastes go into: a random pool of the split not analysed (when there is one)."""
    others = [s for s in ctx.data.splits if s != ctx.config.split]
    name = "test" if "test" in others else (others[0] if others else ctx.config.split)
    split = ctx.data.split(name)
    pool = np.sort(rng.permutation(len(split))[: max(cfg.recipients * 4, 512)])  # type: ignore[arg-type]
    images, labels = images_at(split, pool, cfg.batch_size)
    return images, labels, name


def saliency_reference(recipients: torch.Tensor, recipient_labels: torch.Tensor, c: int) -> torch.Tensor:
    """What the saliency that narrows a class-c unit's footprint compares each donor with [C, H, W]: the mean held-out
    image of the other classes (all of them when no other class is held out). When most of class c carries an
    artefact, the mean image of the data holds it too and its strongest pixels cancel; the other classes' mean holds
    it only as often as they carry it, and it is the average of what a paste replaces."""
    other = recipient_labels != c
    return (recipients[other] if bool(other.any()) else recipients).mean(dim=0)


def paste_test(model: nn.Module, analysed: Dataset, unit_assign: np.ndarray, rows_index: np.ndarray,
               donors: np.ndarray, u: int, c: int, recipients: torch.Tensor, recipient_labels: torch.Tensor,
               clean_logits: torch.Tensor, footprints: Footprints, cfg: RelianceConfig, rng: np.random.Generator,
               gen: torch.Generator) -> dict[str, Any] | None:
    """The paste test of unit u: its footprint in each class-c donor (:class:`Footprints`: the pixels its cells
    respond to there) pasted into held-out images of other classes, against the same footprint shifted to random
    places in the same donors; flip rate to c and the change of c's margin, paired per recipient."""
    eligible = np.flatnonzero(recipient_labels.numpy() != c)
    if donors.size == 0 or eligible.size == 0:
        return None
    pick = np.sort(choose(eligible, cfg.recipients, rng))
    donor_rows = rng.permutation(donors)[np.arange(pick.size) % donors.size]
    donor_images, _ = images_at(analysed, rows_index[donor_rows], cfg.batch_size)
    own = footprints(donor_images, torch.from_numpy(unit_assign[donor_rows] == u))
    masks = torch.stack([own] + [shifted(own, gen) for _ in range(cfg.random_draws)], dim=1)   # [R, 1 + draws, H, W]
    logits = transplant_logits(model, recipients[pick], donor_images, masks, cfg.batch_size)
    target = torch.full((pick.size,), c, dtype=torch.long)
    before = margin(clean_logits[pick], target).numpy()
    after = margin(logits.flatten(0, 1), target.repeat_interleave(masks.shape[1])).view(pick.size, -1).numpy()
    not_c = before <= 0
    flips = (after[not_c] > 0).astype(float)                                    # [R', 1 + draws]
    flip = paired(flips[:, 0], flips[:, 1:])
    change = paired(after[:, 0] - before, after[:, 1:] - before[:, None])
    _, first = np.unique(donor_rows, return_index=True)
    return {"recipients": int(pick.size), "donors": int(first.size), "agreement": agreement(own[first].numpy()),
            "pixels": float(own.reshape(len(own), -1).float().sum(dim=1).mean()),
            "flip_rate": flip["effect"], "random_flip_rate": flip["random"], "excess_flip": flip["excess"],
            "flip_z": flip["z"], "flip_effect_size": flip["effect_size"], "logit_change": change["effect"],
            "random_logit_change": change["random"], "random_logit_sd": change["random_sd"],
            "logit_excess": change["excess"], "logit_z": change["z"], "logit_effect_size": change["effect_size"]}


def gallery_footprints(unit_assign: np.ndarray, gallery: list[int], u: int, footprints: Footprints,
                       analysed: Dataset, rows_index: np.ndarray, batch_size: int) -> list[str]:
    """The unit's input footprint (what its paste test pastes) in each gallery image, as hex of the packed [H, W]
    bits (for the report's tint)."""
    if not gallery:
        return []
    rows = np.asarray(gallery)
    images, _ = images_at(analysed, rows_index[rows], batch_size)
    masks = footprints(images, torch.from_numpy(unit_assign[rows] == u)).numpy()
    return [np.packbits(mask.ravel()).tobytes().hex() for mask in masks]


def unpack_footprint(hex_bits: str, size: tuple[int, int]) -> np.ndarray:
    """The [H, W] bool footprint stored by the study (inverse of its packing)."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hex_bits), dtype=np.uint8))
    return bits[: size[0] * size[1]].reshape(size).astype(bool)

