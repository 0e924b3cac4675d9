"""Segmentation runs end to end: train a tiny segmentation net, extract region targets, benchmark them; the
multi-seed leakage claim and the torchvision segmentation specs (slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from i2x import api
from i2x.attribution import Attributor, get_methods
from i2x.attribution.regions import RegionModel, segmentation_layer
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.masks import region_rows
from i2x.io.models import build_model
from i2x.planted.shapes import shapes_data, shapes_small_data
from i2x.io.store import Store
from i2x.planted.synthetic import planted_seed
from i2x.metrics.leakage import leakage
from i2x.metrics.road import impute
from i2x.reporting.freshness import stale_sections

SMALL = "planted:shapes-small"
FULL = "planted:shapes"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    api.train(data=SMALL, model="small-segnet", out=root / "ckpt", epochs=3, lr=0.02, batch_size=16,
              task="segmentation", progress=False)
    api.extract(checkpoints=str(root / "ckpt"), data=SMALL, model="small-segnet", split="test",
                methods=("gradcam", "layercam"), out=root / "an", progress=False)
    return root


def test_store_holds_a_row_per_image_and_class(seg_run: Path) -> None:
    store = Store.open(seg_run / "an")
    rows = region_rows(shapes_small_data()).split("test")
    assert store.attrs["task"] == "segmentation" and store.attrs["layer"] == "features"
    assert store.class_names == ["background", "square", "ring", "cross"]
    np.testing.assert_array_equal(store.read("labels"), rows.targets)
    assert store.attrs["row_images"] == rows.samples.tolist()
    assert store.read("probs").shape == (3, len(rows), 4) and store.cam("layercam").shape == (3, len(rows), 8, 8)
    np.testing.assert_allclose(store.read("probs").sum(-1), 1, atol=1e-5)
    # LayerCAM of a region score is zero on cells whose receptive field misses the region: never all cells
    cams = store.read("cam/layercam")[-1]
    assert (cams > 0).mean() < 0.5 and (cams.reshape(len(rows), -1).max(1) > 0).mean() > 0.5
    resumed = api.extract(checkpoints=str(seg_run / "ckpt"), data=SMALL, model="small-segnet", split="test",
                          methods=("gradcam", "layercam"), out=seg_run / "an", progress=False)
    assert resumed.skipped == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]


def test_benchmark_of_a_segmentation_run(seg_run: Path) -> None:
    result = api.benchmark(seg_run / "an", trust_analysis=True, checkpoints=("final",), samples=24, detail_samples=6,
                           random_draws=1, progress=False)
    assert result["task"] == "segmentation" and result["methods"] == ["gradcam", "layercam", "occlusion", "dea"]
    scores = result["results"]["epoch_3.pt"]
    uniform = result["uniform_leakage"]["epoch_3.pt"]["mean"]
    assert 0.8 < uniform < 1  # the shapes cover under a fifth of the image
    for m, s in scores.items():
        assert 0 <= s["leakage"]["mean"] <= 1 and s["runtime_ms"]["mean"] > 0
        assert s["leakage_vs_uniform"]["mean"] == pytest.approx(s["leakage"]["mean"] / uniform, rel=0.3)
        assert -1 <= s["robust_spearman"]["mean"] <= 1 and 0 <= s["deletion_morf"]["mean"] <= 1
    assert len(result["curves"]["epoch_3.pt"]["occlusion"]) == 5
    with pytest.raises(UserError, match="segmentation run; the prototype analysis"):
        api.analyze(seg_run / "an", progress=False)


def test_report_of_a_segmentation_run(seg_run: Path, tmp_path: Path) -> None:
    """The page of a segmentation run: its facts, and the region benchmark's numbers once the benchmark ran."""
    out = tmp_path / "an"
    shutil.copytree(seg_run / "an", out)
    (out / "benchmark.json").unlink(missing_ok=True)  # the module's benchmark test may have run first
    (out / "drift.json").unlink(missing_ok=True)
    before = api.report(out, pngs=False).read_text()
    assert "Segmentation run" in before and "Not run yet: OMP_NUM_THREADS=1 i2x benchmark an" in before
    assert "Drift of the region maps" in before and "Not run yet: i2x drift an" in before
    assert "square, ring, cross" in before
    result = api.benchmark(out, trust_analysis=True, checkpoints=("first", "final"), samples=16, detail_samples=4,
                           random_draws=1, methods=("gradcam", "layercam"), progress=False)
    page = api.report(out, pngs=False).read_text()
    final = result["results"]["epoch_3.pt"]
    for m in ("gradcam", "layercam"):
        leak = final[m]["leakage"]
        assert f"{leak['mean']:.3f} ± {leak['std']:.3f}" in page
    assert f"{result['uniform_leakage']['epoch_3.pt']['mean']:.3f}" in page
    assert "Not run yet: OMP" not in page and "Not run yet: i2x drift an" in page
    assert '"smetric"' in page  # the over-training chart's metric picker
    assert str(tmp_path) not in page


