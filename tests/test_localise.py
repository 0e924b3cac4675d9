"""Localisation of a suspect concept: the saliency reference, masks, carrier scores and the onset over training,
checked by hand; then the hard planted case (:mod:`i2x.planted.localisation`: a small bright L on 90% of one class, so
the mean image holds it), where the masks must lie on the L, the carrier scores must rank its carriers first and the
onset must fall where the model starts to use the L; its clean twin must raise no shortcut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation
from torch import nn

from test_shortcut import _ones_stack

from i2x import api
from i2x.analysis.concepts import pieces
from i2x.attribution.receptive_field import Footprints, cell_fields
from i2x.attribution.tokens import Layout
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.planted import PLANTED, synthetic
from i2x.planted import localisation as artefacts
from i2x.stages.config import RunConfig
from i2x.stages.context import build_context
from i2x.stages.reliance.localise import localisation_lines
from i2x.stages.reliance.masks import (agreeing, concept_mask, lead_masks_over_training, sample_masks, unit_masks,
                                       write_masks)
from i2x.stages.reliance.onset import onset
from i2x.stages.reliance.paste import saliency_reference
from i2x.stages.reliance.retrieval import carrier_scores, ranked, truth_metrics, unit_hot_cells
from i2x.stages.reliance.verdict import tightest_first, unit_name


# ---- the saliency reference ------------------------------------------------------------------------
def test_saliency_reference_is_the_other_classes_mean():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    labels = torch.tensor([0, 1, 1, 2])
    np.testing.assert_allclose(saliency_reference(images, labels, 1).numpy(), np.full((1, 2, 2), 1.5))   # (0 + 3) / 2
    np.testing.assert_allclose(saliency_reference(images, labels, 0).numpy(), np.full((1, 2, 2), 2.0))  # (1+2+3)/3
    # no other class held out: every image
    np.testing.assert_allclose(saliency_reference(images, torch.ones(4, dtype=torch.long), 1).numpy(),
                               np.full((1, 2, 2), 1.5))


def test_a_marker_most_of_the_class_carries_is_kept_against_the_other_classes():
    """With the linear ones stack a pixel's saliency is (path count) x (image - reference). Three quarters of the
    recipients are class 1 and carry a bright 2x2 marker, so the mean recipient holds most of it: against that mean
    the marker's pixels weigh little more than the donor's texture and the footprint spills onto the texture; against
    the other class's mean (no marker) the footprint is the marker."""
    gen = torch.Generator().manual_seed(0)
    recipients = 0.3 + 0.1 * torch.rand(8, 1, 8, 8, generator=gen)
    labels = torch.tensor([0, 1, 1, 1] * 2)
    recipients[labels == 1, 0, 2:4, 1:3] = 1.0
    donor = 0.3 + 0.2 * torch.rand(1, 1, 8, 8, generator=gen)      # a grainier image of class 1, with the marker
    donor[0, 0, 2:4, 1:3] = 1.0
    model = _ones_stack()
    fields = cell_fields(model, model[1], torch.randn(2, 1, 8, 8))
    cells = torch.zeros(1, 4, 4, dtype=torch.bool)
    cells[0, 1, 1] = True
    marker = np.zeros((8, 8), bool)
    marker[2:4, 1:3] = True

    def footprint(reference: torch.Tensor) -> np.ndarray:
        return Footprints(model, model[1], fields, reference, 1e-6, 0.4)(donor, cells)[0].numpy()

    old = footprint(recipients.mean(dim=0))
    new = footprint(saliency_reference(recipients, labels, 1))
    np.testing.assert_array_equal(new, marker)
    assert (old & ~marker).sum() > 0                                 # the old reference spills onto the texture


# ---- masks -----------------------------------------------------------------------------------------
def test_agreeing_pixels_by_hand():
    masks = np.zeros((4, 3, 3), bool)
    masks[:, 0, 0] = True                        # in every footprint
    masks[:2, 1, 1] = True                       # in half
    masks[0, 2, 2] = True                        # in one
    expected = np.zeros((3, 3), bool)
    expected[0, 0] = expected[1, 1] = True
    np.testing.assert_array_equal(agreeing(masks, 0.5), expected)
    np.testing.assert_array_equal(agreeing(masks, 0.75), expected & (np.arange(9).reshape(3, 3) == 0))
    assert not agreeing(np.zeros((0, 3, 3), bool), 0.5).any()


