"""Reliance: analytic checks of the interventions, then a planted shortcut the model is shown to use.

The planted data put the top-left marker on 90% of one class's training images and on no other
image (:func:`exclusive_shortcut_data`; ``planted.shortcut_data`` also marks 5% of the other
classes, which teaches the small CNN to mostly ignore the marker). The test first checks by
direct input intervention that the trained model leans on the marker, then that the concept
holding the marker's prototype is among the top 3 of the evidence ranking. The marker's
prototype is found by its locations, never by id. (The harder two-class planted shortcuts are in
tests/test_shortcut.py.)
"""

from __future__ import annotations

import re

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from i2x import api
from i2x.stages.context import build_context
from i2x.stages.config import RunConfig
from i2x.io.data import ImageData
from i2x.metrics.reliance import concentration, evidence_order, presence_stats, shortcut_checks
from i2x.attribution.interventions import CellReplacement, deletion_margins, margin, random_cells, transplant_logits
from i2x.stages.reliance.verdict import rank, split_piece, ran_sentence, verdict
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.sections.reliance import reliance_section
from i2x.io.store import Store

import planted
from planted import SHORTCUT_CLASS, TOP_LEFT, marked_test_images, marker_mask, planted_seed

from i2x.planted import synthetic

SPEC = f"{Path(__file__).resolve()}:exclusive_shortcut_data"
EPOCHS = 6


def exclusive_shortcut_data() -> ImageData:
    """Digits with the top-left marker on 90% of SHORTCUT_CLASS's training images and on no other image."""
    rng = np.random.default_rng(planted._seed())
    split = planted._digits_split()
    y = split["train"][1]
    marked = {"train": (y == SHORTCUT_CLASS) & (rng.random(len(y)) < 0.9),
              "test": np.zeros(len(split["test"][1]), dtype=bool)}
    return planted._planted(marked, TOP_LEFT, "exclusive-shortcut")


# ---- analytic checks ---------------------------------------------------------------------------
class Weighted(nn.Module):
    """logit_j = sum over channels and cells of W[j] * A, where A is the output of ``feat`` (the identity)."""

    def __init__(self, weights: torch.Tensor, skip: bool = False) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.weights = nn.Parameter(weights, requires_grad=False)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feat(x)
        if self.skip:  # the later part also reads the input: expansion at the layer must be refused
            a = a + 0.0 * x
        return torch.einsum("bchw,mchw->bm", a, self.weights)


def _tiny() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 1-channel 2x2 maps, weights of two classes, and a fill value."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, -1.0], [0.0, 2.0]]]], dtype=torch.float64)
    w = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[0.0, 2.0], [0.0, 0.0]]]], dtype=torch.float64)
    return x, w, torch.tensor([0.5], dtype=torch.float64)


@pytest.mark.parametrize("skip", [False, True])
def test_deletion_hook_matches_hand_computation(skip):
    x, w, fill = _tiny()
    model = Weighted(w, skip=skip)
    # image 0 (label 0): clean logits [10, 4] -> margin 6; delete cell (0,0): [9.5, 4] -> 5.5;
    #   delete cell (0,1): [8.5, 1] -> 7.5.
    # image 1 (label 1): clean logits [6, -2] -> margin -8; delete cell (0,1): [7.5, 1] -> -6.5;
    #   delete cells (0,0) and (1,1): [0.5 - 1 + 0 + 0.5, -2] = [0, -2] -> -2.
    masks = torch.zeros(5, 2, 2, dtype=torch.bool)
    masks[1, 0, 0] = True
    masks[2, 0, 1] = True
    masks[4, 0, 1] = True
    masks_b = torch.zeros(1, 2, 2, dtype=torch.bool)
    masks_b[0, 0, 0] = masks_b[0, 1, 1] = True
    all_masks = torch.cat([masks[:3], masks[3:4], masks[4:5], masks_b])       # image 0: 3 masks, image 1: 3 masks
    counts = torch.tensor([3, 3])
    labels = torch.tensor([0, 1])
    with CellReplacement(model.feat, fill) as replacement:
        assert replacement.can_expand(model, x, (2, 2)) is (not skip)
        for expand in ([False, True] if not skip else [False]):
            got = deletion_margins(model, replacement, x, labels, all_masks, counts, batch_size=2, expand=expand)
            np.testing.assert_allclose(got.numpy(), [6.0, 5.5, 7.5, -8.0, -6.5, -2.0], atol=1e-6)
        assert torch.equal(model(x), torch.einsum("bchw,mchw->bm", x, w))  # the hook is idle outside run()


