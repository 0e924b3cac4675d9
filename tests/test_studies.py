"""The faithfulness and drift studies on a real two-phase run, checked against direct calls of the cores.

One module-scoped run: a SmallCNN trained 3 epochs on 1,000 digits (the first epoch with a frozen
backbone: about 10% accurate, then about 75% and 88%), extracted and analysed on 200 samples.
Class names are hostile HTML so the report sections are checked for escaping too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import vl_convert as vlc
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from sklearn.datasets import load_digits

from i2x import api
from i2x.cli import main
from i2x.stages.analyze.config import AnalyzeConfig
from i2x.attribution import display_maps
from i2x.stages.context import build_context
from i2x.stages.config import RunConfig
from i2x.metrics.drift import centroid_shift, drift_metrics, rank_reversals, summarize
from i2x.errors import UserError
from i2x.metrics.faithfulness import auc, drop_at, perturbation_curves, pixel_order, random_order, select_buckets
from i2x.reporting.charts import ChartSet
from i2x.reporting.page import vega_version
from i2x.reporting.sections.drift import drift_section
from i2x.reporting.sections.faithfulness import faithfulness_section
from i2x.io.store import Store
from i2x.io.workdir import DRIFT as DRIFT_NAME, FAITHFULNESS as FAITHFULNESS_NAME
from i2x.stages.context import open_context
from i2x.stages.drift import drift
from i2x.stages.drift.runs import compare_models
from i2x.stages.faithfulness import cams_for_targets, faithfulness

NAMES = ["<script>alert(1)</script>", "a & b", "2", "3", "4", "5", "6", "7", "8", "9"]
FINAL = 2  # store index of the final checkpoint, epoch_3.pt
SMALL = dict(steps=8, random_draws=3, per_bucket=6, progress=False, baseline="mean")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Analysis directory of a 3-epoch two-phase run (epoch 1: frozen backbone) on 200 samples."""
    root = tmp_path_factory.mktemp("studies")
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1000], order[1000:1100]
    np.savez(root / "d.npz", x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
             class_names=np.array(NAMES))
    data = f"npz:{root / 'd.npz'}"
    api.train(data=data, out=root / "ck", epochs=3, freeze_backbone_epochs=1, progress=False, input_size=32,
              batch_size=32, lr=3e-3)
    api.run(checkpoints=str(root / "ck"), data=data, input_size=32, out=root / "an", limit=200, progress=False,
            analyze_config=AnalyzeConfig(k=8))
    return root / "an"


@pytest.fixture(scope="module")
def store(run) -> Store:
    return Store.open(run)


def _model_at(store: Store, t: int):
    """An independently rebuilt context with checkpoint t loaded, in eval mode."""
    ctx = build_context(RunConfig.from_dict(store.config))
    ctx.load(ctx.checkpoint(store.checkpoints[t]["name"]))
    ctx.model.eval()
    return ctx


def _images(ctx, rows) -> torch.Tensor:
    return torch.stack([ctx.dataset[int(i)][0] for i in rows])


# ---- faithfulness --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def final_study(run) -> dict:
    """Faithfulness at the final checkpoint (about 85% accurate: enough true and false positives)."""
    return faithfulness(run, methods=["gradcam", "layercam"], **SMALL)


def test_json_file_is_what_the_call_returns(run, store, final_study):
    on_disk = json.loads((run / FAITHFULNESS_NAME).read_text())
    assert on_disk == final_study
    assert final_study["checkpoint"] == {"index": FINAL, "name": "epoch_3.pt", "step": store.checkpoints[FINAL]["step"],
                                         "phase": "full"}
    assert set(final_study["methods"]) == {"gradcam", "layercam"}
    tp = final_study["methods"]["gradcam"]["tp"]
    assert tp["n"] == 6 and len(tp["curves"]["deletion"]["cam_mean"]) == 9
    assert set(tp["drop"]) == {"0.25", "0.5"}


