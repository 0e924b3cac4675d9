"""Reliance: which concepts the model actually depends on, shortcuts first.

β (:mod:`i2x.analysis.mapping`) says how a prototype's CAM intensity tracks confidence changes
during training; it does not say whether the model *uses* the prototype. This stage asks the
final checkpoint directly, with interventions. A pattern larger than a grid cell is split over
several prototypes, so prototypes are first grouped into *concepts*
(:class:`i2x.analysis.concepts.ConceptGrouping`: class-tied, fixed-in-place prototypes that are
co-present and on adjacent cells). Every unit, each prototype and each concept (the union of its
prototypes' cells), gets:

* **Presence** (from the store, :mod:`i2x.metrics.reliance`): presence rate per class, purity
  P(class | present), lift over chance for its class c, and spatial concentration (1: the same
  cells in every image, 0: anywhere on the grid).
* **Deletion** at the target layer: a forward hook (:class:`i2x.attribution.interventions.CellReplacement`) replaces the layer's
  output at the unit's cells by the data set's mean activation; the effect is the drop of the
  true-class logit margin in class-c images against as many uniformly random cells of the same
  sample (``random_draws`` sets).
* **Paste test** at the input: the unit's input footprint in class-c donor images is pasted into
  held-out images of other classes at the same place. The footprint is the effective receptive
  field of the unit's cells (:mod:`i2x.attribution.receptive_field`: the mean absolute input
  gradient of each cell, thresholded at ``field_threshold`` of that cell's maximum, united over
  the unit's cells), not the stride block. The baseline pastes random patches of the same area and shape
  from the same donors (the footprint cyclically shifted to a random place). The effect is the
  rate of recipients turned into class c, paired against the baseline: excess, z and effect size.

The verdict (:func:`i2x.stages.reliance_verdict.verdict`) rests on that causal evidence. A concept is a *shortcut* when it is
class-tied (lift >= ``min_lift``) and fixed in place (concentration >= ``min_concentration``), its
paste turns at least ``min_flip_excess`` more recipients into its class than random patches do with
z >= ``z_threshold`` while random patches flip at most ``max_random_flip`` (else the footprint
pastes so much of the donor that the test is inconclusive), and deleting it costs its class's
margin more than random cells do (z >= ``z_threshold``). The default excess, 0.4, is what separates them on the
data we measured: planted markers turn 55-80% more other-class images than random patches, the parts of centred
digits (class-tied and fixed in place too) 19-30% more, and the real case that motivated the rule 51%. Concepts are ranked by that evidence: those that pass first, then by paste
excess. Nothing is a product that one weak factor zeroes, and a shortcut split over prototypes is
judged as one concept, so its pieces do not hide one another.

Results go to ``DIR/reliance.json`` (concepts and prototypes, per-sample deletions) and under
``reliance`` in ``DIR/summary.json`` (settings, verdict, the concept table).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from i2x.analysis.concepts import ConceptGrouping
from i2x.attribution import get_layer
from i2x.attribution.interventions import CellReplacement, transplant_logits
from i2x.attribution.receptive_field import cell_fields
from i2x.attribution.tokens import Layout
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import RELIANCE, load_summary, save_summary, write_json
from i2x.metrics.reliance import lift, presence_stats
from i2x.settings import device_option, option, validate
from i2x.stages.context import Context, open_context
from i2x.stages.reliance_deletion import deletion_plan, deletion_summary, images_at, mean_activation, run_deletions
from i2x.stages.reliance_paste import gallery_footprints, paste_test, recipient_pool
from i2x.stages.reliance_verdict import (CONCEPT_RULE, FILL, FOOTPRINT, RULE, gallery_rows, rank, summary_entry,
                                         unit_row, verdict)


@dataclass
class RelianceConfig:
    """Settings of the reliance study (printed in the report and kept in summary.json)."""

    max_samples: int = option(128, "class samples per unit whose cells are deleted", low=1)
    recipients: int = option(128, "held-out images per unit for the paste test", low=1)
    random_draws: int = option(3, "random baselines per intervention", low=1)
    batch_size: int = option(512, "interventions per forward batch", low=1)
    top: int = option(5, "concepts to show in detail", low=1)
    gallery: int = option(8, "images per concept in the report", low=1)
    z_threshold: float = option(3.0, "z (paired, against random) that the paste and the deletion must reach", low=0)
    min_flip_excess: float = option(0.4, "paste flip rate above random patches a shortcut needs: a shortcut decides "
                                    "on its own, while a part of an object (a stroke of a centred digit) moves fewer "
                                    "images", low=0, high=1)
    max_random_flip: float = option(0.25, "random patches flipping more than this make the paste test inconclusive",
                                    low=0, high=1)
    min_lift: float = option(0.5, "lift over chance for its class a concept needs to count as class-tied", low=0,
                             high=1)
    min_concentration: float = option(0.4, "spatial concentration a concept needs to count as fixed in place",
                                      low=0, high=1)
    min_jaccard: float = option(0.3, "co-presence (Jaccard over samples) that links two prototypes into a concept",
                                low=0, high=1)
    link_concentration: float = option(0.3, "spatial concentration each prototype needs to join a concept", low=0,
                                       high=1)
    max_share: float = option(0.2, "largest share of the grid a concept's hot cells may cover", low=0, high=1,
                              low_open=True)
    field_threshold: float = option(0.5, "share of its maximum at which a receptive field ends (footprint)", low=0,
                                    high=1, low_open=True)
    field_images: int = option(16, "images the receptive fields are averaged over", low=1)
    seed: int = option(0, "seed of the sample and random draws")
    device: str = device_option()



def reliance(out_dir: str | Path, config: RelianceConfig | None = None, progress: bool = True,
             trust_checkpoints: bool = False, trust_analysis: bool = False, model: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Run the reliance study on the analysis in ``out_dir``: writes ``reliance.json`` and merges a ``reliance``
    entry into ``summary.json``. Pass a :class:`RelianceConfig` or its fields (``recipients=64``).
    ``trust_checkpoints``, ``trust_analysis`` and ``model`` are as in :func:`i2x.stages.context.open_context`."""
    cfg = config or RelianceConfig(**options)
    validate(cfg)
    with locked(out_dir):
        store = Store.open(out_dir, mode="r")
        summary = load_summary(out_dir)
        ctx = open_context(store, None, cfg.device, cfg.batch_size, trust_checkpoints, trust_analysis, model)
        result = _study(store, ctx, cfg, progress)
        write_json(Path(out_dir) / RELIANCE, result, indent=2)
        summary["reliance"] = summary_entry(result)
        save_summary(out_dir, summary)
    return result


