"""Failures from outside i2x's own checks (reliability round 3): a full disk, a store that turns read-only while
zarr writes it, object storage that is missing, out of reach or without credentials, Ctrl-C while the command starts
or while zarr still writes; and data whose error message misled (label counts called multi-label, a negative mask
value called a class). Each is one line; a command on object storage leaves no unclosed session for the exit."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import i2x
from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from fixtures_s3 import s3  # noqa: F401  (pytest fixture)
from i2x.cli import main
from i2x.io.models import SmallCNN
from i2x.io.store import Store


def one_line(err: str) -> str:
    """The one error line of a command's stderr (progress bars aside), which holds no traceback."""
    lines = [line for line in err.splitlines() if "i2x: error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def snapshots(tmp_path) -> Path:
    """Two snapshots of an untrained SmallCNN for the digits."""
    ck = tmp_path / "ck"
    ck.mkdir()
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        torch.save({"state_dict": SmallCNN(num_classes=10, in_channels=1).state_dict(), "epoch": epoch},
                   ck / f"epoch_{epoch}.pt")
    return ck


EXTRACT = ["--data", "digits", "--limit", "10", "--methods", "gradcam"]


def test_a_full_disk_during_extraction_is_one_line_that_says_it_resumes(snapshots, tmp_path, capsys, monkeypatch):
    import i2x.stages.extract.stage as stage

    out = tmp_path / "an"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "store.zarr" / "cam" / "gradcam" / "c"))

    monkeypatch.setattr(stage, "_extract_checkpoint", full)
    assert main(["extract", str(snapshots), "--out", str(out), *EXTRACT]) == 2
    line = one_line(capsys.readouterr().err)
    assert "no space left on the device writing" in line and "store.zarr" in line and "resume" in line


READ_ONLY = """
import errno, sys
from zarr.storage import LocalStore
import i2x.cli as cli

write = LocalStore.set

async def refused(self, key, value):
    # the store's folders turn read-only once checkpoint 0 is written; chmod does not stop root (the tests may run as
    # root), so the write raises what writing into a folder without permission raises
    if key.startswith(("probs/", "cam/")) and "/c/1/" in key:
        raise PermissionError(errno.EACCES, "Permission denied", str(self.root / key) + ".partial")
    return await write(self, key, value)

LocalStore.set = refused
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_store_turned_read_only_mid_extraction_is_one_line_and_resumes(snapshots, tmp_path, capsys):
    out, whole = tmp_path / "an", tmp_path / "whole"
    (tmp_path / "read_only.py").write_text(READ_ONLY)
    here = str(Path(i2x.__file__).parents[1])  # the i2x under test, in the child too
    run = subprocess.run([sys.executable, "-W", "default", str(tmp_path / "read_only.py"), "extract", str(snapshots),
                          "--out", str(out), *EXTRACT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": here})
    assert run.returncode == 2, run.stderr[-3000:]
    line = one_line(run.stderr)
    folder = re.escape(str(out / "store.zarr"))
    assert re.fullmatch(rf"i2x: error: {folder}/(probs|cam/gradcam)/c/1/0: permission denied; make it writable "
                        r"for this user \(or choose another --out\), then rerun the command \(extract and run "
                        r"resume at the first checkpoint not finished\)", line)
    assert "Task was destroyed" not in run.stderr
    assert Store.open(out).done().tolist() == [True, False]  # checkpoint 1 is not claimed as written

    assert main(["extract", str(snapshots), "--out", str(out), *EXTRACT]) == 0  # the folder writable again
    assert "1 checkpoints extracted, 1 already done" in capsys.readouterr().out
    assert main(["extract", str(snapshots), "--out", str(whole), *EXTRACT]) == 0
    resumed, reference = Store.open(out), Store.open(whole)
    assert resumed.done().tolist() == [True, True]
    for name in ("probs", "cam/gradcam", "features"):
        np.testing.assert_array_equal(resumed.read(name), reference.read(name), err_msg=name)
    np.testing.assert_allclose(resumed.read("probs")[1].sum(axis=-1), 1.0, rtol=1e-5)  # written, not the fill


@pytest.mark.parametrize("exc, line", [
    (OSError(errno.EROFS, "Read-only file system", "/data/an/store.zarr/done/c/0"),
     "/data/an/store.zarr/done/c: the file system is read-only; choose another --out (or make it writable), then "
     "rerun the command (extract and run resume at the first checkpoint not finished)"),
    (PermissionError(errno.EPERM, "Operation not permitted"),
     "permission denied; make the output directory writable for this user (or choose another --out), then rerun the "
     "command (extract and run resume at the first checkpoint not finished)"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/an/summary.json"), None),
])
def test_a_refused_local_write_is_named_by_its_folder(exc, line):
    from i2x.io.location import storage_failure

    assert storage_failure(exc) == line


def test_ctrl_c_while_the_commands_load_is_no_traceback(monkeypatch, capsys):
    import i2x.cli as cli

    def interrupted():  # Ctrl-C while build_parser imports the stages (torch): it ran outside main's try
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        code = cli.main(["analyze", "anywhere"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C while the commands load escaped main: a traceback")
    assert code == 130
    assert "i2x: interrupted" in capsys.readouterr().err


PENDING = """
import asyncio, sys
import i2x.cli as cli
from i2x.io.store import Store