def test_buckets_honour_correctness_and_targets(store, final_study):
    probs, labels = store.read("probs")[FINAL], store.read("labels")
    predicted = probs.argmax(axis=1)
    expected = select_buckets(probs, labels, per_bucket=6, seed=0)
    b = final_study["buckets"]
    for name in ("tp", "fp", "random"):
        assert b[name]["rows"] == expected[name].tolist()
    tp, fp = np.array(b["tp"]["rows"]), np.array(b["fp"]["rows"])
    assert b["fp"]["n"] == 6 and b["tp"]["n"] == 6
    assert np.all(predicted[tp] == labels[tp]) and np.all(predicted[fp] != labels[fp])
    assert b["tp"]["targets"] == labels[tp].tolist()
    assert b["fp"]["targets"] == predicted[fp].tolist()  # a false positive is explained by its predicted class
    assert b["random"]["targets"] == labels[np.array(b["random"]["rows"])].tolist()


def test_tp_bucket_matches_a_direct_computation(store, final_study):
    b = final_study["buckets"]["tp"]
    rows, targets = np.array(b["rows"]), torch.tensor(b["targets"])
    ctx = _model_at(store, FINAL)
    images = _images(ctx, rows)
    saliency = display_maps(torch.from_numpy(store.cam("gradcam")[FINAL][rows]), (32, 32))
    order = pixel_order(saliency, torch.Generator().manual_seed(0))
    kw = dict(steps=8, fill="mean")  # the normalised mean colour is 0
    deletion = perturbation_curves(ctx.model, images, None, targets, "deletion", order=order, **kw).double().numpy()
    insertion = perturbation_curves(ctx.model, images, None, targets, "insertion", steps=8, order=order).numpy()
    got = final_study["methods"]["gradcam"]["tp"]
    np.testing.assert_allclose(got["per_sample"]["deletion_auc"], auc(deletion), atol=1e-6)
    np.testing.assert_allclose(got["per_sample"]["insertion_auc"], auc(insertion), atol=1e-6)
    assert got["deletion_auc"]["cam"]["mean"] == pytest.approx(auc(deletion).mean(), abs=1e-6)
    assert got["drop"]["0.25"]["cam"]["mean"] == pytest.approx(drop_at(deletion, 0.25).mean(), abs=1e-6)
    # The starting point is the stored probability of the target class.
    stored = store.read("probs")[FINAL][rows, b["targets"]]
    np.testing.assert_allclose(got["per_sample"]["initial_prob"], stored, atol=1e-5)
    # Random baseline: the same seeded draws, mean and spread over draws of the bucket mean.
    g = torch.Generator().manual_seed(0)
    draws = np.stack([auc(perturbation_curves(ctx.model, images, None, targets, "deletion",
                                              order=random_order(6, 32, 32, g), **kw)) for _ in range(3)])
    assert got["deletion_auc"]["random"]["mean"] == pytest.approx(draws.mean(), abs=1e-6)
    assert got["deletion_auc"]["random"]["std_draws"] == pytest.approx(draws.mean(axis=1).std(), abs=1e-6)
    # Methods share the random baseline.
    assert final_study["methods"]["layercam"]["tp"]["deletion_auc"]["random"] == got["deletion_auc"]["random"]