def _study(store: Store, ctx: Context, cfg: RelianceConfig, progress: bool) -> dict[str, Any]:
    """Presence, deletion and the paste test for every prototype and every concept, then the ranking and verdict."""
    start = time.perf_counter()
    assign, labels, rows_index = store.read("analysis/assign"), store.read("labels"), store.read("sample_index")
    names, grid = store.class_names, store.grid
    k_count, m = int(assign.max()) + 1, len(names)
    stats = presence_stats(assign, labels, k_count, m)
    lifts = lift(stats["purity"], stats["prior"])
    top_class = lifts.argmax(axis=1)
    grouping = ConceptGrouping(cfg.min_jaccard, cfg.min_lift, cfg.link_concentration, max_share=cfg.max_share).fit(
        stats["present"], stats["cells"], top_class, lifts[np.arange(k_count), top_class], stats["concentration"])
    concept_assign = grouping.labels_[assign]
    c_count = len(grouping.members_)
    c_stats = presence_stats(concept_assign, labels, c_count, m)
    c_lifts = lift(c_stats["purity"], c_stats["prior"])
    # units: every prototype, then every concept of two or more prototypes (a singleton concept is its prototype)
    units = [(assign, k, int(top_class[k])) for k in range(k_count)]
    multi = [c for c, members in enumerate(grouping.members_) if len(members) > 1]
    units += [(concept_assign, c, int(c_lifts[c].argmax())) for c in multi]
    holders = [np.flatnonzero((a == u).reshape(len(a), -1).any(axis=1)) for a, u, _ in units]
    model, analysed = ctx.model, ctx.data.split(ctx.config.split)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    recipients, recipient_labels, held_name = recipient_pool(ctx, cfg, rng)
    plans = [deletion_plan(a, labels, holders[i], u, c, grid, cfg, rng) for i, (a, u, c) in enumerate(units)]
    layer = get_layer(model, store.attrs["layer"])
    layout = Layout.from_dict(store.attrs.get("layer_layout"))
    t0 = time.perf_counter()
    field_rows = np.sort(rng.permutation(len(rows_index))[: cfg.field_images])
    fields = cell_fields(model, layer, images_at(analysed, rows_index[field_rows], cfg.batch_size)[0].to(ctx.device),
                         cfg.batch_size, layout)
    t1 = time.perf_counter()
    with CellReplacement(layer, mean_activation(store), layout) as replacement:
        expand = replacement.can_expand(model, recipients.to(ctx.device), grid)
        drops, clean = run_deletions(model, replacement, expand, analysed, rows_index, labels, plans, cfg, progress)
    t2 = time.perf_counter()
    clean_logits = transplant_logits(model, recipients, recipients,
                                     torch.zeros(len(recipients), 1, *recipients.shape[-2:], dtype=torch.bool),
                                     cfg.batch_size)[:, 0]
    pastes = [paste_test(model, analysed, a, rows_index, holders[i][labels[holders[i]] == c], u, c, recipients,
                          recipient_labels, clean_logits, fields, cfg, rng, gen)
              for i, (a, u, c) in enumerate(tqdm(units, desc="paste", disable=not progress))]
    timings = {"fields": round(t1 - t0, 3), "deletion": round(t2 - t1, 3), "paste": round(time.perf_counter() - t2, 3)}
    results = []
    for i, (a, u, c) in enumerate(units):
        chosen, _, counts = plans[i]
        deletion = deletion_summary(drops[i], clean[i], chosen, counts, labels, c, m) if chosen.size else None
        results.append((deletion, pastes[i]))
    protos = [unit_row(k, names, stats, lifts, int(top_class[k]), *results[k],
                   gallery_rows(assign, labels, holders[k], k, int(top_class[k]), cfg.gallery), cfg)
              for k in range(k_count)]
    for p, k in zip(protos, range(k_count)):
        p["concept"] = int(grouping.labels_[k])
    concepts = []
    for c, members in enumerate(grouping.members_):
        if len(members) == 1:
            row = {key: v for key, v in protos[members[0]].items() if key != "concept"}
        else:
            cc = int(c_lifts[c].argmax())
            i = k_count + multi.index(c)
            row = unit_row(c, names, c_stats, c_lifts, cc, *results[i],
                       gallery_rows(concept_assign, labels, holders[i], c, cc, cfg.gallery), cfg)
        row.update({"id": c, "members": members})
        row["footprints"] = gallery_footprints(concept_assign, row["gallery"], c, fields, cfg.field_threshold)
        concepts.append(row)
    ranking = rank(concepts)
    prototype_ranking = rank(protos)
    text, found = verdict([concepts[i] for i in ranking], cfg.z_threshold, cfg.min_flip_excess)
    return {
        "config": asdict(cfg), "checkpoint": ctx.checkpoint("final").name, "layer": store.attrs["layer"],
        "grid": list(grid), "k": k_count, "assign_digest": assign_digest(assign), "held_out_split": held_name,
        "expanded_at_layer": expand, "footprint": FOOTPRINT, "fill": FILL, "rule": RULE, "concept_rule": CONCEPT_RULE,
        "verdict": text, "shortcut_found": found, "suspect": ranking[0] if found else None,
        "ranking": ranking, "concepts": concepts, "prototype_ranking": prototype_ranking, "prototypes": protos,
        "timings": timings, "seconds": round(time.perf_counter() - start, 3),
    }


def assign_digest(assign: np.ndarray) -> str:
    """A short fingerprint of the prototype assignments, so a report can tell reliance.json is stale."""
    return hashlib.sha256(np.ascontiguousarray(assign, dtype=np.int64).tobytes()).hexdigest()[:16]

