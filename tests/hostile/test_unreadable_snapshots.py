"""A snapshot-named entry that cannot be read (a symbolic link that loops, dangles or points at a device, a pipe) is
refused by name with exit status 2, never skipped without a word (the run would miss a step and say nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from i2x.cli import main
from i2x.errors import UserError
from i2x.io.checkpoints import find_checkpoints
from i2x.io.models import SmallCNN


def _snapshots(folder: Path) -> Path:
    """Two real snapshots of a digits-sized SmallCNN."""
    folder.mkdir()
    for i in (1, 2):
        torch.manual_seed(i)
        torch.save(SmallCNN(num_classes=10, in_channels=1).state_dict(), folder / f"epoch_{i}.pt")
    return folder


def _plant(folder: Path, kind: str) -> Path:
    entry = folder / "epoch_3.pt"
    if kind == "loop":
        entry.symlink_to(entry.name)
    elif kind == "dangling":
        entry.symlink_to(folder / "gone.pt")
    elif kind == "device":
        entry.symlink_to("/dev/zero")
    else:
        os.mkfifo(entry)
    return entry


WHY = {"loop": "a symbolic link that loops", "dangling": "a symbolic link to .*gone.pt, which does not exist",
       "device": "a symbolic link to /dev/zero, which is not a regular file",
       "pipe": r"not a regular file \(a device, pipe or socket\)"}


@pytest.mark.parametrize("kind", list(WHY))
def test_an_unreadable_snapshot_is_named_not_skipped(tmp_path, kind):
    folder = _snapshots(tmp_path / "ck")
    _plant(folder, kind)
    with pytest.raises(UserError, match=f"epoch_3.pt: {WHY[kind]}; remove it"):
        find_checkpoints(folder)


def test_the_cli_exits_2_naming_the_link(tmp_path, capsys):
    folder = _snapshots(tmp_path / "ck")
    _plant(folder, "dangling")
    digits = load_digits()
    npz = tmp_path / "d.npz"
    x = (digits.images[:60] / 16).astype(np.float32)
    np.savez(npz, x_train=x[:40], y_train=digits.target[:40], x_test=x[40:], y_test=digits.target[40:60])
    code = main(["extract", str(folder), "--out", str(tmp_path / "an"), "--data", f"npz:{npz}", "--input-size", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "epoch_3.pt: a symbolic link to" in err
    assert not (tmp_path / "an").exists()


def test_other_broken_links_in_the_folder_do_not_matter(tmp_path):
    folder = _snapshots(tmp_path / "ck")
    (folder / "notes.txt").symlink_to(folder / "gone.txt")
    (folder / "optimizer.pt").symlink_to(folder / "gone.pt")  # the Trainer's state, never read as weights
    assert [c.name for c in find_checkpoints(folder)] == ["epoch_1.pt", "epoch_2.pt"]