def test_fp_maps_explain_the_predicted_class(store, final_study):
    # The store holds maps of the true label; for false positives the study recomputes them for the
    # predicted class. pytorch-grad-cam's GradCAM (display maps) is the independent reference.
    b = final_study["buckets"]["fp"]
    rows, targets = np.array(b["rows"]), np.array(b["targets"])
    ctx = open_context(store, FINAL, "cpu", 64, False)
    images = _images(ctx, rows)
    maps = cams_for_targets(store, ctx, FINAL, rows, images, targets, ["gradcam", "layercam"])
    with GradCAM(ctx.model, target_layers=[ctx.model.features]) as cam:
        reference = torch.from_numpy(cam(images, targets=[ClassifierOutputTarget(int(c)) for c in targets]))
    ours = display_maps(maps["gradcam"], (32, 32))
    # Loose tolerance: sum_k w_k A_k cancels strongly for a wrong class, so float32 summation order shows.
    torch.testing.assert_close(ours, reference, atol=1e-2, rtol=0)
    stored = display_maps(torch.from_numpy(store.cam("gradcam")[FINAL][rows]), (32, 32))
    assert (stored - reference).abs().amax() > 0.1  # the stored maps explain another class
    # The study's curves follow these maps.
    order = pixel_order(ours, torch.Generator().manual_seed(0))
    curves = perturbation_curves(ctx.model, images, None, torch.tensor(targets), "deletion", steps=8,
                                 fill="mean", order=order)
    got = final_study["methods"]["gradcam"]["fp"]["per_sample"]["deletion_auc"]
    np.testing.assert_allclose(got, auc(curves), atol=1e-6)
    # For true positives the stored maps already explain the target: nothing is recomputed.
    tp = np.array(final_study["buckets"]["tp"]["rows"])
    same = cams_for_targets(store, ctx, FINAL, tp, _images(ctx, tp), store.read("labels")[tp], ["layercam"])
    np.testing.assert_array_equal(same["layercam"].numpy(), store.cam("layercam")[FINAL][tp])


def test_positive_class_and_fills(run, store):
    # Black deletion fill and a mean-colour insertion start: the curve ends are analytic.
    result = faithfulness(run, checkpoint="final", methods="gradcam", buckets=("tp", "fp"), positive_class="3",
                          baseline="black", insertion_baseline="mean", steps=4, random_draws=1, per_bucket=5,
                          progress=False)
    t = len(store.checkpoints) - 1
    predicted, labels = store.read("probs")[t].argmax(axis=1), store.read("labels")
    tp, fp = (np.array(result["buckets"][k]["rows"], dtype=int) for k in ("tp", "fp"))
    assert tp.size > 0
    assert np.all((predicted[tp] == 3) & (labels[tp] == 3))
    assert np.all((predicted[fp] == 3) & (labels[fp] != 3))
    assert "random" not in result["buckets"]
    ctx = _model_at(store, t)
    mean, std = ctx.data.mean[0], ctx.data.std[0]
    black = torch.full((1, 1, 32, 32), -mean / std)
    grey = torch.zeros(1, 1, 32, 32)
    with torch.no_grad():
        p_black, p_grey = (ctx.model(x).softmax(1)[0, 3].item() for x in (black, grey))
    curves = result["methods"]["gradcam"]["tp"]["curves"]
    assert curves["deletion"]["cam_mean"][-1] == pytest.approx(p_black, abs=1e-5)
    assert curves["insertion"]["cam_mean"][0] == pytest.approx(p_grey, abs=1e-5)
    assert result["fills"]["deletion"] == pytest.approx([-mean / std])


def test_road_is_the_default_deletion_fill(run, store):
    # ROAD curves start at the stored probability; the noise is seeded, so a rerun gives the same numbers.
    kw = dict(methods="gradcam", buckets=("tp",), steps=4, random_draws=1, per_bucket=4, progress=False)
    result = faithfulness(run, **kw)
    assert result["baselines"] == {"deletion": "road", "insertion": "blur"}
    got = result["methods"]["gradcam"]["tp"]
    rows, targets = result["buckets"]["tp"]["rows"], result["buckets"]["tp"]["targets"]
    np.testing.assert_allclose(got["per_sample"]["initial_prob"], store.read("probs")[FINAL][rows, targets], atol=1e-5)
    assert got["random_beats_map"] == [m for m in ("deletion", "insertion") if
                                       (got[f"{m}_auc"]["difference"] > 0) == (m == "deletion")]
    assert faithfulness(run, **kw)["methods"]["gradcam"]["tp"]["per_sample"] == got["per_sample"]


