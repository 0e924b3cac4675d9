"""End to end on a two-class task: train, extract, analyse; is an uncertain prototype more than noise?

* Null: the bottom-right marker sits on a random half of the images whatever their class; the run
  flags no more significant uncertain prototypes than its null model expects.
* Conflict: the same images, trained in three phases in which the marker predicts class 1, then
  class 0, then class 1 again (the marker on 90% of the leading class's training images). The
  phases are first proven to move the model (adding the marker to clean test images raises
  the logit margin of class 1 after phases 1 and 3 and lowers it after phase 2); then the marker's prototype,
  found by its location, must be flagged as a significant uncertain prototype.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i2x.io.models import build_model
from i2x.stages.analysis import AnalyzeConfig, analyze
from i2x.stages.context import RunConfig
from i2x.stages.extraction import extract
from i2x.stages.training import TrainConfig, train

from planted import BOTTOM_RIGHT, _two_class, _two_class_split, two_class_data, two_class_phase_data
from test_analysis_planted import marker_prototype

PLANTED = str(Path(__file__).with_name("planted.py"))
PHASES = (1, 0, 1)  # the class the marker predicts in each training phase
EPOCHS_PER_PHASE = 3
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def marker_effect(model: torch.nn.Module, data) -> float:
    """Mean change of the logit margin of class 1 over class 0 when the marker is added to every clean test image."""
    n_test = len(_two_class_split()["test"][1])
    marked = _two_class({"train": np.zeros(len(_two_class_split()["train"][1]), bool), "test": np.ones(n_test, bool)},
                        "marked", like=data)
    model.eval()
    with torch.no_grad():
        p = [model(d.split("test").tensors[0]) @ torch.tensor([-1.0, 1.0]) for d in (data, marked)]
    return float((p[1] - p[0]).mean())


def analysed(out: Path, checkpoints: Path) -> dict:
    extract(RunConfig(checkpoints=str(checkpoints), data=f"{PLANTED}:two_class_data", methods=("gradcam",)), out,
            progress=False)
    return analyze(out, AnalyzeConfig(k=16), progress=False).summary


def test_two_class_null_run_flags_no_more_than_chance(tmp_path):
    data = two_class_data()
    torch.manual_seed(0)
    net = build_model("small-cnn", num_classes=2, in_channels=1)
    train(net, data.split("train"), data.split("test"), tmp_path / "ck",
          TrainConfig(epochs=3 * EPOCHS_PER_PHASE, batch_size=16, progress=False))
    summary = analysed(tmp_path / "an", tmp_path / "ck")
    c = summary["uncertainty"]
    assert c["view"] == "margin" and c["null_runs"] == 20
    assert c["significant"] <= c["expected_significant"]["mean"] + 2 * c["expected_significant"]["sd"] + 0.5, c
    assert c["flagged"] <= c["expected_flagged"]["mean"] + 2 * c["expected_flagged"]["sd"] + 0.5, c


def test_two_class_conflict_is_a_significant_uncertain_prototype(tmp_path):
    data = two_class_data()
    torch.manual_seed(0)
    net = build_model("small-cnn", num_classes=2, in_channels=1)
    effects, step = [], 0
    (tmp_path / "ck").mkdir()
    for phase, leader in enumerate(PHASES):
        phase_data = two_class_phase_data(leader, like=data)
        train(net, phase_data.split("train"), data.split("test"), tmp_path / f"phase{phase}",
              TrainConfig(epochs=EPOCHS_PER_PHASE, seed=phase, batch_size=16, progress=False))
        effects.append(marker_effect(net, data))
        for e in range(1, EPOCHS_PER_PHASE + 1):  # one directory of snapshots, numbered along the whole run
            snap = torch.load(tmp_path / f"phase{phase}" / f"epoch_{e}.pt", weights_only=True)
            step += 1
            torch.save({**snap, "epoch": step, "step": step}, tmp_path / "ck" / f"epoch_{step}.pt")
    # the phases move the model: the marker pushes toward class 1, then class 0, then class 1
    assert effects[0] > 0.2 and effects[1] < -0.2 and effects[2] > 0.2, effects
    summary = analysed(tmp_path / "an", tmp_path / "ck")
    proto, enrichment = marker_prototype(tmp_path / "an", data.extra["marked"]["train"], BOTTOM_RIGHT)
    assert enrichment > 0.3, (proto, enrichment)
    flagged = {u["prototype"]: u for u in summary["uncertain"]}
    assert proto in flagged and flagged[proto]["significant"], (proto, summary["uncertain"], summary["uncertainty"])
    assert flagged[proto]["significant_flips"] >= 2
