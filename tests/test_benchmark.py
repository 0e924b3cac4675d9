"""The benchmark stage end to end on a planted two-class set whose class evidence sits in a known box.

Images: 3-channel 32x32 uniform texture; inside a 12x12 box (crossing the 4-pixel cell borders of
the 8x8 grid) class 1 is brighter in the red channel, class 0 in the blue one. The box is the ROI.
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

from i2x import api
from i2x.attribution import Attributor, get_methods
from i2x.attribution.fusion import dual_evidence
from i2x.attribution.occlusion import class_probability, occlusion
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.io.workdir import BENCHMARK
from i2x.metrics import leakage as lk
from i2x.reporting.charts import ChartSet
from i2x.reporting.page import vega_version
from i2x.reporting.sections.benchmark import benchmark_section
from i2x.io.workdir import select_checkpoints
from i2x.stages.benchmark import BenchmarkConfig
from i2x.stages.evidence import EvidenceConfig
from i2x.stages.context import open_context
from i2x.stages.config import RunConfig
from i2x.planted.synthetic import BOX, box_images

pytestmark = pytest.mark.slow  # end to end: trains, extracts and benchmarks a small run

NAMES = np.array(["<b>blue</b>", "red & co"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 2, 400), rng.integers(0, 2, 100)
    np.savez(root / "d.npz", x_train=box_images(y_train, rng), y_train=y_train, x_test=box_images(y_test, rng),
             y_test=y_test, class_names=NAMES)
    masks = np.zeros((400, 32, 32), dtype=bool)
    masks[:, BOX[0], BOX[1]] = True
    np.savez(root / "roi.npz", masks=masks)
    data = f"npz:{root / 'd.npz'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        api.train(data=data, out=root / "ck", epochs=3, lr=3e-3, batch_size=32, progress=False, input_size=32)
        api.extract(config=RunConfig(checkpoints=str(root / "ck"), data=data, input_size=32, limit=64), out=root / "an",
                    progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


SMALL = dict(samples=40, detail_samples=8, percentiles=(25, 50, 75), random_draws=1, sensitivity_samples=2,
             device="cpu", progress=False)


@pytest.fixture(scope="module")
def result(run) -> dict:
    return api.benchmark(run / "an", roi=f"{run / 'roi.npz'}:masks", **SMALL)


def test_the_model_uses_the_box(run):
    # Input intervention: the same images with the box's colour cue removed fall to chance.
    store = Store.open(run / "an")
    ctx = open_context(store, len(store.checkpoints) - 1, "cpu", 64, False)
    with np.load(run / "d.npz") as z:
        y = z["y_test"]
    rng = np.random.default_rng(1)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (ctx.data.mean, ctx.data.std))
    rates = []
    for with_box in (True, False):
        x = (torch.from_numpy(box_images(y, rng, with_box)).permute(0, 3, 1, 2) - mean) / std
        with torch.no_grad():
            rates.append(float((ctx.model(x).argmax(1).numpy() == y).mean()))
    assert rates[0] > 0.9 and rates[1] < 0.7, rates


def test_json_structure_and_leakage_matches_a_direct_computation(run, result):
    assert json.loads((run / "an" / BENCHMARK).read_text()) == result
    assert [c["name"] for c in result["checkpoints"]] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    assert result["methods"] == ["gradcam", "gradcampp", "layercam", "occlusion", "dea"]
    final = result["results"]["epoch_3.pt"]
    # GradCAM's leakage, recomputed from the model: maps upsampled bilinearly to the input.
    store = Store.open(run / "an")
    ctx = open_context(store, 2, "cpu", 64, False)
    rows = np.array(result["rows"])
    images = torch.stack([ctx.dataset[int(i)][0] for i in rows])
    with Attributor(ctx.model, store.attrs["layer"], get_methods(["gradcam"])) as a:
        cams = a.attribute(images, torch.as_tensor(store.read("labels")[rows])).cams["gradcam"]
    up = torch.nn.functional.interpolate(cams[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    roi = np.zeros((len(rows), 32, 32), dtype=bool)
    roi[:, BOX[0], BOX[1]] = True
    assert final["gradcam"]["leakage"]["mean"] == pytest.approx(np.nanmean(lk.leakage(up.numpy(), roi)), abs=1e-5)
    # The box is 14% of the image: a map that points at it leaks far less than a uniform map (86%).
    assert final["occlusion"]["leakage"]["mean"] < 0.5
    for m, s in final.items():
        assert s["runtime_ms"]["mean"] > 0
        assert s["similarity_to_first"]["n"] > 0
        assert -1 <= s["road_combined_pixel"]["mean"] <= 1
        assert s["relevance_mass"]["mean"] == pytest.approx(1 - s["leakage"]["mean"], abs=1e-9)
    steps = result["randomisation"]["steps"]
    assert [s["layer"] for s in steps] == ["head.2", "features.11", "features.8", "features.4", "features.0"]
    # The first checkpoint is not compared with itself.
    assert all("similarity_to_first" not in s for s in result["results"]["epoch_1.pt"].values())


def test_a_single_checkpoint_is_not_compared_with_itself(run, tmp_path):
    """Only final benchmarked: no "Spearman to first checkpoint 1.000", a note says why."""
    out = tmp_path / "an"
    shutil.copytree(run / "an", out)
    result = api.benchmark(out, checkpoints=("final",), methods=("gradcam",), **{**SMALL, "samples": 12,
                                                                                    "detail_samples": 4})
    assert all("similarity_to_first" not in s for s in result["results"]["epoch_3.pt"].values())
    assert any("not measured, only epoch_3.pt was benchmarked" in n for n in result["notes"])
    section = benchmark_section(SimpleNamespace(optional_json={BENCHMARK: result}.get, charts=ChartSet()))
    assert "Spearman to first checkpoint" not in section.body
    assert any("compared with itself" in n for n in section.notes)


def test_occlusion_and_dea_extracted_into_the_store(run):
    # i2x extract --methods gradcam,occlusion,dea stores them like CAMs; the benchmark then takes each once.
    out = run / "an_interventions"
    api.extract(config=RunConfig(checkpoints=str(run / "ck"), data=f"npz:{run / 'd.npz'}", input_size=32, limit=12,
                          methods=("gradcam", "occlusion", "dea")), out=out, progress=False)
    store = Store.open(out)
    assert store.methods == ["gradcam", "occlusion", "dea"]
    ctx = open_context(store, 2, "cpu", 64, False)
    rows = np.arange(12)
    images = torch.stack([ctx.dataset[int(j)][0] for j in rows])  # the context's dataset is the analysed sample
    labels = torch.as_tensor(store.read("labels")[rows])
    expected = occlusion(class_probability(ctx.model, labels), images, store.grid)
    stored = np.asarray(store.cam("occlusion")[2, :12])
    np.testing.assert_allclose(stored, expected.numpy(), atol=1e-5)
    assert stored.max() > 1e-3  # well above the tolerance: the comparison is not 0 = 0
    np.testing.assert_allclose(np.asarray(store.cam("dea")[2, :12]),
                               dual_evidence(torch.from_numpy(np.asarray(store.cam("gradcam")[2, :12])),
                                             expected).numpy(), atol=1e-4)
    result = api.benchmark(out, **{**SMALL, "samples": 8, "detail_samples": 4, "checkpoints": ("final",)})
    assert result["methods"] == ["gradcam", "occlusion", "dea"]


def test_checkpoint_selection_and_user_errors(run):
    store = Store.open(run / "an")
    assert select_checkpoints(store, ("first", "middle", "final"), None) == [0, 1, 2]
    assert select_checkpoints(store, ("final", "first"), None) == [0, 2]
    assert select_checkpoints(store, (), 2) == [0, 2]
    # One vocabulary for every command: first, middle (or mid), final, all and names, as text or a sequence.
    assert select_checkpoints(store, "first,mid,final") == select_checkpoints(store, ("first", "middle", "final"))
    assert select_checkpoints(store, "all") == [0, 1, 2]
    assert select_checkpoints(store, [store.checkpoints[1]["name"], "final"]) == [1, 2]
    with pytest.raises(UserError, match="choose first, middle, final"):
        select_checkpoints(store, "latest")
    assert BenchmarkConfig().checkpoints == EvidenceConfig().checkpoints == ("first", "middle", "final")
    with pytest.raises(UserError, match="--methods"):
        api.benchmark(run / "an", methods=("gradcam", "nope"), **SMALL)
    with pytest.raises(UserError, match="--roi"):
        api.benchmark(run / "an", roi=f"{run / 'roi.npz'}:absent", checkpoints=("final",), **SMALL)
    with pytest.raises(UserError, match="--samples"):
        api.benchmark(run / "an", config=None, **{**SMALL, "samples": 0})


def test_cli_and_report_section(run, result, capsys):
    code = main(["benchmark", str(run / "an"), "--checkpoints", "final", "--samples", "12", "--detail-samples", "4",
                 "--percentiles", "50", "--random-draws", "1", "--sensitivity-samples", "1", "--device", "cpu",
                 "--methods", "gradcam,dea"])
    assert code == 0
    out = capsys.readouterr().out
    assert "gradcam" in out and "ms/image" in out
    r = SimpleNamespace(optional_json={BENCHMARK: result}.get, charts=ChartSet())
    section = benchmark_section(r)
    assert "leakage outside ROI" in section.body and "<b>blue</b>" not in section.body
    for spec in r.charts.specs.values():
        assert vlc.vegalite_to_vega(spec, vl_version=vega_version())["marks"]
    assert benchmark_section(SimpleNamespace(optional_json={}.get, charts=ChartSet())) is None