def test_margin_is_true_class_minus_best_other():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0]])
    np.testing.assert_allclose(margin(logits, torch.tensor([0, 2])).numpy(), [0.5, -5.0])


def test_transplant_pastes_the_donor_footprint_only():
    recipients = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    donors = torch.arange(32, dtype=torch.float64).view(2, 1, 4, 4)
    model = Weighted(torch.ones(1, 1, 4, 4, dtype=torch.float64))               # logit = sum of pixels
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)                          # input-pixel masks
    masks[0, 0, :2, :2] = True                                                 # top-left 2x2 block of donor 0
    masks[1, 1, 2:, 2:] = True                                                 # bottom-right block of donor 1
    got = transplant_logits(model, recipients, donors, masks, batch_size=3)[..., 0]
    d0, d1 = donors[0, 0], donors[1, 0]
    expected = [[float(d0[:2, :2].sum()), 0.0], [0.0, float(d1[2:, 2:].sum())]]
    np.testing.assert_allclose(got.numpy(), expected)


def test_presence_statistics_by_hand():
    # 3 samples on a 2x2 grid; prototype 0 fills sample 0, prototype 1 sits in cell (0,0) of samples 1 and 2.
    assign = np.array([[[0, 0], [0, 0]], [[1, 2], [2, 2]], [[1, 0], [0, 2]]])
    labels = np.array([0, 1, 1])
    s = presence_stats(assign, labels, k=3, m=2)
    np.testing.assert_allclose(s["rate"], [[1.0, 0.5], [0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(s["purity"], [[0.5, 0.5], [0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(s["size"], [3.0, 1.0, 2.0])
    assert s["concentration"][1] == pytest.approx(1.0)                          # always the same single cell
    # prototype 0: cells (0,0) 1, (0,1) 2, (1,0) 2, (1,1) 1 -> entropy of (1,2,2,1)/6, a = 3
    p = np.array([1, 2, 2, 1]) / 6
    h = -(p * np.log(p)).sum()
    assert s["concentration"][0] == pytest.approx((np.log(4) - h) / (np.log(4) - np.log(3)))


def test_concentration_extremes():
    assert concentration(np.array([np.log(5.0)]), np.array([5.0]), 64)[0] == pytest.approx(1.0)   # fixed 5 cells
    assert concentration(np.array([np.log(64.0)]), np.array([1.0]), 64)[0] == pytest.approx(0.0)  # anywhere


def test_random_cells_match_counts():
    rng = np.random.default_rng(0)
    counts = np.array([0, 1, 5, 16])
    masks = random_cells(counts, 3, (4, 4), rng)
    assert masks.shape == (4, 3, 4, 4)
    np.testing.assert_array_equal(masks.sum(axis=(2, 3)), np.repeat(counts[:, None], 3, axis=1))


def test_shortcut_checks_and_evidence_order():
    paste = {"excess_flip": 0.5, "flip_z": 8.0}
    checks = shortcut_checks(0.9, 0.8, paste, {"z": 5.0}, z_threshold=3, min_flip_excess=0.1, min_lift=0.5,
                             min_concentration=0.5)
    assert all(checks.values())
    weak = shortcut_checks(0.9, 0.8, {"excess_flip": 0.05, "flip_z": 8.0}, {"z": 5.0}, 3, 0.1, 0.5, 0.5)
    assert not weak["paste"] and weak["deletion"]
    moving = shortcut_checks(0.9, 0.3, paste, None, 3, 0.1, 0.5, 0.5)
    assert not moving["fixed_in_place"] and not moving["deletion"]
    # passing units first, then by paste flip excess, then by the paste's margin excess
    order = evidence_order(np.array([False, True, False, True]), np.array([0.9, 0.2, 0.9, 0.4]),
                           np.array([1.0, 0.0, 2.0, 0.0]))
    assert order.tolist() == [3, 1, 2, 0]


def _concept(c: int, passes: bool, flip: float = 0.6, random_flip: float = 0.05) -> dict:
    checks = {"class_tied": True, "fixed_in_place": True, "paste": passes, "deletion": True}
    return {"id": c, "members": [c, c + 10], "class": 3, "class_name": "3", "purity": 0.9, "lift": 0.9,
            "concentration": 0.8, "checks": checks, "deletion": {"z": 10.0, "excess": 1.0},
            "transplant": {"flip_rate": flip, "random_flip_rate": random_flip, "flip_z": 9.0 if passes else 1.0}}


def test_verdict_names_the_top_concept_and_says_plainly_when_none():
    text, found = verdict([_concept(4, True), _concept(1, True)], z_threshold=3, min_flip_excess=0.1)
    assert found and text.startswith("Shortcut found: concept C4 (prototypes P4, P14) for class 3")
    assert "turns 60% of them into 3 (random patches of the same shape: 5%" in text
    assert "as deleting 2 of the 2 concepts it ran on does: a weak test" in text and "z 10.0" not in text  # z not quoted
    text, found = verdict([_concept(4, False, flip=0.08), _concept(1, False)], z_threshold=3, min_flip_excess=0.1)
    assert not found and text.startswith("No shortcut found. The strongest evidence is for concept C4")
    assert "against 5% for random patches" in text


def test_tests_not_run_are_named_and_rank_last():
    """A unit that failed an earlier test has no paste or deletion (checks None): the verdict says they were not run
    instead of reading them as failed, and it ranks after every unit with a paste test, even one that lost."""
    skipped = {**_concept(2, False), "transplant": None, "deletion": None, "lift": 0.1,
               "checks": {"class_tied": False, "fixed_in_place": None, "paste": None, "deletion": None}}
    text, found = verdict([skipped], z_threshold=3, min_flip_excess=0.1)
    assert not found and "not run, as it fails an earlier test: fixed in place, paste, deletion" in text
    assert "pasting it" not in text and "deleting it" not in text and "not class-tied (lift 0.10)" in text
    losing = {**_concept(5, False), "transplant": {"excess_flip": -0.1, "logit_excess": -1.0}}
    assert rank([skipped, losing]) == [1, 0]


# ---- a planted shortcut, end to end ------------------------------------------------------------
TWO_CLASS = f"{Path(synthetic.__file__).resolve()}:marker_corner_grey"
TWO_CLASS_EPOCHS = 4


def _planted_run(tmp: Path, seed: int, spec: str = SPEC, epochs: int = EPOCHS) -> tuple[Path, dict]:
    """Train the small CNN on ``spec`` (marker seed = ``seed``) and run the pipeline, reliance included.

    One thread, so the trained weights (float reduction order) are the same on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with planted_seed(seed):
            api.train(data=spec, out=tmp / "ck", epochs=epochs, seed=seed, progress=False)
            api.run(checkpoints=str(tmp / "ck"), data=spec, out=tmp / "an", progress=False)  # includes reliance
    finally:
        torch.set_num_threads(threads)
    return tmp / "an", json.loads((tmp / "an" / "reliance.json").read_text())


def marker_prototype(out: Path, marked_rows: np.ndarray) -> tuple[int, float]:
    """The prototype holding the largest share of the digits marker's cells in the marked images, and that share."""
    store = Store.open(out)
    assign, rows = store.read("analysis/assign"), store.read("sample_index")
    in_marker = np.zeros(assign.shape, dtype=bool)
    in_marker[np.isin(rows, marked_rows)] = marker_mask(store.grid, TOP_LEFT)
    held = np.bincount(assign[in_marker], minlength=int(assign.max()) + 1) / max(in_marker.sum(), 1)
    return int(np.argmax(held)), float(held.max())


def direct_marker_effect(out: Path) -> dict[str, float]:
    """Rate of SHORTCUT_CLASS predictions and its mean probability on other-class test images, clean and marked."""
    ctx = build_context(RunConfig.from_dict(Store.open(out).config))
    ctx.load(ctx.checkpoint("final"))
    model = ctx.model.eval()
    clean, marked = marked_test_images(ctx.data)
    other = ctx.data.split("test").tensors[1] != SHORTCUT_CLASS
    with torch.no_grad():
        p_clean, p_marked = model(clean[other]).softmax(1), model(marked[other]).softmax(1)
    return {"rate_clean": float((p_clean.argmax(1) == SHORTCUT_CLASS).float().mean()),
            "rate_marked": float((p_marked.argmax(1) == SHORTCUT_CLASS).float().mean()),
            "p_clean": float(p_clean[:, SHORTCUT_CLASS].mean()), "p_marked": float(p_marked[:, SHORTCUT_CLASS].mean())}


def _check_relies_on_marker(effect: dict[str, float]) -> None:
    """Precondition: adding the marker makes SHORTCUT_CLASS predictions clearly more common and likelier."""
    assert effect["rate_marked"] >= effect["rate_clean"] + 0.02, f"the model does not use the marker: {effect}"
    assert effect["p_marked"] >= 3 * effect["p_clean"], f"the model does not use the marker: {effect}"


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> tuple[Path, dict]:
    """The two-class grey set with an L marker across 3 cells of the corner (i2x.planted.synthetic), seed 0."""
    return _planted_run(tmp_path_factory.mktemp("reliance"), seed=0, spec=TWO_CLASS, epochs=TWO_CLASS_EPOCHS)


def _marker_concept(out: Path, result: dict) -> tuple[int, float]:
    """The concept holding the largest share of the marker's cells in the marked images, and that share."""
    store = Store.open(out)
    with planted_seed(0):
        marked = synthetic.marker_corner_grey().extra["marked"]["train"]
    shares = synthetic.marker_shares(store.read("analysis/assign"), store.read("sample_index"),
                                     [c["members"] for c in result["concepts"]], marked,
                                     synthetic.marker_cells("corner", store.grid))
    return int(shares.argmax()), float(shares.max())


def test_model_relies_on_the_planted_marker(planted_run):
    out, _ = planted_run
    with planted_seed(0):
        ctx = build_context(RunConfig.from_dict(Store.open(out).config))
        ctx.load(ctx.checkpoint("final"))
        effect = synthetic.marker_effect(ctx.model, ctx.data, "corner")
    assert effect["rate_marked"] >= effect["rate_clean"] + 0.3, f"the model does not use the marker: {effect}"


def test_marker_concept_is_a_top_three_suspect(planted_run):
    out, result = planted_run
    concept, held = _marker_concept(out, result)
    assert held > 0.3, f"no concept holds the marker (best holds {held:.0%} of its cells)"
    rank = result["ranking"].index(concept)
    assert rank < 3, f"marker concept {concept} ranks {rank + 1}: {result['verdict']}"
    assert result["concepts"][concept]["class"] == synthetic.MARKED_CLASS


def test_results_are_consistent_and_in_summary(planted_run):
    out, result = planted_run
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["reliance"]
    assert entry["verdict"] == result["verdict"] and entry["ranking"] == result["ranking"]
    assert [c["id"] for c in entry["concepts"]] == result["ranking"]
    assert json.loads((out / "reliance.json").read_text())["ranking"] == result["ranking"]
    concepts, protos = result["concepts"], result["prototypes"]
    assert sorted(result["ranking"]) == list(range(len(concepts)))
    base = [c for c in concepts if not c.get("pieces")]
    assert sorted(k for c in base for k in c["members"]) == list(range(len(protos)))   # a partition
    for c in base:
        assert all(protos[k]["concept"] == c["id"] for k in c["members"])
    for c in concepts[len(base):]:     # a shortcut split over concepts, joined and tested as a whole
        assert c["id"] == len(base) and len(c["pieces"]) > 1
        assert c["members"] == sorted(k for i in c["pieces"] for k in concepts[i]["members"])
        cfg = result["config"]
        assert all(split_piece(concepts[i], cfg["z_threshold"], cfg["max_random_flip"]) for i in c["pieces"])
        assert any(all(concepts[i]["checks"].values()) for i in c["pieces"])     # the lead among them passed
    # the tightest passing concept leads (its footprints most on the same pixels); the rest follow the evidence:
    # passing concepts first, units without a paste test after those with one, then paste flip excess (descending)
    passing = [c for c in concepts if all(c["checks"].values())]
    if passing:
        assert concepts[result["ranking"][0]]["transplant"]["agreement"] == max(
            c["transplant"]["agreement"] for c in passing)
    order = result["ranking"][1:] if passing else result["ranking"]
    keys = [(not all(concepts[c]["checks"].values()), concepts[c]["checks"]["paste"] is None,
             -(concepts[c]["transplant"] or {}).get("excess_flip", 0.0)) for c in order]
    assert keys == sorted(keys)
    assert result["shortcut_found"] == all(concepts[result["ranking"][0]]["checks"].values())
    labels = Store.open(out).read("labels")
    for p in protos + concepts:
        if p["deletion"] is None:
            continue
        d = p["deletion"]
        per = d["per_sample"]
        assert len(per["rows"]) == len(per["drop"]) == len(per["random"]) == d["samples"]
        in_class = labels[per["rows"]] == p["class"]
        assert d["class_samples"] == int(in_class.sum())
        if in_class.any():
            assert d["effect"] == pytest.approx(np.mean(np.asarray(per["drop"])[in_class]), abs=1e-4)
        if p["transplant"]:
            t = p["transplant"]
            assert 0 <= t["flip_rate"] <= 1 and 0 <= t["random_flip_rate"] <= 1
            assert t["excess_flip"] == pytest.approx(t["flip_rate"] - t["random_flip_rate"], abs=1e-9)


def test_tests_in_the_verdicts_order_change_no_result(planted_run, tmp_path):
    """The study stops at a unit's first failed test (class-tied, fixed in place, paste, deletion); run again with
    every test on every unit (``full_tests``, the old study), each test that ran gives the same result, the verdict
    and the order of the units that had a paste test are the same, and so are the report's footprints."""
    out, early = planted_run
    copy = tmp_path / "an"
    shutil.copytree(out, copy)
    full = api.reliance(copy, progress=False, trust_analysis=True, full_tests=True)
    ran_on = re.compile(r"deleting \d+ of the \d+ concepts it ran on")  # counts the deletions that ran
    assert ran_on.sub("", early["verdict"]) == ran_on.sub("", full["verdict"])
    assert early["shortcut_found"] == full["shortcut_found"]
    assert full["tests_run"]["paste"] == full["tests_run"]["units"] > early["tests_run"]["paste"] > 0
    assert early["tests_run"]["deletion"] == early["tests_run"]["paste"] <= early["tests_run"]["footprints"]
    for e, f in zip(early["concepts"] + early["prototypes"], full["concepts"] + full["prototypes"]):
        assert e.get("footprints") == f.get("footprints")
        assert all(ran is None or ran == f["checks"][test] for test, ran in e["checks"].items())
        assert (e["checks"]["paste"] is None) == (e["transplant"] is None and f["transplant"] is not None)
        if e["checks"]["paste"] is not None:  # flips exactly; margins up to float rounding (threads, batches)
            assert {k: v for k, v in e["transplant"].items() if "logit" not in k} == \
                {k: v for k, v in f["transplant"].items() if "logit" not in k}
            assert e["transplant"] == pytest.approx(f["transplant"], rel=1e-4, abs=1e-5)
        if e["deletion"] is not None:  # other samples share its batches: float rounding only
            assert e["deletion"]["z"] == pytest.approx(f["deletion"]["z"], rel=1e-5)
            assert e["deletion"]["per_sample"]["drop"] == pytest.approx(f["deletion"]["per_sample"]["drop"], abs=1e-4)
        not_run = [test for test, ran in e["checks"].items() if ran is None]
        assert not e["checks"]["class_tied"] or e["concentration"] < early["config"]["min_concentration"] or \
            e["checks"]["fixed_in_place"] is not None or e.get("tested_as_concept")
        # a skipped test never hides a shortcut; a prototype of a larger concept is tested as that concept
        assert not not_run or not all(f["checks"].values()) or e.get("tested_as_concept")
        if e.get("tested_as_concept"):
            members = next(c for c in early["concepts"] if e["id"] in c["members"])["members"]
            assert len(members) > 1 and e["transplant"] is None and e["deletion"] is None and "footprints" not in e
    tested = [c for c in full["ranking"] if early["concepts"][c]["checks"]["paste"] is not None]
    assert early["ranking"][:len(tested)] == tested
    run = early["tests_run"]
    assert f"footprints on {run['footprints']}, paste on {run['paste']}, deletion on {run['deletion']}" in \
        ran_sentence(early)
    assert ran_sentence(full) == f"every test on every one of the {run['units']} units (full_tests)"
    units = early["prototypes"] + [c for c in early["concepts"] if len(c["members"]) > 1]  # singletons: prototypes
    assert sum(u["transplant"] is not None for u in units) == run["paste"]


def test_deletion_matches_model_surgery(planted_run):
    """Recompute the lead concept's deletions by splitting the small CNN at its target layer by hand."""
    out, result = planted_run
    store = Store.open(out)
    lead = result["concepts"][result["ranking"][0]]
    per = lead["deletion"]["per_sample"]
    rows = np.asarray(per["rows"][:40])
    ctx = build_context(RunConfig.from_dict(store.config))
    ctx.load(ctx.checkpoint("final"))
    model = ctx.model.eval()
    assert store.attrs["layer"] == "features"
    features = store.read("features").astype(np.float64)
    fill = torch.as_tensor(features.reshape(-1, features.shape[-1]).mean(axis=0), dtype=torch.float32)
    x = ctx.data.split(store.config["split"]).tensors[0][store.read("sample_index")[rows]]
    y = torch.as_tensor(store.read("labels")[rows])
    mask = torch.as_tensor(np.isin(store.read("analysis/assign")[rows], lead["members"]))[:, None]
    with torch.no_grad():
        a = model.features(x)
        clean = margin(model.head(a), y)
        deleted = margin(model.head(torch.where(mask, fill.view(1, -1, 1, 1), a)), y)
    np.testing.assert_allclose((clean - deleted).numpy(), per["drop"][:40], atol=2e-3)


def test_report_section_shows_the_verdict_card_and_concepts_first(planted_run):
    out, result = planted_run
    section = reliance_section(ReportInputs.open(out, trust_analysis=True))  # its data spec is this file
    assert section is not None and section.id == "reliance"
    top = result["ranking"][0]
    shown = min(result["config"]["top"], len(result["concepts"]))
    assert section.body.index('id="reliance-verdict"') < section.body.index(f'id="reliance-{top}"')
    assert section.body.count("data:image/png;base64,") >= shown * 2                 # galleries with footprints
    assert section.body.count('aria-label="where it occurs"') == shown                # location maps
    assert section.body.index(f'id="reliance-{top}"') < section.body.index("All ")
    assert html.escape(result["verdict"]) in section.body
    page = (out / "report.html").read_text()
    assert page.index('id="reliance"') < page.index('id="prototypes"')           # the suspects come first
