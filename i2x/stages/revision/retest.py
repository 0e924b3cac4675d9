"""The revised concept's paste test rerun on the start model and on each revised one: the reliance study's test
(:func:`i2x.stages.reliance.onset.lead_test`) with the study's settings, recipients, donors, field images and seed, so
that a change is the weights' alone and the revised models continue the lead's test over training (reliance.json's
``over_training``). Recorded under ``paste`` in finetune.json's ``revision``: the start model's row, and per method
the rates over seeds and each seed's outcome (passes, fails, or inconclusive when random patches flip too much)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from i2x.attribution import get_layer
from i2x.attribution.tokens import Layout
from i2x.io.store import Store
from i2x.io.workdir import RELIANCE, read_json
from i2x.stages.context import Context
from i2x.stages.reliance.config import RelianceConfig
from i2x.stages.reliance.onset import lead_test
from i2x.stages.reliance.paste import lead_inputs, recipient_pool
from i2x.stages.revision.results import summarise

RULE = ("the reliance study's paste test of the concept (its settings, recipients, donors and seed, as over training) "
        "under the start model and each revised one; it passes as there (flip excess >= min_flip_excess, z >= "
        "z_threshold, random patches flipping at most max_random_flip)")
#: the paste test's rates summarised over seeds
RATES = ("flip_rate", "random_flip_rate", "excess_flip")


class Retest:
    """Concept ``row``'s paste test set up once from the analysis directory ``out``; called with a model of the run,
    it gives :func:`lead_test`'s row (passes, flip_rate, random_flip_rate, excess_flip, flip_z, mask_pixels)."""

    def __init__(self, out: Path, store: Store, ctx: Context, row: dict[str, Any]) -> None:
        config = read_json(out / RELIANCE, "i2x reliance")["config"]
        known = {f.name for f in fields(RelianceConfig)}
        self.cfg = RelianceConfig(**{k: v for k, v in config.items() if k in known})
        self.u, self.c = int(row["id"]), int(row["class"])
        # the concept's cells: its prototypes' (a joined concept lists the prototypes of all its pieces)
        self.unit_assign = np.where(np.isin(store.read("analysis/assign"), row["members"]), self.u, -1)
        self.rows_index = store.read("sample_index")
        self.analysed = ctx.data.split(ctx.config.split)
        # the study's recipients: the first draw of its generator seeded with the study's seed
        self.recipients, self.recipient_labels, _ = recipient_pool(ctx, self.cfg, np.random.default_rng(self.cfg.seed))
        self.holders, self.field_images = lead_inputs(self.analysed, self.unit_assign, self.u, self.c,
                                                      store.read("labels"), self.rows_index, self.cfg, ctx.device)
        self.layer, self.layout = store.attrs["layer"], Layout.from_dict(store.attrs.get("layer_layout"))

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        """The paste test under ``model``'s current weights (its train or eval mode is kept)."""
        was_training = model.training
        row, _ = lead_test(model, get_layer(model, self.layer), self.layout, self.analysed, self.unit_assign, self.u,
                           self.c, self.holders, self.rows_index, self.recipients, self.recipient_labels,
                           self.field_images, self.cfg)
        model.train(was_training)
        return row


def outcome(row: dict[str, Any], max_random_flip: float) -> str:
    """A paste test's row in one word: ``passes``; ``inconclusive`` when random patches flip more than
    ``max_random_flip`` of the recipients (the test cannot tell the concept from any patch, as in the study);
    ``not run`` without a donor or a recipient; else ``fails``."""
    if row["passes"]:
        return "passes"
    if row["flip_rate"] is None:
        return "not run"
    return "inconclusive" if row["random_flip_rate"] > max_random_flip else "fails"


def paste_record(retest: Retest, before: dict[str, Any], runs: list[dict[str, Any]],
                 methods: list[str]) -> dict[str, Any]:
    """finetune.json's ``paste``: the start model's row and its :func:`outcome`, and per method :data:`RATES` over
    seeds (mean, std, interval, per-seed values) and each seed's outcome (the runs carry each seed's whole row under
    ``paste``)."""
    bar = retest.cfg.max_random_flip
    rows = [{"method": r["method"], **r["paste"]} for r in runs]
    stats = summarise(rows, methods, RATES)
    for method in methods:
        stats[method]["outcomes"] = [outcome(r, bar) for r in rows if r["method"] == method]
    return {"concept": retest.u, "rule": RULE, "max_random_flip": bar, "before": before,
            "before_outcome": outcome(before, bar), "methods": stats}
