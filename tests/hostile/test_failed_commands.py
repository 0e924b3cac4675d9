"""A command that fails leaves nothing behind that it made: no empty snapshot folder after a failed ``i2x train``,
no folder holding only ``.i2x.lock`` after a command refused on a mistyped directory."""

from __future__ import annotations


import numpy as np
import pytest
from sklearn.datasets import load_digits

from i2x import api
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.lock import LOCK_NAME, locked
from i2x.stages import training


@pytest.fixture
def npz(tmp_path) -> str:
    digits = load_digits()
    path = tmp_path / "d.npz"
    x = (digits.images[:60] / 16).astype(np.float32)
    np.savez(path, x_train=x[:40], y_train=digits.target[:40], x_test=x[40:], y_test=digits.target[40:60])
    return f"npz:{path}"


def test_a_failed_training_leaves_no_empty_folder(npz, tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("the loss went wrong")

    monkeypatch.setattr(training, "train_epochs", fails)
    with pytest.raises(RuntimeError, match="the loss went wrong"):
        api.train(data=npz, out=tmp_path / "ck", epochs=1, progress=False, input_size=32)
    assert not (tmp_path / "ck").exists()


def test_a_failed_training_keeps_a_folder_it_did_not_make(npz, tmp_path, monkeypatch):
    (tmp_path / "ck").mkdir()
    monkeypatch.setattr(training, "train_epochs", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        api.train(data=npz, out=tmp_path / "ck", epochs=1, progress=False, input_size=32)
    assert (tmp_path / "ck").is_dir()


def test_a_command_refused_on_a_mistyped_directory_leaves_no_lock_behind(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "typo")]) == 2
    assert "no i2x store here" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_the_lock_keeps_a_folder_with_results_and_one_it_did_not_make(tmp_path):
    with pytest.raises(UserError):
        with locked(tmp_path / "new"):
            raise UserError("refused")
    assert not (tmp_path / "new").exists()
    with locked(tmp_path / "made"):
        (tmp_path / "made" / "summary.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == [LOCK_NAME, "summary.json"]
    (tmp_path / "given").mkdir()
    with locked(tmp_path / "given"):
        pass
    assert (tmp_path / "given" / LOCK_NAME).is_file()  # a folder the user made is theirs: left as it was used
