"""Revision of a found shortcut: the planted hard case (its ground truth and that a model really uses its L), the
re-evaluation measures against hand computations, the fixes' pastes and penalties, and end to end (slow) that
counterfactual augmentation removes the planted shortcut where exclusion does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from i2x import api
from i2x.errors import UserError
from i2x.planted import PLANTED, artefact
from i2x.stages.revision.measure import attacked, measure
from i2x.stages.revision.methods import Artefact, _paste


pytestmark = pytest.mark.usefixtures("one_thread")


def _raw(data, split: str) -> np.ndarray:
    """The split's images [N, H, W] back in [0, 1] (undoing the data's normalisation)."""
    x = data.split(split).tensors[0][:, 0].numpy()
    return x * data.std[0] + data.mean[0]


def test_corner_l_sets_carry_the_l_where_the_truth_says():
    data, clean, three = PLANTED["corner-L"](), PLANTED["corner-L-clean"](), PLANTED["corner-L-3class"]()
    mask = artefact.artefact_mask()
    y = data.split("train").tensors[1].numpy()
    carriers = artefact.carriers(data)
    assert set(y[carriers]) == {artefact.ARTEFACT_CLASS}
    assert abs(carriers.size / (y == artefact.ARTEFACT_CLASS).sum() - artefact.ARTEFACT_RATE) < 0.05
    raw = _raw(data, "train")
    assert np.allclose(raw[carriers][:, mask], 1.0, atol=1e-5)            # the L is painted, bright, on carriers
    others = np.setdiff1d(np.arange(len(y)), carriers)
    assert raw[others][:, mask].max() < 0.9                                 # and nowhere else
    assert artefact.carriers(data, "test").size == 0 and _raw(data, "test")[:, mask].max() < 0.9
    assert artefact.carriers(clean).size == 0 and _raw(clean, "train")[:, mask].max() < 0.9
    assert three.class_names == ["plain", "marked", "dark"]
    y3 = three.split("train").tensors[1].numpy()
    assert set(y3[artefact.carriers(three)]) == {artefact.ARTEFACT_CLASS}


class _CornerModel(nn.Module):
    """Class 1 exactly when pixel (2, 2) is above 0.5; ``features`` (identity) is the CAM layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.features.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        score = 10 * (a[:, 0, 2, 2] - 0.5)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_attacked_pastes_donor_pixels_under_the_mask_only():
    images, donors = torch.zeros(3, 1, 4, 4), torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 2.0)])
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, :2] = True
    out = attacked(images, mask, donors)
    assert out[:, 0, 0, :2].tolist() == [[1, 1], [2, 2], [1, 1]]           # donor i % D into image i
    assert out[:, 0][:, ~mask].abs().sum() == 0


def test_measure_matches_a_hand_computation():
    """Test set: 4 other-class images (one already bright at (2, 2)) and 2 marked ones; the donor's mask covers
    (2, 2), so every other-class image is called the marked class once pasted."""
    images = torch.zeros(6, 1, 5, 5)
    images[0, 0, 2, 2] = 1.0                         # an other-class image already called class 1
    images[4:, 0, 2, 2] = 1.0                        # the marked class, right
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[1:3, 1:3] = True
    donors = torch.zeros(1, 1, 5, 5)
    donors[0, 0][mask] = 1.0
    m = measure(_CornerModel(), images, labels, mask, donors, 1, "features", torch.device("cpu"))
    assert m["clean_accuracy"] == pytest.approx(5 / 6)
    assert m["attacked_accuracy"] == pytest.approx(2 / 6)                    # only the two marked images stay right
    assert m["gap"] == pytest.approx(1.0 - 0.25)
    assert m["flip_rate"] == pytest.approx(1.0)                               # 3 of the 3 not called it before
    assert m["cam_share"] == pytest.approx(1.0)                               # all activation lies on the mask
    assert m["attacked_images"] == 4


def test_augmentation_pastes_onto_other_classes_and_the_control_elsewhere():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2, :3] = True
    art = Artefact(mask, torch.ones(5, 1, 8, 8), np.arange(5), marked_class=1, rate=1.0)
    x, y = torch.zeros(6, 1, 8, 8), torch.tensor([0, 1, 0, 1, 0, 2])
    out = _paste(x, y, art, False, torch.Generator().manual_seed(0))
    assert out[y != 1][:, 0][:, mask].eq(1).all() and out[y != 1][:, 0][:, ~mask].eq(0).all()
    assert out[y == 1].eq(0).all()                                            # the marked class is left alone
    control = _paste(x, y, art, True, torch.Generator().manual_seed(0))
    assert (control[y != 1][:, 0].flatten(1).sum(1) == mask.sum()).all()       # same shape and area ...
    assert not control[y != 1][:, 0][:, mask].eq(1).all()                     # ... elsewhere