def _copy_with_probs(run: Path, to: Path, t: int, predicted: np.ndarray) -> Path:
    """A copy of the run's store whose checkpoint t predicts ``predicted`` (one-hot probabilities)."""
    shutil.copytree(run / "store.zarr", to / "store.zarr")
    store = Store.open(to, mode="a")
    probs = store.read("probs")
    probs[t] = np.eye(probs.shape[-1], dtype=np.float32)[predicted]
    store.array("probs")[...] = probs
    return to


def test_empty_bucket_is_recorded_not_an_error(run, store, tmp_path):
    # Class 0 is never predicted at the final checkpoint of the copy: no false positive of class 0.
    copy = _copy_with_probs(run, tmp_path / "copy", FINAL, np.full(len(store.read("labels")), 1))
    result = faithfulness(copy, methods="gradcam", buckets=("fp",), positive_class=0, steps=2, random_draws=1,
                          progress=False)
    assert result["buckets"]["fp"]["n"] == 0 and result["methods"]["gradcam"]["fp"] == {"n": 0}


@pytest.mark.parametrize("kw, match", [
    (dict(buckets=("tp", "fn")), "buckets"), (dict(baseline="noise"), "baseline"),
    (dict(checkpoint="epoch_9.pt"), "epoch_9"), (dict(positive_class=12), "positive-class"),
    (dict(methods=["gradcamx"]), "gradcamx"), (dict(fractions=(0.25, 1.5)), "fractions"),
])
def test_faithfulness_user_errors(run, kw, match):
    with pytest.raises(UserError, match=match):
        faithfulness(run, progress=False, **kw)


def test_a_study_reads_only_the_stores_checkpoint_by_name(run, store):
    # A snapshot saved after extraction (here an unreadable one) is neither listed nor read, and "final" stays
    # the store's final checkpoint; a snapshot that is gone is named.
    ck = run.parent / "ck"
    late = ck / "epoch_9.pt"
    late.write_bytes(b"not a checkpoint")
    try:
        ctx = open_context(store, None, "cpu", 64)
        assert [c.name for c in ctx.checkpoints] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
        assert ctx.checkpoint("final").name == "epoch_3.pt"
        assert ctx.checkpoints[-1].step == store.checkpoints[-1]["step"]
        probs = torch.softmax(ctx.model(torch.stack([ctx.dataset[i][0] for i in range(8)])), 1).detach().numpy()
        np.testing.assert_allclose(probs, store.read("probs")[FINAL][:8], atol=1e-4)
    finally:
        late.unlink()
    (ck / "epoch_1.pt").rename(ck / "moved.bak")
    try:
        with pytest.raises(UserError, match=r"checkpoint epoch_1.pt is gone .* rerun `i2x run`"):
            open_context(store, 0, "cpu", 64)
    finally:
        (ck / "moved.bak").rename(ck / "epoch_1.pt")


# ---- drift -----------------------------------------------------------------------------------------
def test_drift_between_one_checkpoint_and_itself_is_refused(run):
    # Identical maps give IoU 1 and no shift (tests/test_drift.py); comparing a checkpoint with itself says
    # nothing about training, so the names that resolve to one checkpoint are refused before anything is written.
    before = (run / DRIFT_NAME).read_bytes() if (run / DRIFT_NAME).exists() else None
    for kw in (dict(from_="final", to="final"), dict(from_="epoch_3.pt", to="final")):
        with pytest.raises(UserError, match=r"--from \S+ --to final: both name the checkpoint epoch_3.pt"):
            drift(run, consecutive=False, progress=False, **kw)
    assert ((run / DRIFT_NAME).read_bytes() if (run / DRIFT_NAME).exists() else None) == before


def _json(value):
    """``value`` as the studies write it: through JSON, NaN as None."""
    return json.loads(json.dumps(value), parse_constant=lambda _: None)


