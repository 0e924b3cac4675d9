"""Trust through the whole pipeline: what ``--trust-checkpoints`` allows is recorded and honoured by every
stage, the harmless objects training scripts save beside the weights load without it, hostile pickles
stay refused, and an analysis directory never names code that i2x imports without the user's word."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from i2x import api
from i2x.cli import main
from i2x.io.checkpoints import find_checkpoints
from i2x.io.checkpoints.state_dicts import load_into
from i2x.io.models import SmallCNN
from i2x.io.store import Store
from i2x.stages.analyze.config import AnalyzeConfig

from .digits_snapshots import train_on_digits

RUN = ["--input-size", "32", "--methods", "gradcam", "--k", "8", "--min-flips", "1", "--noise-quantile", "0.5"]


class RunInfo:
    """A training script's own class pickled beside the weights: loading it needs --trust-checkpoints."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


class System:
    """``os.system("touch MARKER")`` on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _rewrite(src: Path, dest: Path, extra: dict) -> Path:
    """Copy the snapshots of ``src`` into ``dest``, each with ``extra`` saved beside the weights."""
    dest.mkdir()
    for path in sorted(src.glob("epoch_*.pt")):
        torch.save({**torch.load(path, weights_only=True), **extra}, dest / path.name)
    return dest


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the plain snapshots, the npz, the folder holding both)."""
    root = tmp_path_factory.mktemp("trust")
    ckpts, npz = train_on_digits(root, n_test=60)
    return ckpts, npz, root


@pytest.fixture(scope="module")
def namespace_ckpts(trained) -> Path:
    ckpts, _, root = trained
    return _rewrite(ckpts, root / "ck-namespace", {
        "args": argparse.Namespace(lr=0.01, arch="small-cnn", out=Path("runs/digits"), betas=(0.9, 0.999)),
        "best_accuracy": np.float64(0.93), "seen": np.int64(600), "dtype": np.dtype("float32"),
        "class_weights": np.ones(10, dtype=np.float32)})


def test_what_training_scripts_save_beside_the_weights_loads_without_trust(namespace_ckpts):
    found = find_checkpoints(namespace_ckpts)
    assert [c.name for c in found] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    assert [c.step_source for c in found] == ["global_step"] * 3 or [c.step_source for c in found] == ["step"] * 3
    model = SmallCNN(num_classes=10, in_channels=1)
    state = load_into(model, found[-1])
    expected = torch.load(found[-1].path, weights_only=False)["state_dict"]
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_a_hostile_payload_beside_a_namespace_is_refused_and_writes_nothing(trained, namespace_ckpts, tmp_path,
                                                                           capsys):
    ckpts, npz, _ = trained
    marker = tmp_path / "pwned"
    hostile = _rewrite(ckpts, tmp_path / "ck", {"args": argparse.Namespace(lr=0.01), "hook": System(marker)})
    out = tmp_path / "an"
    code = main(["extract", str(hostile), "--out", str(out), "--data", f"npz:{npz}", "--input-size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "refused to load" in err and "system" in err
    assert not marker.exists() and not out.exists()


@pytest.mark.slow
def test_run_with_trust_completes_through_reliance_report_and_finetune(trained, tmp_path, capsys):
    ckpts, npz, _ = trained
    custom = _rewrite(ckpts, tmp_path / "ck", {"run_info": RunInfo(lr=0.01)})
    out = tmp_path / "an"
    assert main(["run", str(custom), "--out", str(out), "--data", f"npz:{npz}", *RUN, "--trust-checkpoints"]) == 0
    assert Store.open(out).attrs["trust_checkpoints"] is True
    assert json.loads((out / "summary.json").read_text())["reliance"]["ranking"]
    assert "Reliance: unavailable" not in (out / "report.html").read_text() and (out / "reliance.json").is_file()
    capsys.readouterr()
    # a later command is told again (the analysis folder alone cannot switch trust on) ...
    assert main(["reliance", str(out), "--max-samples", "8", "--recipients", "8"]) == 2
    assert "--trust-checkpoints" in capsys.readouterr().err
    # ... and then loads as extraction did, with the sha256 and label checks
    (tmp_path / "exclude.json").write_text("[0, 1, 2, 3]")
    assert main(["finetune", str(out), "--strategies", "full-full,curated-full", "--seeds", "1", "--exclude",
                 str(tmp_path / "exclude.json"), "--trust-checkpoints"]) == 0
    result = json.loads((out / "finetune" / "finetune.json").read_text())
    assert len(result["runs"]) == 2 and result["settings"]["start_checkpoint"]["name"] == "epoch_3.pt"


@pytest.mark.slow
def test_namespace_checkpoints_complete_a_run_without_trust(trained, namespace_ckpts, tmp_path):
    _, npz, _ = trained
    out = tmp_path / "an"
    assert main(["run", str(namespace_ckpts), "--out", str(out), "--data", f"npz:{npz}", *RUN]) == 0
    assert Store.open(out).attrs["trust_checkpoints"] is False
    assert json.loads((out / "summary.json").read_text())["reliance"]["ranking"]
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_an_analysis_folder_never_imports_its_model_file_unasked(trained, tmp_path, capsys):
    ckpts, npz, _ = trained
    net = tmp_path / "net.py"
    log = tmp_path / "imported.log"
    net.write_text(f"from pathlib import Path\nPath({str(log)!r}).open('a').write('imported\\n')\n"
                   "from i2x.io.models import SmallCNN\n\n\ndef make(num_classes, in_channels):\n"
                   "    return SmallCNN(num_classes=num_classes, in_channels=in_channels)\n")
    spec = f"{net}:make"
    api.run(checkpoints=str(ckpts), model=spec, data=f"npz:{npz}", input_size=32, methods=("gradcam",),
            out=tmp_path / "an", analyze_config=AnalyzeConfig(k=8, min_flips=1, noise_quantile=0.5),
            with_reliance=False, progress=False)
    assert Store.open(tmp_path / "an").attrs["code"]["model"]["spec"] == spec
    sent = tmp_path / "sent-to-me"
    shutil.copytree(tmp_path / "an", sent)
    log.unlink()
    capsys.readouterr()

    assert main(["report", str(sent), "--no-png"]) == 0  # the report needs no model: nothing is imported
    assert main(["reliance", str(sent)]) == 2
    assert "names code to run" in capsys.readouterr().err and not log.exists()

    net.write_text(net.read_text() + "\nprint('changed')\n")
    for confirm in (["--trust-analysis"], ["--model", spec]):
        assert main(["reliance", str(sent), *confirm]) == 2
        assert "changed since extraction" in capsys.readouterr().err and not log.exists()

    net.write_text(net.read_text().replace("\nprint('changed')\n", ""))
    small = ["--max-samples", "8", "--recipients", "8", "--random-draws", "1"]
    assert main(["reliance", str(sent), "--model", spec, *small]) == 0 and log.exists()  # confirmed: imported