def test_a_paste_test_is_inconclusive_when_random_patches_flip_too_much():
    from i2x.stages.revision.retest import outcome

    row = {"passes": False, "flip_rate": 0.9, "random_flip_rate": 0.3}
    assert outcome(row, 0.25) == "inconclusive" and outcome(row, 0.3) == "fails"   # at the bar: conclusive
    assert outcome({**row, "passes": True}, 0.25) == "passes"
    assert outcome({"passes": False, "flip_rate": None, "random_flip_rate": None}, 0.25) == "not run"


def test_finetune_help_lists_the_fixes(capsys):
    from i2x.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "{augment,rrclarc,rrr,exclude,all}" in capsys.readouterr().out


def test_a_missing_reliance_study_is_a_user_error(tmp_path):
    from i2x.stages.revision.concept import concept_mask

    with pytest.raises(UserError, match="i2x reliance"):
        concept_mask(tmp_path, None, (28, 28))


# ---- end to end on the planted hard case ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hard_case(tmp_path_factory) -> tuple[Path, Path]:
    """planted:corner-L: the small CNN (6 epochs), the pipeline with reliance, and the true L as a .npy."""
    root = tmp_path_factory.mktemp("revise")
    api.train(data="planted:corner-L", out=root / "ck", epochs=6, seed=0, progress=False)
    api.run(checkpoints=str(root / "ck"), data="planted:corner-L", out=root / "an", progress=False)
    np.save(root / "truth.npy", artefact.artefact_mask())
    return root / "an", root / "truth.npy"


@pytest.mark.slow
def test_augmentation_removes_the_planted_shortcut_and_the_controls_do_not(hard_case):
    from i2x.io.store import Store
    from i2x.planted.synthetic import marker_effect
    from i2x.stages.context import open_context
    from i2x.stages.revision.concept import concept_mask, reliance_concept

    out, truth = hard_case
    effect = marker_effect(open_context(Store.open(out)).model, PLANTED["corner-L"](), artefact.PLACE)
    assert effect["rate_marked"] - effect["rate_clean"] > 0.4, f"the model does not use the L: {effect}"
    lead = reliance_concept(out, None)
    mask = concept_mask(out, None, (28, 28))
    assert (mask & artefact.artefact_mask()).sum() >= 0.5 * artefact.artefact_mask().sum(), "the mask misses the L"
    assert f" --concept {lead['id']} --fix augment</code>" in _verdict_body(out)   # no revision yet: how to revise
    record = api.revise(out, fix="augment", seeds=1, artefact_mask=str(truth), progress=False)
    assert record["concept"] == lead["id"] and record["class_name"] == "marked"
    before, m = record["before"], record["methods"]
    assert before["gap"] > 0.4
    assert m["augment"]["gap"]["mean"] <= 0.10
    assert m["augment"]["clean_accuracy"]["mean"] >= before["clean_accuracy"] - 0.02
    for control in ("random-patch", "none"):
        assert m[control]["gap"]["mean"] > 0.4, f"{control} removed the shortcut too: {m[control]['gap']}"
    saved = json.loads((out / "finetune" / "finetune.json").read_text())["revision"]
    assert saved["before"] == pytest.approx(before) and len(saved["runs"]) == 4
    assert (out / "finetune" / "revision" / "augment" / "seed0.pt").is_file()
    _check_paste_test(out, lead, saved)
    _check_report(out, lead, saved)
    again = api.revise(out, measure=True, artefact_mask=str(truth), progress=False)   # measure alone: no runs
    assert again["runs"] == [] and again["before"] == pytest.approx(before)
    saved = json.loads((out / "finetune" / "finetune.json").read_text())
    assert saved["measure"]["before"] == pytest.approx(before) and len(saved["revision"]["runs"]) == 4
    revised = out / "finetune" / "revision" / "augment" / "seed0.pt"                # a revised model, measured alone
    after = api.revise(out, measure=True, after=str(revised), artefact_mask=str(truth), progress=False)["before"]
    assert after["gap"] == pytest.approx(record["runs"][0]["gap"]) and after["gap"] <= 0.10
    with pytest.raises(UserError, match="--fix METHOD"):
        api.revise(out)


def _verdict_body(out: Path) -> str:
    from i2x.reporting.inputs import ReportInputs
    from i2x.reporting.sections.verdict import verdict_section

    return verdict_section(ReportInputs.open(out)).body


