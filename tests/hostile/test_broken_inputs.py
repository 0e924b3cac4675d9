"""Broken checkpoint directories through the command line: unreadable files, weights of another model,
diverged (NaN/Inf) snapshots, a directory without snapshots and a single snapshot.

Unreadable or mismatched files stop the run with one line naming the file and the fix. A diverged
snapshot does not: it is stored as NaN, flagged in the summary and the report, and left out of every
step, so the analysis equals the one of the remaining snapshots.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from i2x.cli import main
from i2x.io.models import SmallCNN
from i2x.io.store import Store

from .digits_snapshots import train_on_digits

ANALYSIS_ARRAYS = ("centroids", "assign", "present", "share", "groups", "beta", "alpha", "r2", "group_ids",
                   "group_beta")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    """(three snapshots of a SmallCNN trained 3 epochs on 200 digits, the ``--data`` options of those digits)."""
    ckpts, npz = train_on_digits(tmp_path_factory.mktemp("trained"), n_test=60)
    return ckpts, ["--data", f"npz:{npz}", "--input-size", "32"]


def copy_of(ckpts: Path, tmp_path: Path, name: str = "ckpts") -> Path:
    return Path(shutil.copytree(ckpts, tmp_path / name))


def one_line_error(stderr: str) -> str:
    """The single ``i2x: error:`` line of a user error; fails on anything else. A progress bar left open by
    the failing stage may precede it on the same line (its text is cut off here)."""
    lines = [line[line.index("i2x: error: "):] for line in stderr.splitlines() if "i2x: error: " in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def poison(path: Path, key: str, value: float) -> None:
    """Put ``value`` (NaN or Inf) into one weight of a snapshot the trainer wrote."""
    payload = torch.load(path, weights_only=True)
    payload["state_dict"][key].view(-1)[0] = value
    torch.save(payload, path)


# ---- unreadable files ------------------------------------------------------------------------------
def _truncated_zip(path: Path) -> None:
    torch.save(SmallCNN().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])


def _truncated_safetensors(path: Path) -> None:
    save_file(SmallCNN().state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:3000])


BROKEN: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "truncated zip": ("epoch_4.pt", _truncated_zip, "(a zip archive without its central directory, as when a "
                      "download or copy is cut short); is it truncated or corrupt?"),
    "zero bytes": ("epoch_4.pt", lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
    "random bytes named .pt": ("epoch_4.pt", lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)),
                               "(no torch.save format); is it truncated or corrupt?"),
    "text named .pth": ("epoch_4.pth", lambda p: p.write_text("lr=0.1\n"), "is it truncated or corrupt?"),
    "truncated safetensors": ("epoch_4.safetensors", _truncated_safetensors,
                              "not a readable safetensors file"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_unreadable_snapshot_stops_the_run_with_one_line_naming_it(case, trained, tmp_path, capsys):
    ckpts, data = trained
    folder = copy_of(ckpts, tmp_path)
    name, write, message = BROKEN[case]
    write(folder / name)

    code = main(["run", str(folder), "--out", str(tmp_path / "out"), "--limit", "20", *data])

    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and str(folder / name) in line and message in line and "trust" not in line
    assert not (tmp_path / "out" / "store.zarr").exists()


def test_weights_of_another_architecture_name_the_file_and_the_keys(trained, tmp_path, capsys):
    ckpts, data = trained
    folder = tmp_path / "other"
    folder.mkdir()
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).state_dict(),
               folder / "epoch_1.pt")

    assert main(["extract", str(folder), "--out", str(tmp_path / "out"), "--limit", "20", *data]) == 2

    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"i2x: error: {folder / 'epoch_1.pt'}: the checkpoint does not fit the model (")
    assert "missing keys: features.0.weight" in line and "unexpected keys: 0.weight, 0.bias, 3.weight" in line
    assert line.endswith("Check --model, --num-classes, --channels and the data's class count.")


def test_a_different_class_count_names_the_mismatched_head(trained, tmp_path, capsys):
    _, data = trained
    folder = tmp_path / "five"
    folder.mkdir()
    torch.save(SmallCNN(num_classes=5).state_dict(), folder / "epoch_1.pt")

    assert main(["extract", str(folder), "--out", str(tmp_path / "out"), "--limit", "20", *data]) == 2

    line = one_line_error(capsys.readouterr().err)
    assert "shape mismatches: head.2.weight: checkpoint (5, 64) vs model (10, 64), head.2.bias" in line
    assert main(["extract", str(folder), "--out", str(tmp_path / "o2"), "--num-classes", "5", *data]) == 2
    assert one_line_error(capsys.readouterr().err) == "i2x: error: --num-classes 5: the data has 10 classes"


def test_the_wrong_model_spec_for_the_snapshots(trained, tmp_path, capsys):
    ckpts, data = trained
    assert main(["extract", str(ckpts), "--out", str(tmp_path / "out"), "--model", "torchvision:resnet18",
                 "--limit", "10", *data]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "does not fit the model (missing keys: conv1.weight" in line and "unexpected keys: features.0.weight" in line


# ---- diverged snapshots ------------------------------------------------------------------------------
def test_a_diverged_snapshot_is_flagged_shown_and_left_out_of_every_step(trained, tmp_path, capsys):
    ckpts, data = trained
    folder = copy_of(ckpts, tmp_path)
    poison(folder / "epoch_2.pt", "features.4.weight", float("nan"))
    out, reference = tmp_path / "out", tmp_path / "without"
    extract = ["--limit", "60", "--batch-size", "32", *data]

    assert main(["extract", str(folder), "--out", str(out), *extract]) == 0
    assert "diverged (NaN/Inf weights, stored as NaN): epoch_2.pt" in capsys.readouterr().out
    assert main(["analyze", str(out), "--k", "8"]) == 0
    assert "diverged checkpoints (NaN/Inf weights, left out of every step): epoch_2.pt" in capsys.readouterr().out
    assert main(["report", str(out), "--no-png"]) == 0

    store = Store.open(out)
    np.testing.assert_array_equal(store.read("finite"), [1, 0, 1])
    assert np.isnan(store.read("probs")[1]).all() and np.isnan(store.cam("gradcam")[1]).all()
    assert np.isfinite(store.read("probs")[[0, 2]]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged"] == ["epoch_2.pt"] and summary["steps"] == [[0, 2]]
    assert summary["accuracy"][1] is None and None not in (summary["accuracy"][0], summary["accuracy"][2])
    html = (out / "report.html").read_text()
    warning = '<span class="chip warn">diverged</span> epoch_2.pt: its weights hold NaN/Inf; left out of every step'
    assert warning in html
    assert "3 (1 diverged), 1 steps between usable ones" in html

    # the analysis equals the one of the two finite snapshots alone
    assert main(["extract", str(folder), "--out", str(reference), "--checkpoints", "epoch_1.pt,epoch_3.pt",
                 *extract]) == 0
    assert main(["analyze", str(reference), "--k", "8"]) == 0
    ref = Store.open(reference)
    for name in ANALYSIS_ARRAYS:
        np.testing.assert_array_equal(store.read(f"analysis/{name}"), ref.read(f"analysis/{name}"), err_msg=name)
    np.testing.assert_array_equal(store.read("analysis/intensity")[[0, 2]], ref.read("analysis/intensity"))


def test_a_diverged_final_snapshot_says_how_to_leave_it_out(trained, tmp_path, capsys):
    ckpts, data = trained
    folder = copy_of(ckpts, tmp_path)
    poison(folder / "epoch_3.pt", "features.0.weight", float("inf"))
    out = tmp_path / "out"
    extract = ["extract", str(folder), "--out", str(out), "--limit", "30", *data]
    assert main(extract) == 0

    assert main(["analyze", str(out), "--k", "4"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (f"i2x: error: {out / 'store.zarr'}: the final checkpoint epoch_3.pt diverged (NaN/Inf weights), "
                    "and the prototypes are built from the final checkpoint's features; extract again without it "
                    "(e.g. add --first 2 --overwrite to the `i2x extract` command)")
    assert main([*extract, "--first", "2", "--overwrite"]) == 0  # the advice works
    assert main(["analyze", str(out), "--k", "4"]) == 0


def test_every_snapshot_diverged(trained, tmp_path, capsys):
    ckpts, data = trained
    folder = copy_of(ckpts, tmp_path)
    for name in ("epoch_1.pt", "epoch_2.pt", "epoch_3.pt"):
        poison(folder / name, "head.2.bias", float("nan"))
    out = tmp_path / "out"
    assert main(["extract", str(folder), "--out", str(out), "--limit", "10", *data]) == 0
    assert main(["analyze", str(out)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"i2x: error: {out / 'store.zarr'}: every checkpoint's weights hold NaN/Inf; nothing to analyse")


# ---- no snapshots, one snapshot ------------------------------------------------------------------------
def test_a_directory_without_snapshots(trained, tmp_path, capsys):
    _, data = trained
    folder = tmp_path / "empty"
    (folder / "logs").mkdir(parents=True)
    (folder / "notes.txt").write_text("lr 0.1")
    (folder / "optimizer.pt").write_bytes(b"not weights")  # Trainer clutter is not a snapshot

    assert main(["run", str(folder), "--out", str(tmp_path / "out"), *data]) == 2

    assert one_line_error(capsys.readouterr().err) == (
        f"i2x: error: {folder}: no checkpoints found (looked for *.pt, *.pth, *.ckpt, *.bin, *.safetensors, *.pth.tar files "
        "and HF-style folders holding model.safetensors or pytorch_model.bin)")


def test_a_single_snapshot_extracts_and_the_analysis_says_what_needs_two(trained, tmp_path, capsys):
    ckpts, data = trained
    folder = tmp_path / "single"
    folder.mkdir()
    shutil.copy(ckpts / "epoch_3.pt", folder)
    out = tmp_path / "out"

    assert main(["extract", str(folder), "--out", str(out), "--limit", "30", *data]) == 0
    assert "1 checkpoints extracted" in capsys.readouterr().out
    assert Store.open(out).done().tolist() == [True]

    assert main(["analyze", str(out), "--k", "4"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"i2x: error: {out / 'store.zarr'}: only 1 usable checkpoint(s); prototypes, intensity and accuracy are "
        "written, but confidence groups, the ridge mapping and the structure need two or more checkpoints (deltas)")
    store = Store.open(out)
    assert store.read("analysis/assign").shape == (30, 8, 8) and store.read("analysis/accuracy").shape == (1,)
    assert not (out / "summary.json").exists()

    assert main(["report", str(out)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"i2x: error: {out}: no summary.json; run `i2x analyze {out}` first")
    assert main(["run", str(folder), "--out", str(tmp_path / "run"), "--limit", "30", "--k", "4", *data]) == 2
    assert "need two or more checkpoints" in one_line_error(capsys.readouterr().err)
