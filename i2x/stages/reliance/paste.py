"""The paste test of the reliance study: a unit's input footprint from class-c donors pasted into held-out
images of other classes, against random patches of the same shape from the same donors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from i2x.attribution.interventions import margin, transplant_logits
from i2x.attribution.receptive_field import Footprints, shift_offsets, shifted_by
from i2x.metrics.reliance import agreement, paired
from i2x.stages.context import Context
from i2x.stages.reliance.config import RelianceConfig
from i2x.stages.reliance.deletion import choose, images_at
from i2x.stages.reliance.held_out import held_out_split


def recipient_pool(ctx: Context, cfg: RelianceConfig,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Held-out images pastes go into: a random pool of the split not analysed (when there is one)."""
    name = held_out_split(ctx) or ctx.config.split
    split = ctx.data.split(name)
    pool = np.sort(rng.permutation(len(split))[: max(cfg.recipients * 4, 512)])  # type: ignore[arg-type]
    images, labels = images_at(split, pool, cfg.batch_size)
    return images, labels, name


def lead_inputs(analysed: Dataset, unit_assign: np.ndarray, u: int, c: int, labels: np.ndarray,
                rows_index: np.ndarray, cfg: RelianceConfig,
                device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    """What the lead's paste test (:func:`i2x.stages.reliance.onset.lead_test`) needs besides the model and the
    recipients, the same under any weights: the store rows holding unit u in class c (its donors) and the images its
    receptive fields are averaged over (``field_images`` analysed rows drawn with the study's seed), on ``device``."""
    holders = np.flatnonzero(((unit_assign == u).reshape(len(unit_assign), -1).any(axis=1)) & (labels == c))
    field_rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(rows_index))[: cfg.field_images])
    return holders, images_at(analysed, rows_index[field_rows], cfg.batch_size)[0].to(device)


def saliency_reference(recipients: torch.Tensor, recipient_labels: torch.Tensor, c: int) -> torch.Tensor:
    """What the saliency that narrows a class-c unit's footprint compares each donor with [C, H, W]: the mean held-out
    image of the other classes (all of them when no other class is held out). When most of class c carries an
    artefact, the mean image of the data holds it too and its strongest pixels cancel; the other classes' mean holds
    it only as often as they carry it, and it is the average of what a paste replaces."""
    other = recipient_labels != c
    return (recipients[other] if bool(other.any()) else recipients).mean(dim=0)


@dataclass
class PasteDraw:
    """One unit's paste test drawn before it runs (the draws of every unit come first, in unit order, so that a unit
    the study skips changes no other unit's draws)."""

    pick: np.ndarray          # positions in the recipient pool [R]
    donor_rows: np.ndarray    # store row of each recipient's donor [R]
    offsets: torch.Tensor     # flat cyclic shifts of the random patches [draws, R]


def draw_paste(donors: np.ndarray, c: int, recipient_labels: torch.Tensor, size: tuple[int, int],
               cfg: RelianceConfig, rng: np.random.Generator, gen: torch.Generator) -> PasteDraw | None:
    """Recipients (held-out images not of class c), a class-c donor for each and the random patches' shifts; None
    when there is no donor or no recipient."""
    eligible = np.flatnonzero(recipient_labels.numpy() != c)
    if donors.size == 0 or eligible.size == 0:
        return None
    pick = np.sort(choose(eligible, cfg.recipients, rng))
    donor_rows = rng.permutation(donors)[np.arange(pick.size) % donors.size]
    offsets = torch.stack([shift_offsets(pick.size, size, gen) for _ in range(cfg.random_draws)])
    return PasteDraw(pick, donor_rows, offsets)