def _lead_test_of(out: Path, weights: Path | None, concept: dict) -> dict:
    """The reliance study's paste test of ``concept`` under saved ``weights`` (None: the final checkpoint), set up
    here as its over_training does: the study's settings, the first draw of its seeded generator as recipients, the
    concept's holders of its class and the seeded field images."""
    from i2x.attribution import get_layer
    from i2x.attribution.tokens import Layout
    from i2x.io.store import Store
    from i2x.stages.context import open_context
    from i2x.stages.reliance.config import RelianceConfig
    from i2x.stages.reliance.deletion import images_at
    from i2x.stages.reliance.onset import lead_test
    from i2x.stages.reliance.paste import recipient_pool

    store = Store.open(out)
    ctx = open_context(store)
    if weights is not None:
        ctx.model.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
    cfg = RelianceConfig(**json.loads((out / "reliance.json").read_text())["config"])
    assign, labels, rows_index = store.read("analysis/assign"), store.read("labels"), store.read("sample_index")
    held = np.isin(assign, concept["members"])
    holders = np.flatnonzero(held.reshape(len(held), -1).any(axis=1) & (labels == concept["class"]))
    field_rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(rows_index))[: cfg.field_images])
    analysed = ctx.data.split(ctx.config.split)
    recipients, recipient_labels, _ = recipient_pool(ctx, cfg, np.random.default_rng(cfg.seed))
    row, _ = lead_test(ctx.model, get_layer(ctx.model, store.attrs["layer"]),
                       Layout.from_dict(store.attrs.get("layer_layout")), analysed, np.where(held, concept["id"], -1),
                       concept["id"], concept["class"], holders, rows_index, recipients, recipient_labels,
                       images_at(analysed, rows_index[field_rows], cfg.batch_size)[0], cfg)
    return row


def _check_paste_test(out: Path, lead: dict, record: dict) -> None:
    """The revision's paste test: before is the final checkpoint's row over training; augment's seed is the reliance
    test under its saved weights, which no longer passes, while plain fine-tuning's still does."""
    paste = record["paste"]
    over = json.loads((out / "reliance.json").read_text())["localisation"]["over_training"]
    assert paste["concept"] == over["concept"] == lead["id"]
    assert paste["before"] == pytest.approx({k: over["checkpoints"][-1][k] for k in paste["before"]})
    assert paste["before"]["excess_flip"] > 0.4
    row = _lead_test_of(out, out / "finetune" / "revision" / "augment" / "seed0.pt", lead)
    augment = paste["methods"]["augment"]
    assert record["runs"][0]["method"] == "augment" and record["runs"][0]["paste"] == pytest.approx(row)
    for key in ("flip_rate", "random_flip_rate", "excess_flip"):
        assert augment[key]["values"] == pytest.approx([row[key]]) and augment[key]["mean"] == pytest.approx(row[key])
    assert augment["outcomes"] == ["fails"] and not row["passes"] and paste["before_outcome"] == "passes"
    assert paste["methods"]["none"]["outcomes"] == ["passes"]


def _check_report(out: Path, lead: dict, record: dict) -> None:
    """The reliance section's over-training chart holds the revised points after the final checkpoint and says
    whether revision undid the shortcut; the verdict card links to the revision results, an anchor of the page."""
    from i2x.reporting.inputs import ReportInputs
    from i2x.reporting.page import esc
    from i2x.reporting.sections.finetune import finetune_section
    from i2x.reporting.sections.reliance import reliance_section

    r = ReportInputs.open(out)
    reliance = reliance_section(r).body
    rows = [row for rows in r.charts.specs["chart-reliance-onset"]["datasets"].values() for row in rows
            if "method" in row]
    paste = record["paste"]["methods"]
    assert {(row["method"], row["what"]): row["rate"] for row in rows} == pytest.approx(
        {(m, what): paste[m][key]["mean"] for m in paste
         for what, key in (("its paste", "flip_rate"), ("random patches", "random_flip_rate"))})
    assert all(row["low"] is None and row["high"] is None for row in rows)        # one seed: no interval
    assert f"After augment, its paste flips {paste['augment']['flip_rate']['mean']:.0%} (1 seed: no interval)" in \
        reliance and "its paste test no longer passes." in reliance
    assert "After none, its paste flips" in reliance and "its paste test still passes." in reliance
    verdict = _verdict_body(out)
    assert 'href="#finetune-revision"' in verdict and 'id="finetune-revision"' in finetune_section(r).body
    assert esc(record["verdict"][0]) in verdict and "--fix augment" not in verdict   # revised: no command to revise