def test_unit_masks_agree_over_the_class_and_mark_the_samples_that_carry_it():
    """Unit 1 sits at cell (0, 0) in samples 0-2 (class 1) and 3 (class 0). Samples 0-2 carry a bright 2x2 block
    and a stray bright pixel of their own; each footprint is an image's bright pixels. The concept's mask keeps what
    most class-1 footprints share (the block; sample 3 does not vote), and a sample's mask is the part of it where
    the sample is nearer the class-1 holders' mean image than the reference (sample 3, without the block: none)."""
    assign = np.zeros((5, 2, 2), np.int64)
    assign[:4, 0, 0] = 1
    labels = np.array([1, 1, 1, 0, 1])
    images = torch.zeros(5, 1, 4, 4)
    images[:3, 0, :2, :2] = 1.0
    for i in range(3):
        images[i, 0, 3, i] = 1.0
    seen: list[int] = []

    def footprints(x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return (x[:, 0] > 0.5) & cells.flatten(1).any(dim=1)[:, None, None]

    m = unit_masks(assign, labels, 1, 1, lambda rows: images[torch.as_tensor(rows)], footprints,
                   torch.zeros(1, 4, 4), share=0.5, batch_size=2)
    np.testing.assert_array_equal(m["rows"], [0, 1, 2, 3])
    block = np.zeros((4, 4), bool)
    block[:2, :2] = True
    np.testing.assert_array_equal(m["concept"], block)
    np.testing.assert_array_equal(m["samples"], np.stack([block, block, block, np.zeros((4, 4), bool)]))
    assert seen == [2, 1]                                   # footprints of the class-1 holders only, in batches


def test_masks_round_trip_through_the_analysis_directory(tmp_path):
    samples = np.zeros((3, 5, 7), bool)
    samples[0, 1, 2] = samples[2, 4, 6] = True
    concept = samples.any(axis=0)
    write_masks(tmp_path, {4: {"rows": np.array([2, 5, 9]), "samples": samples, "concept": concept}},
                {0: np.zeros((5, 7), bool)})
    np.testing.assert_array_equal(concept_mask(tmp_path, 4), concept)
    rows, back = sample_masks(tmp_path, 4)
    np.testing.assert_array_equal(rows, [2, 5, 9])
    np.testing.assert_array_equal(back, samples)
    over = lead_masks_over_training(tmp_path)
    assert list(over) == [0] and over[0].shape == (5, 7) and not over[0].any()
    with pytest.raises(UserError, match="holds masks of concepts 4"):
        concept_mask(tmp_path, 3)
    with pytest.raises(UserError, match="i2x reliance"):
        concept_mask(tmp_path / "none", 4)


# ---- which concept leads, joins, names -------------------------------------------------------------
def _row(k: int, agreement: float, passes: bool = True) -> dict:
    return {"id": k, "checks": {"class_tied": True, "fixed_in_place": True, "paste": passes, "deletion": True},
            "transplant": {"agreement": agreement}}


def test_the_tightest_passing_concept_leads():
    rows = [_row(0, 0.6), _row(1, 0.75), _row(2, 0.9, passes=False), _row(3, 0.75)]
    assert tightest_first(rows, [0, 1, 3, 2]) == [1, 0, 3, 2]        # 2 is tighter but fails; 1 before 3 on the tie
    assert tightest_first([_row(0, 0.9, False), _row(1, 0.2, False)], [1, 0]) == [1, 0]


def test_joined_pieces_stay_within_max_share():
    cells = np.zeros((4, 5, 5))
    cells[0, 0, 0] = cells[1, 0, 1] = cells[2, 0, 2] = 10
    cells[3, 0, 3:5] = 10                                            # two hot cells
    assert pieces(0, [1, 2, 3], cells) == [0, 1, 2, 3]
    assert pieces(0, [1, 2, 3], cells, max_cells=3) == [0, 1, 2]      # 3 would make five hot cells


def test_a_joined_concept_names_the_pieces_that_failed_the_paste_alone():
    row = {"id": 9, "members": [1, 2, 5], "pieces": [3, 4], "failed_paste_alone": [4]}
    assert unit_name(row) == "concept C9 (concepts C3, C4 joined; C4 failed the paste test on its own: P1, P2, P5)"
    assert "failed" not in unit_name({**row, "failed_paste_alone": []})


# ---- carriers and onset ----------------------------------------------------------------------------
class _Identity(nn.Module):
    """The input itself is the layer's output: the channels of each pixel are its features."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).mean(dim=(1, 2, 3))[:, None]


def test_carrier_scores_project_onto_the_concept_direction_at_its_hot_cells():
    x = torch.zeros(3, 2, 2, 2)
    x[0, :, 0, 0] = torch.tensor([2.0, 0.0])    # the concept's pattern at its cell: score 1
    x[1, :, 0, 0] = torch.tensor([1.0, 5.0])    # half of it (the second channel is off the direction)
    x[2, :, 1, 1] = torch.tensor([4.0, 0.0])    # strong, but not at a hot cell
    hot = np.array([[True, False], [False, False]])
    model = _Identity()
    data = torch.utils.data.TensorDataset(x, torch.tensor([1, 0, 1]))
    scores, labels = carrier_scores(model, model.layer, Layout("bchw"), data,
                                    [(np.array([2.0, 0.0], np.float32), hot)], torch.zeros(2), batch_size=2)
    np.testing.assert_allclose(scores[:, 0], [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(labels, [1, 0, 1])


def test_hot_cells_of_a_unit_in_its_class():
    assign = np.zeros((3, 2, 2), np.int64)
    assign[0, 0, 0] = assign[1, 0, 0] = assign[1, 0, 1] = 1
    assign[2, 1, 1] = 1                                                  # another class: does not count
    np.testing.assert_array_equal(unit_hot_cells(assign, 1, np.array([1, 1, 0]), 1), [[True, True], [False, False]])


def test_ranking_and_its_truth_metrics_by_hand():
    scores = np.array([0.2, 0.9, 0.5, 0.1])
    out = ranked(scores, np.array([10, 11, 12, 13]), np.array([0, 1, 1, 0]), ["a", "b"], truth=np.array([11, 13]))
    assert [s["index"] for s in out["samples"]] == [11, 12, 10, 13]
    assert out["samples"][0] == {"index": 11, "label": 1, "class_name": "b", "score": 0.9}
    # carriers 11 (0.9) and 13 (0.1) against 12 (0.5) and 10 (0.2): 2 of 4 pairs ordered right
    assert out["truth"]["auroc"] == pytest.approx(0.5)
    assert out["truth"]["ap"] == pytest.approx((1 + 2 / 4) / 2)
    assert truth_metrics(scores, np.ones(4, bool))["auroc"] is None      # one kind only: undefined


def test_onset_is_the_first_passing_checkpoint():
    assert onset([{"passes": False}, {"passes": True}, {"passes": False}, {"passes": True}]) == 1
    assert onset([{"passes": False}]) is None


# ---- the planted sets ------------------------------------------------------------------------------
def test_corner_l_sets_carry_the_l_on_most_of_one_class_only():
    data, clean, three = PLANTED["L-carriers"](), PLANTED["L-carriers-clean"](), PLANTED["L-carriers-3class"]()
    assert data.class_names == ["normal", "marked"] and three.class_names == ["normal", "marked", "dark"]
    mask = artefacts.artefact_mask()
    assert mask.sum() == 2 * 8 + 2 * 6 and mask[3:11, 3:5].all() and mask[9:11, 3:11].all()
    for ds in (data, three):
        for split in ("train", "test"):
            x, y = ds.split(split).tensors
            carriers = artefacts.carriers(ds, split)
            assert set(y[carriers].tolist()) == {artefacts.MARKED_CLASS}
            assert 0.85 < len(carriers) / int((y == artefacts.MARKED_CLASS).sum()) < 0.95
            raw = ds.denormalize(x)[:, 0].numpy()
            bright = (raw[:, mask] > 0.99).all(axis=1)                  # the L's pixels at full brightness ...
            np.testing.assert_array_equal(np.flatnonzero(bright), carriers)   # ... on the carriers only
    assert len(artefacts.carriers(clean, "train")) == 0
    np.testing.assert_allclose(clean.denormalize(clean.split("train").tensors[0])[1, 0, 20:].numpy(),
                               data.denormalize(data.split("train").tensors[0])[1, 0, 20:].numpy(), atol=1e-5)


# ---- slow: the hard case end to end ----------------------------------------------------------------
STEPS, LR = 60, 3e-4


def _run(tmp: Path, kind: str, seed: int) -> tuple[Path, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with synthetic.planted_seed(seed):
            artefacts.train_with_snapshots(PLANTED[kind](), tmp / "ck", steps=STEPS, seed=seed, lr=LR)
            api.extract(config=RunConfig(checkpoints=str(tmp / "ck"), data=f"planted:{kind}"), out=tmp / "an", progress=False)
            api.analyze(tmp / "an", progress=False)
            api.reliance(tmp / "an", progress=False, trust_analysis=True)
    finally:
        torch.set_num_threads(threads)
    return tmp / "an", json.loads((tmp / "an" / "reliance.json").read_text())


def _on_and_cover(mask: np.ndarray, artefact: np.ndarray) -> tuple[float, float]:
    near = binary_dilation(artefact, structure=np.ones((3, 3), bool), iterations=2)
    return float((mask & near).sum() / max(mask.sum(), 1)), float((mask & artefact).sum() / artefact.sum())


@pytest.mark.slow
def test_the_hard_case_is_localised_retrieved_and_dated(tmp_path):
    seed = 1
    out, result = _run(tmp_path, "L-carriers", seed)
    with synthetic.planted_seed(seed):
        ctx = build_context(RunConfig(checkpoints=str(tmp_path / "ck"), data="planted:L-carriers"))
        effects = []
        for checkpoint in ctx.checkpoints:
            ctx.load(checkpoint)
            effects.append(artefacts.artefact_effect(ctx.model, ctx.data))
        carriers = artefacts.carriers(ctx.data, "train")
    assert effects[-1]["flip_rate"] > 0.9 and effects[-1]["rate_clean"] < 0.1     # the final model uses the L
    assert result["shortcut_found"], result["verdict"]
    loc = result["localisation"]
    lead = loc["suspects"][0]
    assert lead == result["suspect"]
    artefact = artefacts.artefact_mask()
    on, cover = _on_and_cover(concept_mask(out, lead), artefact)
    assert on >= 0.7 and cover >= 0.7, (on, cover)
    rows, masks = sample_masks(out, lead)
    carrying = np.isin(Store.open(out).read("sample_index")[rows], carriers)
    assert carrying.sum() >= 0.9 * len(carriers)                     # the lead is held by (nearly) every carrier
    on, cover = np.mean([_on_and_cover(m, artefact) for m in masks[carrying]], axis=0)
    assert on >= 0.7 and cover >= 0.7, (on, cover)
    for split in ("train", "test"):
        assert loc["truth"][str(lead)][split]["auroc"] >= 0.95
    samples = json.loads((out / "shortcut_samples.json").read_text())
    top = samples["concepts"][0]["splits"]["train"]["samples"][:50]
    assert all(s["index"] in set(carriers.tolist()) for s in top)      # the worst offenders carry the L
    # the onset: where painting the L first turns more than half as many images as at the end (of those the model
    # does not already call marked), give or take one checkpoint
    over = loc["over_training"]
    names = [c.name for c in ctx.checkpoints]
    truth = next(i for i, e in enumerate(effects) if e["flip_rate"] > effects[-1]["flip_rate"] / 2)
    assert over["onset"] is not None and abs(names.index(over["onset"]) - truth) <= 1, (over["onset"], truth)
    assert not over["checkpoints"][0]["passes"]                        # the untrained model has no shortcut


@pytest.mark.slow
def test_the_hard_case_clean_twin_raises_no_shortcut(tmp_path):
    _, result = _run(tmp_path, "L-carriers-clean", 1)
    assert not result["shortcut_found"] and result["verdict"].startswith("No shortcut found"), result["verdict"]
    assert "over_training" not in result["localisation"]        # no shortcut: nothing formed, nothing traced


def test_the_cli_says_what_it_could_not_check():
    loc = {"suspects": [3], "masks": {"3": {"pixels": 21}},
           "truth": None, "over_training": {"onset": "epoch_2.pt"}}
    lines = localisation_lines({"localisation": loc, "shortcut_found": True})
    assert "i2x cannot check that ranking" in lines[1]
    assert lines[2].endswith("first passes at checkpoint epoch_2.pt")
    lines = localisation_lines({"localisation": {**loc, "over_training": None}, "shortcut_found": False})
    assert lines[2] == "  no shortcut, so when it formed was not traced over the checkpoints"
    loc = {**loc, "truth": {"3": {"train": {"auroc": 0.99, "ap": 0.9}, "test": {"auroc": None, "ap": None}}}}
    lines = localisation_lines({"localisation": {**loc, "over_training": None}, "shortcut_found": True})
    assert lines[1] == "  against the planted carriers: train AUROC 0.990, AP 0.900"
    assert "final checkpoint only" in lines[2]