def interrupted_write(self, name, data, chunks=None):  # Ctrl-C while zarr still has writes in flight
    from zarr.core.sync import _get_loop
    for _ in range(3):
        asyncio.run_coroutine_threadsafe(asyncio.sleep(3600), _get_loop())
    raise KeyboardInterrupt

Store.write = interrupted_write
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ctrl_c_mid_analysis_prints_no_pending_task_dumps(tiny_run, tmp_path):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("report*"))
    (tmp_path / "pending.py").write_text(PENDING)
    here = str(Path(i2x.__file__).parents[1])  # the i2x under test, in the child too
    run = subprocess.run([sys.executable, str(tmp_path / "pending.py"), "analyze", str(out), "--k", "4"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": here})
    assert run.returncode == 130
    assert "i2x: interrupted" in run.stderr
    assert "Task was destroyed" not in run.stderr and "Traceback" not in run.stderr, run.stderr


# ---- data whose error misled ---------------------------------------------------------------------------------
def test_too_few_labels_are_counted_not_called_multi_label(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random((1400, 8, 8), dtype=np.float32), y_train=np.arange(100) % 10,
             x_test=rng.random((20, 8, 8), dtype=np.float32), y_test=np.arange(20) % 10)
    assert main(["train", "--data", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "ck")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "give one class index per image (100 labels for 1400 images)" in line and "multi-label" not in line


def test_a_negative_mask_value_is_named_as_such(tmp_path, capsys):
    rng = np.random.default_rng(0)
    masks = np.zeros((12, 16, 16), dtype=np.int64)
    masks[:, 4:8, 4:8] = 1
    masks[4, 0, 0] = -1
    np.savez(tmp_path / "seg.npz", x_train=rng.random((12, 16, 16), dtype=np.float32), mask_train=masks,
             x_test=rng.random((4, 16, 16), dtype=np.float32), mask_test=masks[:4] * 0 + 1)
    assert main(["train", "--task", "segmentation", "--model", "small-segnet", "--data", f"npz:{tmp_path / 'seg.npz'}",
                 "--out", str(tmp_path / "ck")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "mask 4 holds the value -1; mask values are class indices 0..M-1" in line and "holds class 1" not in line


# ---- object storage ------------------------------------------------------------------------------------------
@pytest.fixture()
def storage(s3):  # noqa: F811
    """The S3 server with one bucket; each test starts from fresh S3 clients (they cache credentials and endpoint)."""
    import s3fs

    from fixtures_s3 import make_bucket

    make_bucket(s3, "i2x-ok")
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("case, change, message", [
    ("missing bucket", {}, "object storage: The specified bucket does not exist; create the bucket or fix the URL"),
    ("no credentials", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
     "object storage: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ("closed endpoint", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"},
     "object storage: cannot connect to the endpoint http://127.0.0.1:9; check AWS_ENDPOINT_URL"),
])
def test_object_storage_failures_are_one_line(storage, snapshots, monkeypatch, capsys, case, change, message):
    for key, value in change.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    bucket = "i2x-missing" if case == "missing bucket" else "i2x-ok"
    assert main(["extract", str(snapshots), "--out", f"s3://{bucket}/an", *EXTRACT]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_a_key_the_storage_does_not_know_is_one_line(storage, snapshots, monkeypatch, capsys):
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks keys from now on
    assert main(["extract", str(snapshots), "--out", "s3://i2x-ok/an", *EXTRACT]) == 2
    line = one_line(capsys.readouterr().err)
    assert "object storage refused the request" in line and "check the credentials" in line


CLOSED = """
import gc, sys
import s3fs
import i2x.cli as cli

code = cli.main(sys.argv[1:])
s3fs.S3FileSystem.clear_instance_cache()  # the collection the interpreter's exit makes, in an order of its own: now
gc.collect()
sys.exit(code)
"""


@pytest.mark.slow
def test_a_run_on_object_storage_leaves_no_session_open(storage, snapshots, tmp_path):
    """Every object storage client a command opened (the walker's, the store's through zarr) is closed when it ends:
    an open one prints "Unclosed client session" when the interpreter collects it at exit."""
    from fixtures_s3 import keys, upload

    upload(storage, "i2x-ok", snapshots, "closed/ck")
    (tmp_path / "closed.py").write_text(CLOSED)
    here = str(Path(i2x.__file__).parents[1])
    run = subprocess.run([sys.executable, "-W", "default", str(tmp_path / "closed.py"), "run", "s3://i2x-ok/closed/ck",
                          "--out", "s3://i2x-ok/closed/an", *EXTRACT, "--k", "3"],
                         capture_output=True, text=True, timeout=500, env={**os.environ, "PYTHONPATH": here})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "closed/an/report.html" in keys(storage, "i2x-ok", "closed/an/")
    for noise in ("Unclosed client session", "Unclosed connector", "Task was destroyed but it is pending",
                  "was never awaited", "Traceback"):
        assert noise not in run.stderr, run.stderr[-3000:]