def test_drift_matches_the_cores_on_correct_samples(run, store):
    result = drift(run, from_="epoch_2.pt", progress=False)
    assert json.loads((run / DRIFT_NAME).read_text()) == result
    probs, labels = store.read("probs"), store.read("labels")
    keep = (probs[1].argmax(1) == labels) & (probs[2].argmax(1) == labels)
    assert result["n_correct_both"] == keep.sum() > 50
    assert result["from"]["name"] == "epoch_2.pt" and result["to"]["name"] == "epoch_3.pt"
    a, b = store.cam("gradcampp")[1][keep], store.cam("gradcampp")[2][keep]
    direct = drift_metrics(a, b)
    cells, frac = centroid_shift(a, b)
    got = result["methods"]["gradcampp"]
    assert got["overall"]["iou"]["mean"] == pytest.approx(np.nanmean(direct["iou"]))
    assert got["overall"]["spearman"]["median"] == pytest.approx(np.nanmedian(direct["spearman"]))
    assert got["overall"]["shift_px"]["mean"] == pytest.approx(np.nanmean(cells) * 32 / 8)  # 4 input px per cell
    assert got["overall"]["shift_frac"]["mean"] == pytest.approx(np.nanmean(frac))
    expected = _json(summarize(direct, labels[keep], NAMES)["per_class"])
    for cls, stats in expected.items():
        assert got["per_class"][cls]["concentration_change"] == pytest.approx(stats["concentration_change"])
    # Stability: classes ranked by mean IoU, reversals as rank_reversals computes them.
    scores = {m: {c: s["iou"]["mean"] for c, s in result["methods"][m]["per_class"].items()}
              for m in ("gradcampp", "layercam", "gradcam")}
    assert result["stability"]["reversals"] == _json(rank_reversals(scores))
    ranking = result["stability"]["ranking"]["layercam"]
    assert ranking == sorted(scores["layercam"], key=lambda c: -scores["layercam"][c])
    # Consecutive: one entry per pair of checkpoints, the last equal to the direct computation above.
    steps = result["consecutive"]["steps"]
    assert [(s["from"]["name"], s["to"]["name"]) for s in steps] == [("epoch_1.pt", "epoch_2.pt"),
                                                                      ("epoch_2.pt", "epoch_3.pt")]
    last = result["consecutive"]["methods"]["gradcampp"]
    assert last["iou"][1] == got["overall"]["iou"] and last["spearman"][1] == got["overall"]["spearman"]
    assert steps[1]["n"] == keep.sum()


def test_drift_with_no_common_correct_sample_reports_none(run, store, tmp_path):
    # In the copy the first checkpoint gets every sample wrong.
    copy = _copy_with_probs(run, tmp_path / "copy", 0, (store.read("labels") + 1) % 10)
    result = drift(copy, from_="first", progress=False)
    assert result["n_correct_both"] == 0
    assert result["methods"]["gradcam"]["overall"]["iou"] == {"mean": None, "median": None, "std": None, "n": 0}
    assert result["methods"]["gradcam"]["per_class"] == {} and result["consecutive"]["steps"][0]["n"] == 0


def test_drift_leaves_pairs_with_an_empty_map_out_of_every_metric(run, store, tmp_path):
    # In the copy three samples both checkpoints classify correctly have an all-zero GradCAM at the first one:
    # their top region and ranks would be ties, so they count for no metric and n_empty says so.
    shutil.copytree(run / "store.zarr", tmp_path / "copy" / "store.zarr")
    copy = Store.open(tmp_path / "copy", mode="a")
    probs, labels = store.read("probs"), store.read("labels")
    keep = (probs[1].argmax(1) == labels) & (probs[2].argmax(1) == labels)
    emptied = np.flatnonzero(keep)[:3]
    cams = copy.cam("gradcam")
    first = np.asarray(cams[1])
    first[emptied] = 0.0
    cams[1] = first
    result = drift(tmp_path / "copy", from_="epoch_2.pt", methods="gradcam", consecutive=False, progress=False)
    got = result["methods"]["gradcam"]
    a, b = np.asarray(cams[1])[keep], np.asarray(cams[2])[keep]
    full = (a.sum(axis=(1, 2)) > 0) & (b.sum(axis=(1, 2)) > 0)
    assert got["n_empty"] == (~full).sum() >= 3 and got["overall"]["iou"]["n"] == full.sum()
    assert got["overall"]["iou"]["mean"] == pytest.approx(np.nanmean(drift_metrics(a[full], b[full])["iou"]))


