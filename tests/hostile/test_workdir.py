"""The analysis directory as a careless or hostile user meets it: i2x writes only into folders it made (or
empty ones), never through a planted symlink, keeps the previous results when a command is refused, and
every reader or writer of one analysis takes its lock."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from i2x import api
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.lock import LOCK_NAME, locked
from i2x.io.store import Store
from i2x.io.workdir import MARKER, RELIANCE, REPORT, SUMMARY, write_json
from i2x.reporting import build_report
from i2x.stages.analyze.config import AnalyzeConfig
from i2x.reporting.charts import PNG_DIGESTS


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), to prove nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def copied_run(tiny_run, tmp_path) -> Path:  # noqa: F811
    """A private copy of the tiny analysis, free to be damaged."""
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out, symlinks=True)
    return out


def test_a_folder_that_is_not_an_analysis_is_refused_and_nothing_deleted(tiny_run, tmp_path, capsys):  # noqa: F811
    foreign = tmp_path / "my-results"
    (foreign / "store.zarr").mkdir(parents=True)
    (foreign / "store.zarr" / "thesis-data.csv").write_text("a,b\n1,2\n")
    (foreign / SUMMARY).write_text('{"mine": true}')
    (foreign / REPORT).write_text("<p>my report</p>")
    (foreign / "report").mkdir()
    (foreign / "report" / "figure.png").write_bytes(b"\x89PNG my figure")
    before = _snapshot(foreign)
    ckpts, npz = tiny_run.parent / "ck", tiny_run.parent / "d.npz"
    code = main(["extract", str(ckpts), "--out", str(foreign), "--data", f"npz:{npz}", "--input-size", "32",
                 "--limit", "20", "--methods", "gradcam"])
    err = capsys.readouterr().err
    assert code == 2 and "not an i2x analysis" in err and "--overwrite" in err
    assert _snapshot(foreign) == before and not (foreign / MARKER).exists() and not (foreign / LOCK_NAME).exists()


def test_an_analysis_made_by_i2x_is_recognised(tiny_run, tmp_path):  # noqa: F811
    marker = json.loads((tiny_run / MARKER).read_text())
    assert marker["settings"]["data"].startswith("npz:") and marker["i2x_version"]


def test_a_symlinked_report_page_leaves_its_target_untouched(copied_run, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (copied_run / REPORT).unlink(missing_ok=True)
    (copied_run / REPORT).symlink_to(victim)
    with pytest.raises(UserError, match="symlink"):
        build_report(copied_run, progress=False, pngs=False)
    assert victim.read_text() == "precious"


def test_a_symlinked_lock_file_leaves_its_target_untouched(copied_run, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (copied_run / LOCK_NAME).unlink(missing_ok=True)
    (copied_run / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UserError, match="symlink"):
        with locked(copied_run):
            pass
    assert victim.read_text() == "precious"


def test_a_hard_linked_lock_file_leaves_the_other_file_untouched(copied_run, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (copied_run / LOCK_NAME).unlink(missing_ok=True)
    os.link(victim, copied_run / LOCK_NAME)
    with pytest.raises(UserError, match="hard link"):
        with locked(copied_run):
            pass
    assert victim.read_text() == "precious"


def test_json_is_never_written_through_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / RELIANCE).symlink_to(victim)
    with pytest.raises(UserError, match="symlink"):
        write_json(tmp_path / RELIANCE, {"a": 1})
    assert victim.read_text() == "precious"


def test_a_full_disk_keeps_the_previous_study_whole(tmp_path, monkeypatch):
    write_json(tmp_path / RELIANCE, {"verdict": "the previous study"})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the new file's bytes never reach the disk
    with pytest.raises(OSError, match="No space"):
        write_json(tmp_path / RELIANCE, {"verdict": "a new study " * 1000})
    assert json.loads((tmp_path / RELIANCE).read_text()) == {"verdict": "the previous study"}
    assert [p.name for p in tmp_path.iterdir()] == [RELIANCE]  # no half-written file left beside it


def test_train_refuses_a_folder_that_already_holds_snapshots(tmp_path):
    digits = load_digits()
    npz = tmp_path / "d.npz"
    x = (digits.images[:120] / 16).astype(np.float32)
    np.savez(npz, x_train=x[:80], y_train=digits.target[:80], x_test=x[80:], y_test=digits.target[80:120])
    out = tmp_path / "ck"
    out.mkdir()
    (out / "epoch_7.pt").write_bytes(b"another run's snapshot")
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        api.train(data=f"npz:{npz}", out=out, epochs=1, progress=False)
    assert (out / "epoch_7.pt").read_bytes() == b"another run's snapshot"
    api.train(data=f"npz:{npz}", out=out, epochs=1, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["epoch_1.pt"]  # the other run's snapshot is gone, not mixed in


def test_analyze_with_a_bad_option_keeps_the_previous_analysis(copied_run):
    before = (copied_run / SUMMARY).read_bytes()
    with pytest.raises(UserError):
        api.analyze(copied_run, AnalyzeConfig(k=8, shared_presence=90), progress=False)
    assert (copied_run / SUMMARY).read_bytes() == before
    assert Store.open(copied_run).has("analysis/beta")


def test_report_while_another_process_writes_refuses_cleanly(copied_run, capsys):
    before = _snapshot(copied_run)
    with locked(copied_run):  # as `i2x analyze` holds it while it rewrites the analysis
        code = main(["report", str(copied_run), "--no-png"])
    assert code == 2 and "another i2x process is writing" in capsys.readouterr().err
    assert _snapshot(copied_run) == before


@pytest.mark.parametrize("damage", ["truncated", "incomplete"])
def test_report_shows_an_unreadable_study_as_unavailable(copied_run, damage):
    study = json.loads((copied_run / RELIANCE).read_text())
    if damage == "truncated":  # as a full disk left it before writes were atomic
        (copied_run / RELIANCE).write_text(json.dumps(study)[:200])
    else:  # valid JSON for this very analysis, but without the ranked results
        write_json(copied_run / RELIANCE, {k: v for k, v in study.items() if k != "ranking"})
    page = build_report(copied_run, progress=False, pngs=False).read_text(encoding="utf-8")
    assert "Reliance: unavailable" in page and "id=\"overview\"" in page


def test_report_swaps_its_charts_folder_in_whole(copied_run):
    (copied_run / "report").mkdir(exist_ok=True)
    (copied_run / "report" / "stale.png").write_bytes(b"old chart")
    build_report(copied_run, progress=False, pngs=True)
    pngs = sorted(p.name for p in (copied_run / "report").iterdir())
    assert "stale.png" not in pngs and pngs and all(n.endswith(".png") or n == PNG_DIGESTS for n in pngs)
    assert not [p for p in copied_run.iterdir() if p.name.startswith(".report.")]


def test_an_interrupted_analyze_does_not_promise_a_resume(copied_run, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "analyze", interrupted)
    assert main(["analyze", str(copied_run)]) == 130
    err = capsys.readouterr().err
    assert "resume" not in err and "start this step over" in err


def test_the_lock_file_holds_the_pid_of_its_holder(tmp_path):
    with locked(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