class FootprintCache:
    """Input footprints (:class:`Footprints`) of (store row, cell mask) pairs, each computed once and many at a time:
    units share donors and gallery images, and a concept of one prototype has that prototype's cells."""

    def __init__(self, footprints: Footprints, analysed: Dataset, rows_index: np.ndarray, batch_size: int) -> None:
        self.footprints, self.analysed, self.rows_index, self.batch_size = footprints, analysed, rows_index, batch_size
        self._done: dict[tuple[int, bytes], torch.Tensor] = {}

    def __call__(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[torch.Tensor]:
        """Footprints [n, H, W] (bool) per request of store rows [n] and their cell masks [n, h, w]."""
        keys = [[(int(r), m.tobytes()) for r, m in zip(rows, masks)] for rows, masks in requests]
        todo: dict[tuple[int, bytes], np.ndarray] = {}
        for (_, masks), unit_keys in zip(requests, keys):
            for key, mask in zip(unit_keys, masks):
                if key not in self._done:
                    todo.setdefault(key, mask)
        pending = list(todo.items())
        for lo in range(0, len(pending), self.batch_size):
            part = pending[lo:lo + self.batch_size]
            rows = np.array([key[0] for key, _ in part])
            images, _ = images_at(self.analysed, self.rows_index[rows], self.batch_size)
            made = self.footprints(images, torch.from_numpy(np.stack([mask for _, mask in part])))
            self._done.update(zip((key for key, _ in part), made))
        return [torch.stack([self._done[key] for key in unit_keys]) if unit_keys else torch.zeros(0, dtype=torch.bool)
                for unit_keys in keys]


def paste_footprints(draw: PasteDraw, unit_assign: np.ndarray, u: int) -> tuple[np.ndarray, np.ndarray]:
    """The footprint request of a unit's paste test: its distinct donors and their cells (for :class:`FootprintCache`)."""
    rows = np.unique(draw.donor_rows)
    return rows, unit_assign[rows] == u


def footprint_facts(draw: PasteDraw, own: torch.Tensor) -> dict[str, Any]:
    """What a unit's donor footprints [R, H, W] (one per recipient) say before any paste: recipients, donors, the
    donors' pixel agreement and the mean footprint area."""
    _, first = np.unique(draw.donor_rows, return_index=True)
    return {"recipients": int(draw.pick.size), "donors": int(first.size), "agreement": agreement(own[first].numpy()),
            "pixels": float(own.reshape(len(own), -1).float().sum(dim=1).mean())}


def paste_test(model: nn.Module, analysed: Dataset, rows_index: np.ndarray, draw: PasteDraw, own: torch.Tensor,
               c: int, recipients: torch.Tensor, clean_logits: torch.Tensor, cfg: RelianceConfig) -> dict[str, Any]:
    """The paste test of a unit of class c: its footprint ``own`` [R, H, W] in each class-c donor (the pixels its
    cells respond to there) pasted into held-out images of other classes, against the same footprint shifted to
    random places in the same donors; flip rate to c and the change of c's margin, paired per recipient."""
    donor_images, _ = images_at(analysed, rows_index[draw.donor_rows], cfg.batch_size)
    return {**footprint_facts(draw, own),
            **score_paste(model, recipients[draw.pick], clean_logits[draw.pick], donor_images, own, c, cfg,
                          draw.offsets)}


def score_paste(model: nn.Module, recipients: torch.Tensor, clean_logits: torch.Tensor, donor_images: torch.Tensor,
                own: torch.Tensor, c: int, cfg: RelianceConfig, offsets: torch.Tensor | torch.Generator) -> dict[str, Any]:
    """Masks ``own`` [R, H, W] of donors [R, C, H, W] pasted into recipients [R, C, H, W] (clean logits [R, M]) at
    the same place, against the same masks cyclically shifted by ``offsets`` [draws, R] (or drawn from a generator,
    ``cfg.random_draws`` of them): the rate of recipients not called c that become c and the change of c's margin,
    paired per recipient. The reliance study and ``i2x compare`` (A's suspect in B's images) score pastes here."""
    if isinstance(offsets, torch.Generator):
        offsets = torch.stack([shift_offsets(len(own), tuple(own.shape[-2:]), offsets) for _ in range(cfg.random_draws)])
    masks = torch.stack([own] + [shifted_by(own, offset) for offset in offsets], dim=1)   # [R, 1 + draws, H, W]
    logits = transplant_logits(model, recipients, donor_images, masks, cfg.batch_size)
    target = torch.full((len(recipients),), c, dtype=torch.long)
    before = margin(clean_logits, target).numpy()
    after = margin(logits.flatten(0, 1), target.repeat_interleave(masks.shape[1])).view(len(recipients), -1).numpy()
    not_c = before <= 0
    flips = (after[not_c] > 0).astype(float)                                    # [R', 1 + draws]
    flip = paired(flips[:, 0], flips[:, 1:])
    change = paired(after[:, 0] - before, after[:, 1:] - before[:, None])
    return {"flip_rate": flip["effect"], "random_flip_rate": flip["random"], "excess_flip": flip["excess"],
            "flip_z": flip["z"], "flip_effect_size": flip["effect_size"], "logit_change": change["effect"],
            "random_logit_change": change["random"], "random_logit_sd": change["random_sd"],
            "logit_excess": change["excess"], "logit_z": change["z"], "logit_effect_size": change["effect_size"]}