def test_phase_split_compares_the_end_of_the_frozen_phase(run, store):
    steps = [c["step"] for c in store.checkpoints]
    auto = drift(run, phase_split="auto", consecutive=False, progress=False)
    assert auto["from"]["name"] == "epoch_1.pt" and auto["from"]["phase"] == "frozen-backbone"
    assert auto["to"]["phase"] == "full"
    by_step = drift(run, phase_split=steps[0], consecutive=False, progress=False)
    assert by_step["methods"] == auto["methods"]
    later = drift(run, phase_split=steps[1] + 1, consecutive=False, progress=False)
    assert later["from"]["name"] == "epoch_2.pt"
    with pytest.raises(UserError, match="phase-split"):
        drift(run, phase_split=steps[0] - 1, progress=False)
    with pytest.raises(UserError, match="either"):
        drift(run, from_="epoch_2.pt", phase_split="auto", progress=False)


def test_compare_models_ranks_directories(run, store, tmp_path):
    # A second "model": the same run extracted on its first two checkpoints only.
    other = tmp_path / "two"
    api.extract(config=RunConfig.from_dict({**store.config, "first": 2}), out=other, progress=False)
    result = compare_models([run, other], methods=["gradcampp", "layercam"], out=tmp_path / "compare.json",
                            bootstrap=50)
    on_disk = json.loads((tmp_path / "compare.json").read_text())
    assert on_disk.pop("generator").startswith("i2x ") and on_disk == result  # the mark that lets i2x replace it
    assert result["runs"][run.name]["to"]["name"] == "epoch_3.pt"
    assert result["runs"]["two"]["to"]["name"] == "epoch_2.pt"
    assert result["samples"] == {"n_common": 200, "n_label_mismatch": 0, "n_per_run": {run.name: 200, "two": 200},
                                 "rule": "each", "data_note": None}
    for name, d in ((run.name, run), ("two", other)):
        alone = drift(d, consecutive=False, progress=False)
        for m in ("gradcampp", "layercam"):
            assert result["runs"][name]["overall"][m]["iou"] == alone["methods"][m]["overall"]["iou"]
    scores = result["stability"]["iou"]["scores"]["layercam"]
    assert result["stability"]["iou"]["ranking"]["layercam"] == sorted(scores, key=lambda k: -scores[k])
    assert result["stability"]["iou"]["reversals"][0]["methods"] == ["gradcampp", "layercam"]
    # --samples all: only the samples both runs classify correctly at both of their checkpoints.
    probs, labels = store.read("probs"), store.read("labels")
    correct = [probs[t].argmax(1) == labels for t in range(3)]
    everywhere = correct[0] & correct[1] & correct[2]
    strict = compare_models([run, other], methods=["gradcampp"], samples="all", bootstrap=20)
    assert strict["samples"]["n_correct_in_all"] == everywhere.sum() > 0
    assert [strict["runs"][n]["n_correct_both"] for n in (run.name, "two")] == [everywhere.sum()] * 2
    a, b = store.cam("gradcampp")[0][everywhere], store.cam("gradcampp")[1][everywhere]
    assert strict["stability"]["iou"]["scores"]["gradcampp"]["two"] == pytest.approx(drift_metrics(a, b)["iou"].mean())
    with pytest.raises(UserError, match="two"):
        compare_models([run])
    with pytest.raises(UserError, match="--names"):
        compare_models([run, other], names=["a"])
    with pytest.raises(UserError, match="--method"):
        compare_models([run, other], methods=["gradcamx"])


