"""When a shortcut formed: the lead concept's paste test and mask at every checkpoint of the run.

The lead's cells stay those of the final checkpoint (prototype assignments are fixed over t, D6); at each
checkpoint the model of that step narrows the footprints, is pasted into, and is scored, on the same recipients and
donors every time (the study's seed), so the flip rates of two checkpoints differ by the model alone. The onset is
the first checkpoint whose paste test passes (:func:`i2x.metrics.reliance.shortcut_checks`' paste test)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from i2x.attribution.interventions import transplant_logits
from i2x.attribution.receptive_field import Footprints, cell_fields
from i2x.attribution.tokens import Layout
from i2x.io.store import Store
from i2x.io.workdir import usable_checkpoints
from i2x.metrics.reliance import shortcut_checks
from i2x.stages.context import Context
from i2x.stages.reliance.config import RelianceConfig
from i2x.stages.reliance.deletion import images_at
from i2x.stages.reliance.masks import agreeing
from i2x.stages.reliance.paste import draw_paste, lead_inputs, paste_test, saliency_reference

ONSET_RULE = ("at every checkpoint, the lead concept's cells of the final checkpoint, its footprints narrowed by "
              "that checkpoint's model, pasted into the same recipients from the same donors and scored by that "
              "model; the onset is the first checkpoint whose paste test passes (flip excess >= min_flip_excess, "
              "z >= z_threshold, random patches flipping at most max_random_flip)")


def onset(rows: list[dict[str, Any]]) -> int | None:
    """Index into ``rows`` (one per checkpoint, in training order) of the first whose paste test passes, or None."""
    return next((i for i, r in enumerate(rows) if r["passes"]), None)


def lead_test(model: torch.nn.Module, layer: torch.nn.Module, layout: Layout, analysed: Dataset,
              unit_assign: np.ndarray, u: int, c: int, holders: np.ndarray, rows_index: np.ndarray,
              recipients: torch.Tensor, recipient_labels: torch.Tensor, field_images: torch.Tensor,
              cfg: RelianceConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Unit u (class c)'s paste test under ``model`` (any weights of the run's model: a checkpoint, a fine-tuned
    model; ``layer`` a module of it) and its mask there (the pixels at least ``mask_agreement`` of its footprints in
    up to ``max_samples`` of ``holders`` agree on): the row of reliance.json's over_training, and the mask."""
    model.eval()
    cells = torch.from_numpy((unit_assign[holders] == u).any(axis=0))             # the unit's cells [h, w]
    fields = cell_fields(model, layer, field_images, cfg.batch_size, layout, cells=cells)
    footprints = Footprints(model, layer, fields, saliency_reference(recipients, recipient_labels, c),
                            cfg.field_threshold, cfg.saliency_threshold, cfg.batch_size, layout)
    no_paste = torch.zeros(len(recipients), 1, *recipients.shape[-2:], dtype=torch.bool)
    clean = transplant_logits(model, recipients, recipients, no_paste, cfg.batch_size)[:, 0]
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    draw = draw_paste(holders, c, recipient_labels, tuple(recipients.shape[-2:]), cfg, rng, gen)
    donors = np.sort(np.random.default_rng(cfg.seed).permutation(holders)[: cfg.max_samples])
    rows = np.union1d(donors, [] if draw is None else draw.donor_rows).astype(np.int64)  # one stream for both
    made = footprints(images_at(analysed, rows_index[rows], cfg.batch_size)[0],
                      torch.from_numpy(unit_assign[rows] == u))
    paste: dict[str, Any] = {}
    if draw is not None:
        own = made[np.searchsorted(rows, draw.donor_rows)]
        paste = paste_test(model, analysed, rows_index, draw, own, c, recipients, clean, cfg)
    own = made[np.searchsorted(rows, donors)].numpy()
    mask = agreeing(own, cfg.mask_agreement)
    passes = shortcut_checks(1.0, 1.0, paste, None, cfg.z_threshold, cfg.min_flip_excess, 0.0, 0.0,
                             cfg.max_random_flip)["paste"]
    return {"passes": passes, "mask_pixels": int(mask.sum()),
            **{k: paste.get(k) for k in ("flip_rate", "random_flip_rate", "excess_flip", "flip_z")}}, mask


def over_training(store: Store, ctx: Context, unit_assign: np.ndarray, u: int, c: int, labels: np.ndarray,
                  rows_index: np.ndarray, recipients: torch.Tensor, recipient_labels: torch.Tensor,
                  layer: torch.nn.Module, layout: Layout,
                  cfg: RelianceConfig) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """The lead unit u (class c)'s :func:`lead_test` at each usable checkpoint: one row per checkpoint (its name and
    index too) and the masks by checkpoint index. The model ends on the final checkpoint again (``layer``, its
    target layer, is a module of it)."""
    analysed = ctx.data.split(ctx.config.split)
    holders, field_images = lead_inputs(analysed, unit_assign, u, c, labels, rows_index, cfg, ctx.device)
    rows, masks = [], {}
    checkpoints = [int(t) for t in usable_checkpoints(store)]
    try:
        for t in checkpoints:
            ctx.load(ctx.checkpoint(store.checkpoints[t]["name"]))
            row, masks[t] = lead_test(ctx.model, layer, layout, analysed, unit_assign, u, c, holders, rows_index,
                                      recipients, recipient_labels, field_images, cfg)
            rows.append({"checkpoint": store.checkpoints[t]["name"], "index": t, **row})
    finally:
        ctx.load(ctx.checkpoint(store.checkpoints[checkpoints[-1]]["name"]))
        ctx.model.eval()
    return rows, masks
