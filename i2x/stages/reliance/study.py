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
* **Deletion** at the target layer: a forward hook
  (:class:`i2x.attribution.interventions.CellReplacement`) replaces the layer's
  output at the unit's cells by the data set's mean activation; the effect is the drop of the
  true-class logit margin in class-c images against as many uniformly random cells of the same
  sample (``random_draws`` sets).
* **Paste test** at the input: the unit's input footprint in class-c donor images is pasted into
  held-out images of other classes at the same place. The footprint is what the unit's cells respond
  to in that donor (:class:`i2x.attribution.receptive_field.Footprints`): the core of their effective
  receptive field (mean absolute input gradient, thresholded at ``field_threshold`` of each cell's
  maximum), narrowed to the pixels whose saliency |gradient x (image - mean image)| reaches
  ``saliency_threshold`` of its maximum there. The whole field would paste 120-250 of 784 pixels on a
  7x7 grid, so much of the donor that random patches of its shape flip predictions too; the narrowed
  footprint of a marker is the marker. The baseline pastes random patches of the same area and shape
  from the same donors (the footprint cyclically shifted to a random place). The effect is the rate
  of recipients turned into class c, paired against the baseline: excess, z and effect size.

The verdict (:func:`i2x.stages.reliance.verdict.verdict`) rests on that causal evidence. A concept is
a *shortcut* when it is class-tied (lift >= ``min_lift``), fixed in place (concentration >=
``min_concentration`` on the grid, and its donors' footprints on the same pixels: agreement >=
``min_agreement``, :func:`i2x.metrics.reliance.agreement`), its paste turns at least
``min_flip_excess`` more recipients into its class than random patches do with z >= ``z_threshold``
while random patches flip at most ``max_random_flip`` (else the test is inconclusive), and deleting
it costs its class's margin more than random cells do (z >= ``z_threshold``). Pixel agreement is what
tells a tag from real class evidence that wanders: a planted marker's footprints agree on 0.36-0.9 of
their pixels, the soft class blob of the clean planted twins on 0.08-0.16, though pasting either
flips most recipients. Concepts are ranked by that evidence: those that pass first, then by paste
excess. A shortcut split over concepts is joined: when the lead passes, it and the concepts of its
class on adjacent cells (:func:`i2x.analysis.concepts.pieces`) that pass every test, save that their
paste may move fewer than ``min_flip_excess`` more recipients than random patches (a piece of a split
marker carries part of its effect; the paste must still beat random patches with z >= ``z_threshold``),
are tested again as one concept, which leads when it passes every test itself. Nothing is a product
that one weak factor zeroes.