def test_drift_cli_with_one_class_in_the_frozen_phase_says_not_defined(run, store, tmp_path, capsys):
    # The crash: at the end of the frozen-backbone phase the model predicts one class, so only that
    # class has true positives in both phases and the class ranking's Kendall tau is not defined.
    labels = store.read("labels")
    copy = _copy_with_probs(run, tmp_path / "copy", 0, np.full(len(labels), 3))
    assert main(["drift", str(copy), "--phase-split", "auto", "--method", "gradcampp,layercam"]) == 0
    printed = capsys.readouterr().out
    assert "Kendall tau not defined (fewer than two classes are scored under both gradcampp and layercam (1))" \
        in printed
    written = json.loads((copy / DRIFT_NAME).read_text())
    (comparison,) = written["stability"]["reversals"]
    assert comparison["kendall_tau"] is None and comparison["items"] == ["3"]
    assert comparison["undefined"].startswith("fewer than two classes")
    assert written["n_correct_both"] == int(((store.read("probs")[FINAL].argmax(1) == labels) & (labels == 3)).sum())
    # The report section says so too, and the cross-run comparison leaves a run without true positives out.
    section = drift_section(_inputs({DRIFT_NAME: written}))
    assert "not defined (fewer than two classes" in section.body
    none = _copy_with_probs(run, tmp_path / "none", 0, (labels + 1) % 10)
    assert main(["drift", str(run), str(none), "--names", "ok,none", "--phase-split", "auto", "--bootstrap", "20",
                 "--out", str(tmp_path / "cmp.json")]) == 0
    printed = capsys.readouterr().out
    assert "not ranked: no true positive at epoch_1.pt (frozen-backbone phase) among the shared samples" in printed
    assert "Kendall tau not defined (fewer than two runs" in printed
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert cmp["stability"]["iou"]["ranking"]["gradcampp"] == ["ok"]
    assert cmp["stability"]["iou"]["left_out"]["gradcampp"] == {"none": cmp["runs"]["none"]["undefined"]}
    page = (tmp_path / "cmp.html").read_text()
    assert "not defined" in page and "no true positive at epoch_1.pt" in page


# ---- report sections ---------------------------------------------------------------------------------
def _inputs(studies: dict[str, dict | None]) -> SimpleNamespace:
    """The part of ReportInputs the study sections use."""
    return SimpleNamespace(optional_json=studies.get, charts=ChartSet())


def test_sections_render_escape_and_compile(run, final_study):
    d = drift(run, progress=False)
    r = _inputs({FAITHFULNESS_NAME: final_study, DRIFT_NAME: d})
    sections = [faithfulness_section(r), drift_section(r)]
    assert [s.id for s in sections] == ["faithfulness", "drift"]
    body = "".join(s.body for s in sections)
    assert "<script>" not in body and "a & b" not in body
    assert "gradcampp vs layercam" in body and "false positives" in body
    # The page says when the random order beats a map, and why a constant fill may cause it.
    beaten = json.loads(json.dumps(final_study))
    beaten["methods"]["gradcam"]["tp"]["random_beats_map"] = ["deletion"]
    notes = faithfulness_section(_inputs({FAITHFULNESS_NAME: beaten})).notes
    assert any("random order beats gradcam in deletion" in n and "out-of-distribution" in n for n in notes)
    assert set(r.charts.specs) == {"chart-faithfulness-curves", "chart-drift-consecutive", "chart-drift-classes"}
    for spec in r.charts.specs.values():  # every chart compiles to Vega
        assert vlc.vegalite_to_vega(spec, vl_version=vega_version())["marks"]
    assert faithfulness_section(_inputs({})) is None and drift_section(_inputs({})) is None