def _top_cells(m: np.ndarray, k: int) -> set[int]:
    """The k highest cells of one map by hand: flat indices, ties to the earlier cell."""
    flat = m.ravel().tolist()
    return set(sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k])


def test_drift_of_a_segmentation_run_counts_every_row(seg_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Every row counts (the region target is fixed); a pair with an empty map counts for no metric; the numbers are
    those of a computation from scratch on the stored maps (IoU by sets, Spearman by scipy, centroids by hand)."""
    out = tmp_path / "an"
    shutil.copytree(seg_run / "an", out)
    result = api.drift(out, progress=False)
    store = Store.open(out)
    probs, labels = store.read("probs"), store.read("labels")
    n = len(labels)
    assert result["task"] == "segmentation" and result["rows"] == "all"
    assert result["n_samples"] == result["n_counted"] == n == 62
    assert result["n_correct_both"] == int(((probs[0].argmax(1) == labels) & (probs[2].argmax(1) == labels)).sum())
    assert [s["n"] for s in result["consecutive"]["steps"]] == [n, n]
    for method in ("gradcam", "layercam"):
        a, b = store.read(f"cam/{method}")[0].astype(np.float64), store.read(f"cam/{method}")[2].astype(np.float64)
        full = (a.reshape(n, -1).max(1) > 0) & (b.reshape(n, -1).max(1) > 0)
        got = result["methods"][method]
        assert got["n_empty"] == n - full.sum() and got["overall"]["iou"]["n"] == full.sum()
        if not full.any():
            assert got["overall"]["iou"]["mean"] is None
            continue
        iou = [len(_top_cells(x, 13) & _top_cells(y, 13)) / len(_top_cells(x, 13) | _top_cells(y, 13))
               for x, y in zip(a[full], b[full])]  # top 20% of 64 cells: 13
        rho = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a[full], b[full])]
        grid = np.arange(8.0)

        def centre(m: np.ndarray) -> np.ndarray:
            return np.array([(m.sum(1) * grid).sum(), (m.sum(0) * grid).sum()]) / m.sum()
        shift = [4 * np.linalg.norm(centre(y) - centre(x)) for x, y in zip(a[full], b[full])]  # 32 px / 8 cells
        overall = got["overall"]
        assert overall["iou"]["mean"] == pytest.approx(np.mean(iou))
        assert got["quantiles"]["overall"]["iou"][0] == pytest.approx(min(iou))
        assert overall["spearman"]["mean"] == pytest.approx(np.nanmean(rho))
        assert overall["shift_px"]["mean"] == pytest.approx(np.mean(shift))
        per_class = {store.class_names[c]: np.mean(np.asarray(iou)[labels[full] == c]) for c in np.unique(labels[full])}
        assert {k: v["iou"]["mean"] for k, v in got["per_class"].items() if v["iou"]["n"]} == pytest.approx(per_class)
        assert all(v["iou"]["mean"] is None for k, v in got["per_class"].items() if k not in per_class)
    assert result["methods"]["layercam"]["overall"]["iou"]["n"] > 20  # the measured run: 44 of 62
    assert main(["drift", str(out), "--method", "layercam"]) == 0
    printed = capsys.readouterr().out
    empty = result["methods"]["layercam"]["n_empty"]
    assert f"all {n} rows counted" in printed and f"({empty} rows with an empty map left out)" in printed
    with pytest.raises(UserError, match="a segmentation run; the drift across runs"):
        api.compare_drift([out, seg_run / "an"], names=["a", "b"], out=tmp_path / "cmp.json")


def test_planted_drift_on_a_segmentation_store(seg_run: Path, tmp_path: Path) -> None:
    """Planted maps: a checkpoint whose maps equal the first one's does not drift (IoU 1, no shift, Spearman 1); maps
    moved one cell to the right (zero-filled; rows whose mass would leave the grid emptied) shift by 4 input px."""
    out = tmp_path / "an"
    shutil.copytree(seg_run / "an", out)
    store = Store.open(out, mode="a")
    maps = store.read("cam/layercam")
    first = maps[0]
    edge = first[:, :, -1].max(1) > 0
    moved = np.zeros_like(first)
    moved[:, :, 1:] = first[:, :, :-1]
    moved[edge] = 0
    maps[1], maps[2] = moved, first
    store.cam("layercam")[...] = maps
    same = api.drift(out, methods=("layercam",), consecutive=False, progress=False)["methods"]["layercam"]["overall"]
    counted = int((first.reshape(len(first), -1).max(1) > 0).sum())
    assert same["iou"] == {"mean": 1.0, "median": 1.0, "std": 0.0, "n": counted} and counted > 20
    assert same["shift_px"]["mean"] == pytest.approx(0, abs=1e-9) and same["spearman"]["mean"] == pytest.approx(1)
    shifted = api.drift(out, to="epoch_2.pt", methods=("layercam",), consecutive=False, progress=False)
    got = shifted["methods"]["layercam"]
    assert got["n_empty"] == len(first) - counted + int((edge & (first.reshape(len(first), -1).max(1) > 0)).sum())
    assert got["overall"]["shift_px"]["mean"] == pytest.approx(4.0) and got["overall"]["shift_px"]["std"] < 1e-9
    assert got["overall"]["shift_frac"]["mean"] == pytest.approx(4 / np.hypot(32, 32))


def test_report_shows_the_drift_of_a_segmentation_run(seg_run: Path, tmp_path: Path) -> None:
    """The page's drift section holds drift.json's numbers, says which rows count and which maps are empty, and is
    marked out of date when the drift is rerun."""
    out = tmp_path / "an"
    shutil.copytree(seg_run / "an", out)
    (out / "benchmark.json").unlink(missing_ok=True)
    d = api.drift(out, progress=False)
    page = api.report(out, pngs=False).read_text()
    assert "Not run yet: i2x drift" not in page and "Not run yet: OMP_NUM_THREADS=1 i2x benchmark an" in page
    assert f"{d['n_counted']} of {d['n_samples']} counted; {d['n_correct_both']} of them" in page
    empty = ", ".join(f"{m}: {s['n_empty']} rows" for m, s in d["methods"].items())
    assert empty + " with an all-zero map at either checkpoint, left out" in page
    layercam = d["methods"]["layercam"]["overall"]
    for key in ("iou", "spearman", "shift_px", "concentration_change"):
        assert f"{layercam[key]['mean']:.3f} ± {layercam[key]['std']:.3f}" in page
    assert "epoch_1.pt, step 8 → epoch_3.pt, step 24" in page and "mean over rows with a map at both" in page
    for m, s in d["methods"].items():  # a method without a pair of non-empty maps says so
        note = f"{m}: every row&#x27;s map is all zero at epoch_1.pt or epoch_3.pt"
        assert (note in page) == (s["overall"]["iou"]["n"] == 0)
    assert '"chart-drift-consecutive"' in page and '"chart-drift-classes"' in page
    assert str(tmp_path) not in page and str(seg_run) not in page
    api.drift(out, from_="epoch_2.pt", progress=False)
    assert stale_sections(out) == {"drift": ["drift.json"]}


@pytest.mark.slow
def test_region_maps_concentrate_in_the_region_over_three_seeds(tmp_path: Path) -> None:
    """A tiny net trained on the shapes (3 seeds): first proof that it segments the shapes (erasing a shape by ROAD
    imputation removes its predicted pixels), then the leakage of its LayerCAM and GradCAM maps for each class region
    against the uniform map's (1 - |R| / HW)."""
    for seed in (0, 1, 2):
        with planted_seed(seed):
            api.train(data=FULL, model="small-segnet", out=tmp_path / f"c{seed}", epochs=5, lr=0.01, batch_size=16,
                      task="segmentation", seed=seed, progress=False)
            api.extract(checkpoints=str(tmp_path / f"c{seed}"), data=FULL, model="small-segnet", split="test",
                        methods=("gradcam", "layercam"), last=1, out=tmp_path / f"a{seed}", progress=False)
            rows = region_rows(shapes_data()).split("test")
        store = Store.open(tmp_path / f"a{seed}")
        net = build_model("small-segnet", 4, 3)
        net.load_state_dict(torch.load(tmp_path / f"c{seed}" / "epoch_5.pt", weights_only=True)["state_dict"])
        net.eval()
        x, regions = rows.images[torch.as_tensor(rows.samples)], rows.regions(np.arange(len(rows)))
        classes = torch.as_tensor(rows.targets)[:, None, None]
        with torch.no_grad():
            kept = ((net(x).argmax(1) == classes) & regions).sum() / regions.sum()
            erased = ((net(impute(x, regions)).argmax(1) == classes) & regions).sum() / regions.sum()
        assert kept > 0.4 and erased < 0.05, (seed, kept, erased)
        roi = regions.numpy()
        uniform = leakage(np.ones(roi.shape), roi)
        for method in ("layercam", "gradcam"):
            cams = torch.from_numpy(store.read(f"cam/{method}")[-1])
            up = F.interpolate(cams[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0].numpy()
            leak = leakage(up, roi)
            print(f"seed {seed} {method}: leakage {np.nanmean(leak):.3f}, uniform {uniform.mean():.3f}, "
                  f"pixels kept {kept:.2f} erased {erased:.2f}")
            assert np.isnan(leak).mean() < 0.05
            assert np.nanmean(leak) < 0.6 * uniform.mean()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"])
def test_torchvision_segmentation_specs_run_one_extraction_batch(name: str) -> None:
    """Each spec builds without downloads (classes and channels sized to the data) and explains two region rows."""
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", num_classes=4, in_channels=1).eval()
    x = torch.randn(2, 1, 64, 64)
    layer = segmentation_layer(model, x, 4)
    regions = torch.zeros(2, 64, 64, dtype=torch.bool)
    regions[0, 8:30, 8:30], regions[1, 30:60, 20:50] = True, True
    wrapper = RegionModel(model)
    with wrapper.over(regions), Attributor(wrapper, f"model.{layer}", get_methods(["gradcam", "layercam"])) as a:
        out = a.attribute(x, torch.tensor([1, 3]), want_features=True)
    assert out.probs.shape == (2, 4) and out.cams["layercam"].shape[0] == 2
    assert min(out.cams["gradcam"].shape[-2:]) >= 3 and torch.isfinite(out.cams["layercam"]).all()
    assert out.cams["layercam"].flatten(1).max(1).values.min() > 0  # the region score reaches the layer
