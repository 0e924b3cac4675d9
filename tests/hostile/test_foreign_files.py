"""Writes never follow a link out of the analysis directory and never replace a file i2x did not write: a store (or
its analysis group) swapped for a link to another store, an unrelated page beside ``drift A B --out``, a folder of
the user's given as ``finetune --dest``, a read-only place. Each is refused in one line with nothing written."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.workdir import write_json


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes, following no link), to prove nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("i2x: error: "), err
    return err


@pytest.fixture
def two_runs(tiny_run, tmp_path) -> tuple[Path, Path]:  # noqa: F811
    """Two private copies of the tiny analysis."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run, a)
    shutil.copytree(tiny_run, b)
    return a, b


@pytest.mark.parametrize("linked", ["store.zarr", "store.zarr/analysis"])
def test_analyze_refuses_a_store_or_group_linked_to_another_store(two_runs, linked, capsys):
    a, b = two_runs
    shutil.rmtree(a / linked)
    (a / linked).symlink_to(b / linked, target_is_directory=True)
    before = _files(b)
    code = main(["analyze", str(a), "--k", "8"])
    err = _one_line_error(capsys)
    assert code == 2 and f"{a / linked}: is a symlink" in err and "copy" in err
    assert _files(b) == before and (a / linked).is_symlink()


def test_a_linked_store_without_analysis_gets_none_created(two_runs, capsys):
    a, b = two_runs
    shutil.rmtree(b / "store.zarr" / "analysis")
    shutil.rmtree(a / "store.zarr")
    (a / "store.zarr").symlink_to(b / "store.zarr", target_is_directory=True)
    before = _files(b)
    assert main(["analyze", str(a), "--k", "8"]) == 2
    assert "is a symlink" in _one_line_error(capsys)
    assert _files(b) == before and not (b / "store.zarr" / "analysis").exists()


def test_extract_overwrite_refuses_a_linked_store_rather_than_deleting_it(tiny_run, two_runs, capsys):  # noqa: F811
    a, b = two_runs
    shutil.rmtree(a / "store.zarr")
    (a / "store.zarr").symlink_to(b / "store.zarr", target_is_directory=True)
    before = _files(b)
    code = main(["extract", str(tiny_run.parent / "ck"), "--out", str(a), "--overwrite", "--data",
                 f"npz:{tiny_run.parent / 'd.npz'}", "--input-size", "32", "--limit", "20"])
    assert code == 2 and "is a symlink" in _one_line_error(capsys)
    assert _files(b) == before


def test_drift_of_runs_keeps_an_unrelated_page_beside_its_json(two_runs, tmp_path, capsys):
    a, b = two_runs
    w2 = tmp_path / "w2"
    w2.mkdir()
    (w2 / "res.html").write_text("<p>my own page</p>")
    code = main(["drift", str(a), str(b), "--names", "a,b", "--out", str(w2 / "res.json")])
    err = _one_line_error(capsys)
    assert code == 2 and f"{w2 / 'res.html'}: the file exists and i2x did not write it" in err
    assert (w2 / "res.html").read_text() == "<p>my own page</p>" and not (w2 / "res.json").exists()
    (w2 / "res.html").unlink()  # once the page is out of the way, i2x writes both and may replace its own
    for _ in range(2):
        assert main(["drift", str(a), str(b), "--names", "a,b", "--out", str(w2 / "res.json")]) == 0
    assert '"generator": "i2x' in (w2 / "res.json").read_text()
    assert '<meta name="generator" content="i2x' in (w2 / "res.html").read_text()


def test_drift_of_runs_into_a_folder_is_a_one_line_error(two_runs, tmp_path, capsys):
    a, b = two_runs
    code = main(["drift", str(a), str(b), "--names", "a,b", "--out", str(tmp_path)])
    assert code == 2 and "is a folder; name the file to write" in _one_line_error(capsys)


def test_finetune_refuses_a_folder_it_did_not_make_and_a_file(two_runs, tmp_path, capsys):
    a, _ = two_runs
    mine = tmp_path / "my-experiments"
    mine.mkdir()
    (mine / "finetune.json").write_text('{"my": "results"}')
    before = _files(mine)
    code = main(["finetune", str(a), "--dest", str(mine), "--epochs", "0,1"])
    err = _one_line_error(capsys)
    assert code == 2 and "--dest" in err and "was not made by i2x" in err
    assert _files(mine) == before and sorted(p.name for p in mine.iterdir()) == ["finetune.json"]
    code = main(["finetune", str(a), "--dest", str(mine / "finetune.json"), "--epochs", "0,1"])
    assert code == 2 and "is a file, not a directory; choose another --dest" in _one_line_error(capsys)
    assert _files(mine) == before


def test_finetune_refuses_a_linked_default_folder(two_runs, tmp_path, capsys):
    a, _ = two_runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (a / "finetune").symlink_to(elsewhere, target_is_directory=True)
    assert main(["finetune", str(a), "--epochs", "0,1"]) == 2
    assert "finetune: is a symlink" in _one_line_error(capsys)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_place_is_a_one_line_error_and_leaves_no_temporary_file(tmp_path, monkeypatch, code):
    real_open = os.open

    def refused(path, flags, *args, **kwargs):  # what a read-only file system (or a folder of another user) says
        if str(path).startswith(str(tmp_path)):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(UserError, match=r"res\.json: cannot write it .*writable"):
        write_json(tmp_path / "res.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_store_is_refused_before_anything_is_rewritten(two_runs, monkeypatch, capsys):
    a, _ = two_runs
    real_access = os.access
    store = a / "store.zarr"
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == store and mode == os.W_OK
                        else real_access(path, mode, **kw))  # as chmod -R a-w does for a user other than root
    before = _files(a / "store.zarr")
    assert main(["analyze", str(a), "--k", "8"]) == 2
    assert f"{store}: is read-only" in _one_line_error(capsys)
    assert _files(a / "store.zarr") == before
