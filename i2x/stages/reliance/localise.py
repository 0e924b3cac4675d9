"""After the verdict: the suspects' masks (:mod:`~i2x.stages.reliance.masks`), the samples that carry them
(:mod:`~i2x.stages.reliance.retrieval`) and the lead's paste test over training (:mod:`~i2x.stages.reliance.onset`).
Suspects are the lead concept and every concept that passes every test (at most ``top`` in all)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from i2x.attribution.receptive_field import Footprints
from i2x.attribution.tokens import Layout
from i2x.io.store import Store
from i2x.stages.context import Context
from i2x.stages.reliance.config import RelianceConfig
from i2x.stages.reliance.deletion import images_at, mean_activation
from i2x.stages.reliance.masks import MASK_RULE, unit_masks
from i2x.stages.reliance.onset import ONSET_RULE, onset, over_training
from i2x.stages.reliance.paste import saliency_reference
from i2x.stages.reliance.retrieval import SCORE_RULE, carrier_scores, concept_direction, ranked, unit_hot_cells


class Probe(Protocol):
    """What the study's intervention state offers: the model, its layer, the analysed split, the recipients."""

    model: nn.Module
    layer: nn.Module
    layout: Layout
    analysed: Dataset
    recipients: torch.Tensor
    recipient_labels: torch.Tensor
    held_name: str

    def footprints(self, c: int) -> Footprints: ...


@dataclass
class Located:
    """The arrays and files the localisation writes: masks per suspect, the lead's masks over training, and the
    content of ``shortcut_samples.json``."""

    masks: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    over_training: dict[int, np.ndarray] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)


def suspects(concepts: list[dict[str, Any]], ranking: list[int], top: int) -> list[int]:
    """The lead concept, then the other concepts that pass every test, in ranking order (at most ``top``)."""
    passing = [i for i in ranking[1:] if all(concepts[i]["checks"].values())]
    return ranking[:1] + passing[: max(top - 1, 0)]


def unit_assignment(concept_assign: np.ndarray, row: dict[str, Any]) -> np.ndarray:
    """The assignment in which concept ``row`` is a unit of its own: the concept assignment, with the concepts it
    joins (a joined concept's ``pieces``) relabelled to its id."""
    if not row.get("pieces"):
        return concept_assign
    return np.where(np.isin(concept_assign, row["pieces"]), row["id"], concept_assign)


def locate(store: Store, ctx: Context, probe: Probe, concepts: list[dict[str, Any]], ranking: list[int],
           concept_assign: np.ndarray, labels: np.ndarray, rows_index: np.ndarray,
           cfg: RelianceConfig) -> tuple[dict[str, Any], Located]:
    """Masks and carrier scores of every suspect, and, when the lead is a shortcut (it passes every test), its paste
    test at every checkpoint (unless ``final_only``; a lead that is no shortcut did not form one); returns the
    ``localisation`` entry of reliance.json and what goes to the other files."""
    start = time.perf_counter()
    names, found = store.class_names, Located()
    chosen = suspects(concepts, ranking, cfg.top)
    assigns = {k: unit_assignment(concept_assign, concepts[k]) for k in chosen}

    def images_of(rows: np.ndarray) -> torch.Tensor:
        return images_at(probe.analysed, rows_index[rows], cfg.batch_size)[0]

    for k in chosen:
        c = concepts[k]["class"]
        found.masks[k] = unit_masks(assigns[k], labels, k, c, images_of, probe.footprints(c),
                                    saliency_reference(probe.recipients, probe.recipient_labels, c),
                                    cfg.mask_agreement, cfg.batch_size)
    fill = mean_activation(store)
    directions = [(concept_direction(store, assigns[k], k, concepts[k]["class"], labels, fill),
                   unit_hot_cells(assigns[k], k, labels, concepts[k]["class"])) for k in chosen]
    truth = ctx.data.extra.get("marked")
    held = ctx.data.split(probe.held_name)
    splits = {probe.held_name: (held, np.arange(len(held))),  # type: ignore[arg-type]
              ctx.config.split: (Subset(probe.analysed, rows_index.tolist()), rows_index)}
    per_split = {}
    for name, (dataset, index) in splits.items():
        scores, y = carrier_scores(probe.model, probe.layer, probe.layout, dataset, directions, fill, cfg.batch_size)
        per_split[name] = [ranked(scores[:, i], index, y, names, None if truth is None else truth.get(name))
                           for i in range(len(chosen))]
    found.samples = {"rule": SCORE_RULE, "analysed_split": ctx.config.split, "held_out_split": probe.held_name,
                     "concepts": [
        {"id": k, "class": concepts[k]["class"], "class_name": names[concepts[k]["class"]],
         "shortcut": all(concepts[k]["checks"].values()), "splits": {s: per_split[s][i] for s in per_split}}
        for i, k in enumerate(chosen)]}
    entry: dict[str, Any] = {
        "suspects": chosen, "mask_rule": MASK_RULE, "score_rule": SCORE_RULE,
        "masks": {str(k): {"pixels": int(found.masks[k]["concept"].sum()), "samples": int(len(found.masks[k]["rows"]))}
                  for k in chosen},
        "truth": {str(k): {s: per_split[s][i].get("truth") for s in per_split} for i, k in enumerate(chosen)}
        if truth is not None else None}
    lead = chosen[0] if chosen else None
    shortcut = lead is not None and all(concepts[lead]["checks"].values())
    if shortcut and not cfg.final_only and len(store.checkpoints) > 1:
        rows, found.over_training = over_training(store, ctx, assigns[lead], lead, concepts[lead]["class"], labels,
                                                  rows_index, probe.recipients, probe.recipient_labels, probe.layer,
                                                  probe.layout, cfg)
        first = onset(rows)
        entry["over_training"] = {"concept": lead, "rule": ONSET_RULE, "checkpoints": rows,
                                  "onset": None if first is None else rows[first]["checkpoint"]}
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry, found


def localisation_lines(result: dict[str, Any]) -> list[str]:
    """What the CLI says of the localisation: the lead's mask, whether the carrier ranking could be checked, and
    when the lead's paste test first passed."""
    loc = result.get("localisation")
    if not loc or not loc.get("suspects"):
        return []
    lead = loc["suspects"][0]
    lines = [f"  concept {lead}'s mask: {loc['masks'][str(lead)]['pixels']} px (reliance_masks.npz); its carriers "
             "ranked in shortcut_samples.json"]
    truth = (loc.get("truth") or {}).get(str(lead))
    checked = {s: t for s, t in (truth or {}).items() if t and t.get("auroc") is not None}
    lines.append("  against the planted carriers: " + "; ".join(f"{s} AUROC {t['auroc']:.3f}, AP {t['ap']:.3f}"
                                                                  for s, t in checked.items()) if checked else
                 "  the data set does not say which samples carry it: i2x cannot check that ranking")
    over = loc.get("over_training")
    if over is None and not result["shortcut_found"]:
        lines.append("  no shortcut, so when it formed was not traced over the checkpoints")
    elif over is None:
        lines.append("  tested at the final checkpoint only: when it formed is unknown")
    elif over["onset"] is None:
        lines.append("  its paste test passes at no checkpoint")
    else:
        lines.append(f"  its paste test first passes at checkpoint {over['onset']}")
    return lines