The tests run in the verdict's order and a unit stops at the first it fails (unless ``full_tests``): a unit
that is not class-tied or not concentrated on the grid gets no footprints, one whose donors' footprints
disagree no paste test and no deletion; their checks read None (not run) and they rank after every unit
with a paste test. A prototype that belongs to a concept of several prototypes is tested as that concept only
(``tested_as_concept``: its presence is measured, its interventions are the concept's), as the verdict reads
concepts. No test that runs changes: every unit's random draws are made, in unit order, whatever runs, and
``tests_run`` counts the units each test ran on. Footprints are computed once per (image, cell mask), for all units
together; pastes are scored on the model with its batch norms folded
(:func:`i2x.stages.benchmark.maps.scoring_model`: the same flips, margins to float rounding).

Results go to ``DIR/reliance.json`` (concepts and prototypes, per-sample deletions, the final checkpoint's accuracy
and confusions on the held-out split: :mod:`i2x.stages.reliance.held_out`) and under
``reliance`` in ``DIR/summary.json`` (settings, verdict, the concept table); then the suspects' masks
(``reliance_masks.npz``), their carriers (``shortcut_samples.json``) and the lead's paste test at every
checkpoint (:mod:`i2x.stages.reliance.localise`).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from i2x.analysis.concepts import ConceptGrouping, pieces
from i2x.attribution import get_layer
from i2x.attribution.interventions import CellReplacement, transplant_logits
from i2x.attribution.receptive_field import Footprints, cell_fields
from i2x.attribution.tokens import Layout
from i2x.io.store import Store
from i2x.io.workdir import RELIANCE, SHORTCUT_SAMPLES, AnalysisDir, assign_digest, pack_mask, save_summary
from i2x.metrics.reliance import lift, presence_stats
from i2x.settings import validate
from i2x.stages.benchmark.maps import scoring_model
from i2x.stages.context import Context, open_context
from i2x.stages.reliance.deletion import deletion_plan, deletion_summary, images_at, mean_activation, run_deletions
from i2x.stages.reliance.held_out import held_out_predictions
from i2x.stages.reliance.localise import Located, locate
from i2x.stages.reliance.masks import write_masks
from i2x.stages.reliance.paste import (FootprintCache, draw_paste, footprint_facts, paste_footprints, paste_test,
                                       recipient_pool, saliency_reference)
from i2x.stages.reliance.verdict import (CONCEPT_RULE, FILL, FOOTPRINT, RULE, gallery_rows, rank, split_piece,
                                         summary_entry, tightest_first, unit_row, verdict)
from i2x.stages.reliance.config import RelianceConfig


def reliance(out_dir: str | Path | AnalysisDir, config: RelianceConfig | None = None, progress: bool = True,
             trust_checkpoints: bool = False, trust_analysis: bool = False, model: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Run the reliance study on the analysis in ``out_dir``: writes ``reliance.json`` and merges a ``reliance``
    entry into ``summary.json``. Pass a :class:`RelianceConfig` or its fields (``recipients=64``).
    ``trust_checkpoints``, ``trust_analysis`` and ``model`` are as in :func:`i2x.stages.context.open_context`."""
    cfg = config or RelianceConfig(**options)
    validate(cfg)
    out = AnalysisDir.at(out_dir)
    with out.locked():
        store = out.store()
        summary = out.summary()
        ctx = open_context(store, None, cfg.device, cfg.batch_size, trust_checkpoints, trust_analysis, model)
        result, located = _study(store, ctx, cfg, progress)
        write_masks(out.path, located.masks, located.over_training)
        out.write(SHORTCUT_SAMPLES, located.samples, indent=1)
        out.write(RELIANCE, result, indent=2)
        summary["reliance"] = summary_entry(result)
        save_summary(out, summary)
    return result


def _study(store: Store, ctx: Context, cfg: RelianceConfig, progress: bool) -> tuple[dict[str, Any], Located]:
    """Presence, deletion and the paste test for every prototype and every concept, then the ranking and verdict,
    then the suspects' masks, carriers and the lead over training (:func:`i2x.stages.reliance.localise.locate`)."""
    start = time.perf_counter()
    assign, labels, rows_index = store.read("analysis/assign"), store.read("labels"), store.read("sample_index")
    names = store.class_names
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
    # units: every prototype, then every concept of two or more prototypes (a singleton concept is its prototype);
    # a prototype of a larger concept is tested as that concept (the verdict reads concepts), unless full_tests
    multi = [c for c, members in enumerate(grouping.members_) if len(members) > 1]
    tested_as = {k for c in multi for k in grouping.members_[c]}
    units = [(assign, k, int(top_class[k]), (cfg.full_tests or k not in tested_as)
              and _screened(lifts[k, top_class[k]], stats["concentration"][k], cfg)) for k in range(k_count)]
    units += [(concept_assign, c, int(c_lifts[c].argmax()),
               _screened(c_lifts[c].max(), c_stats["concentration"][c], cfg)) for c in multi]
    trial = _Trial(store, ctx, cfg, labels, rows_index, progress)
    results, holders = trial.run(units)
    protos = [unit_row(k, names, stats, lifts, int(top_class[k]), *results[k],
                       gallery_rows(assign, labels, holders[k], k, int(top_class[k]), cfg.gallery), cfg)
              for k in range(k_count)]
    for p, k in zip(protos, range(k_count)):
        p["concept"] = int(grouping.labels_[k])
        if k in tested_as and not cfg.full_tests:
            p["tested_as_concept"] = True
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
        concepts.append(row)
    galleries = trial.gallery_footprints([(concept_assign, row["gallery"], row["id"], row["class"]) for row in concepts])
    for row, footprints in zip(concepts, galleries):
        row["footprints"] = footprints
    ranking = rank(concepts)
    joined = _join_pieces(concepts, ranking, concept_assign, c_stats["cells"], trial, names, cfg)
    if joined is not None:
        concepts.append(joined)
        ranking = rank(concepts)
    ranking = tightest_first(concepts, ranking)
    prototype_ranking = rank(protos)
    text, found = verdict([concepts[i] for i in ranking], cfg.z_threshold, cfg.min_flip_excess)
    localisation, located = locate(store, ctx, trial, concepts, ranking, concept_assign, labels, rows_index, cfg)
    return {
        "config": asdict(cfg), "checkpoint": ctx.checkpoint("final").name, "layer": store.attrs["layer"],
        "grid": list(store.grid), "k": k_count, "assign_digest": assign_digest(assign),
        "held_out_split": trial.held_name, "held_out": held_out_predictions(ctx, m, cfg.batch_size),
        "expanded_at_layer": trial.expand, "footprint": FOOTPRINT, "fill": FILL,
        "rule": RULE, "concept_rule": CONCEPT_RULE, "verdict": text, "shortcut_found": found,
        "suspect": ranking[0] if found else None, "ranking": ranking, "concepts": concepts,
        "prototype_ranking": prototype_ranking, "prototypes": protos, "timings": trial.timings,
        "tests_run": trial.tests_run, "localisation": localisation,
        "seconds": round(time.perf_counter() - start, 3),
    }, located


def _join_pieces(concepts: list[dict[str, Any]], ranking: list[int], concept_assign: np.ndarray,
                 concept_cells: np.ndarray, trial: "_Trial", names: list[str],
                 cfg: RelianceConfig) -> dict[str, Any] | None:
    """A shortcut split over concepts: when the lead concept passes every test, it and the concepts of its class on
    adjacent cells that could be pieces of it (:func:`i2x.stages.reliance.verdict.split_piece`: every test passed,
    the paste's effect perhaps below ``min_flip_excess``) are joined into one concept (the union of their cells,
    :func:`i2x.analysis.concepts.pieces`) and tested again as a whole. Returns its row (id after the last concept),
    or None when the lead does not pass or has no such neighbour."""
    lead = concepts[ranking[0]] if ranking else None
    if lead is None or not all(lead["checks"].values()):
        return None
    joinable = [r["id"] for r in concepts
                if r["class"] == lead["class"] and split_piece(r, cfg.z_threshold, cfg.max_random_flip)]
    budget = max(1, int(round(cfg.max_share * concept_cells[0].size)))
    joined = pieces(lead["id"], joinable, concept_cells, hot_share=0.5, max_cells=budget)
    if len(joined) < 2:
        return None
    new = len(concepts)
    unit_assign = np.where(np.isin(concept_assign, joined), new, concept_assign)
    stats = presence_stats(unit_assign, trial.labels, new + 1, len(names))
    lifts = lift(stats["purity"], stats["prior"])
    c = int(lead["class"])
    results, holders = trial.run([(unit_assign, new, c, _screened(lifts[new, c], stats["concentration"][new], cfg))])
    row = unit_row(new, names, stats, lifts, c, *results[0],
                   gallery_rows(unit_assign, trial.labels, holders[0], new, c, cfg.gallery), cfg)
    row.update({"id": new, "members": sorted(m for i in joined for m in concepts[i]["members"]), "pieces": joined,
                "failed_paste_alone": [i for i in joined if concepts[i]["checks"]["paste"] is False]})
    row["footprints"] = trial.gallery_footprints([(unit_assign, row["gallery"], new, c)])[0]
    return row


def _screened(lift_c: float, concentration: float, cfg: RelianceConfig) -> bool:
    """Whether a unit passes the tests that need no intervention (class-tied, concentrated on the grid), so that its
    footprints are worth measuring."""
    return bool(lift_c >= cfg.min_lift and concentration >= cfg.min_concentration)


class _Trial:
    """Everything the interventions share in one study: the model and its layer, the held-out recipients and their
    clean logits, the receptive fields and the footprints (made once per image and cell mask); :meth:`run` tests a
    list of units."""

    def __init__(self, store: Store, ctx: Context, cfg: RelianceConfig, labels: np.ndarray, rows_index: np.ndarray,
                 progress: bool) -> None:
        self.store, self.cfg, self.labels, self.rows_index, self.progress = store, cfg, labels, rows_index, progress
        self.model, self.analysed, self.device = ctx.model, ctx.data.split(ctx.config.split), ctx.device
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.recipients, self.recipient_labels, self.held_name = recipient_pool(ctx, cfg, self.rng)
        self.layer = get_layer(self.model, store.attrs["layer"])
        self.layout = Layout.from_dict(store.attrs.get("layer_layout"))
        self.field_rows = np.sort(self.rng.permutation(len(rows_index))[: cfg.field_images])
        self.timings = {"fields": 0.0, "deletion": 0.0, "paste": 0.0}
        self.tests_run = {"units": 0, "footprints": 0, "paste": 0, "deletion": 0}
        self.scorer = scoring_model(self.model, self.recipients[:2].to(self.device))  # no-grad pastes, BN folded
        self.clean_logits = transplant_logits(
            self.scorer, self.recipients, self.recipients,
            torch.zeros(len(self.recipients), 1, *self.recipients.shape[-2:], dtype=torch.bool), cfg.batch_size)[:, 0]
        self._fields: torch.Tensor | None = None
        self._caches: dict[int, FootprintCache] = {}
        self.expand = False

    def run(self, units: list[tuple[np.ndarray, int, int, bool]]) -> tuple[list[tuple[Any, ...]], list[np.ndarray]]:
        """Deletion and paste results of each unit (its assignment array, its id there, its class, and whether it is
        class-tied and concentrated on the grid), and the samples holding each. A result is (deletion, paste,
        agreement of its donors' footprints, the tests skipped); unless ``full_tests``, a unit gets the tests in the
        verdict's order up to the first it fails. Every unit's random draws are made, in unit order, whatever runs."""
        cfg, labels, grid = self.cfg, self.labels, self.store.grid
        holders = [np.flatnonzero((a == u).reshape(len(a), -1).any(axis=1)) for a, u, _, _ in units]
        plans = [deletion_plan(a, labels, holders[i], u, c, grid, cfg, self.rng)
                 for i, (a, u, c, _) in enumerate(units)]
        size = tuple(self.recipients.shape[-2:])
        draws = [draw_paste(holders[i][labels[holders[i]] == c], c, self.recipient_labels, size, cfg, self.rng,
                            self.gen) for i, (_, _, c, _) in enumerate(units)]
        t0 = time.perf_counter()
        shown = [i for i, (draw, unit) in enumerate(zip(draws, units)) if draw is not None and (cfg.full_tests or unit[3])]
        requests = [(units[i][2], paste_footprints(draws[i], units[i][0], units[i][1])) for i in shown]
        made = self.made(requests) if shown else []
        own: dict[int, torch.Tensor] = {}
        for i, (_, (rows, _)), fps in zip(shown, requests, made):
            own[i] = fps[np.searchsorted(rows, draws[i].donor_rows)]
        agreements = {i: footprint_facts(draws[i], own[i])["agreement"] for i in shown}
        pasted = [i for i in shown if cfg.full_tests or agreements[i] >= cfg.min_agreement]
        pastes = {i: paste_test(self.scorer, self.analysed, self.rows_index, draws[i], own[i], units[i][2],
                                self.recipients, self.clean_logits, cfg)
                  for i in tqdm(pasted, desc="paste", disable=not self.progress)}
        t1 = time.perf_counter()
        deleted = list(range(len(units))) if cfg.full_tests else pasted
        with CellReplacement(self.layer, mean_activation(self.store), self.layout) as replacement:
            self.expand = replacement.can_expand(self.model, self.recipients.to(self.device), grid)
            drops, clean = run_deletions(self.model, replacement, self.expand, self.analysed, self.rows_index, labels,
                                         [plans[i] for i in deleted], cfg, self.progress) if deleted else ([], [])
        self.timings["paste"] = round(self.timings["paste"] + t1 - t0, 3)
        self.timings["deletion"] = round(self.timings["deletion"] + time.perf_counter() - t1, 3)
        for key, count in (("units", len(units)), ("footprints", len(shown)), ("paste", len(pasted)),
                           ("deletion", len(deleted))):
            self.tests_run[key] += count
        results = []
        for i, (_, _, c, _) in enumerate(units):
            chosen, _, counts = plans[i]
            deletion = None
            if i in deleted and chosen.size:
                j = deleted.index(i)
                deletion = deletion_summary(drops[j], clean[j], chosen, counts, labels, c, len(self.store.class_names))
            early = draws[i] is not None and not cfg.full_tests
            skipped = {test for test, ran in (("footprints", i in own), ("paste", i in pastes)) if early and not ran}
            skipped |= set() if i in deleted else {"deletion"}
            results.append((deletion, pastes.get(i), agreements.get(i), skipped))
        return results, holders

    def footprints(self, c: int) -> Footprints:
        """The footprint maker for units of class c: saliency against :func:`saliency_reference` of c (the mean
        held-out image of the other classes); the receptive fields are measured on first use (a study whose units all
        fail the earlier tests needs none)."""
        if self._fields is None:
            t0 = time.perf_counter()
            images = images_at(self.analysed, self.rows_index[self.field_rows], self.cfg.batch_size)[0]
            self._fields = cell_fields(self.model, self.layer, images.to(self.device), self.cfg.batch_size, self.layout)
            self.timings["fields"] = round(time.perf_counter() - t0, 3)
        return Footprints(self.model, self.layer, self._fields,
                          saliency_reference(self.recipients, self.recipient_labels, c), self.cfg.field_threshold,
                          self.cfg.saliency_threshold, self.cfg.batch_size, self.layout)

    def cache(self, c: int) -> FootprintCache:
        """Class c's footprints of (store row, cell mask) pairs, each made once."""
        if c not in self._caches:
            self._caches[c] = FootprintCache(self.footprints(c), self.analysed, self.rows_index, self.cfg.batch_size)
        return self._caches[c]

    def made(self, requests: list[tuple[int, tuple[np.ndarray, np.ndarray]]]) -> list[torch.Tensor]:
        """Footprints per request of (class, (store rows, cell masks)), each class's requests in one stream."""
        out: list[torch.Tensor | None] = [None] * len(requests)
        for c in sorted({c for c, _ in requests}):
            mine = [i for i, (k, _) in enumerate(requests) if k == c]
            for i, fps in zip(mine, self.cache(c)([requests[i][1] for i in mine])):
                out[i] = fps
        return out  # type: ignore[return-value]

    def gallery_footprints(self, requests: list[tuple[np.ndarray, list[int], int, int]]) -> list[list[str]]:
        """Each unit's footprints in its gallery images (packed, for the report), for requests of (assignment, gallery
        rows, unit id, class), all in one stream per class."""
        asked = [(c, (np.asarray(g, dtype=np.int64), a[np.asarray(g, dtype=np.int64)] == u)) for a, g, u, c in requests]
        return [[pack_mask(m.numpy()) for m in masks] for masks in self.made(asked)]

