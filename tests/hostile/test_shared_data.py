"""Runs compared or ranked together must hold the same images: `i2x drift A B` and `i2x compare` used to match
samples of different data sets or splits by their index and rank the runs on them, with at most a note inside
the page. A fingerprint of the samples (recorded at extraction; computed from the data for older stores) now
refuses them unless --allow-different-data, with the reason printed in the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from sklearn.datasets import load_digits

from i2x.cli import main
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.stages.drift.runs import compare_models

from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from hostile.digits_snapshots import train_on_digits

N = 40


def _other_digits_same_labels(npz: Path, dest: Path) -> Path:
    """The npz with every test image replaced by another digit of the same class (the labels match row by row)."""
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    held = dict(np.load(npz))
    pool = {c: list(np.flatnonzero(y[600:] == c) + 600) for c in range(10)}
    held["x_test"] = np.stack([x[pool[int(c)].pop()] for c in held["y_test"]])
    np.savez(dest, **held)
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three extracted runs of one model: A on the test digits, B on other digits with the same labels, C on
    A's digits at another input size."""
    root = tmp_path_factory.mktemp("shared")
    ck, npz = train_on_digits(root, N)
    other = _other_digits_same_labels(npz, root / "other.npz")
    out = {}
    for name, data, size in (("A", npz, 32), ("B", other, 32), ("C", npz, 16)):
        out[name] = root / name
        assert main(["extract", str(ck), "--out", str(out[name]), "--data", f"npz:{data}", "--split", "test",
                     "--input-size", str(size), "--methods", "gradcam"]) == 0
    return out


def test_runs_on_other_images_are_refused_in_the_cli_and_allowed_on_request(runs, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["drift", str(runs["A"]), str(runs["B"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the runs hold different data: {N} of the {N} samples they share by index show different images" in err
    assert "--allow-different-data" in err and not out.exists()

    assert main(["drift", str(runs["A"]), str(runs["B"]), "--out", str(out), "--allow-different-data"]) == 0
    printed = capsys.readouterr().out
    assert "note: --allow-different-data:" in printed and "matched by their index only" in printed


def test_the_same_images_at_another_input_size_are_the_same_data(runs, capsys):
    result = compare_models([runs["A"], runs["C"]], bootstrap=10)
    assert result["samples"]["n_common"] == N and result["samples"]["data_note"] is None
    assert "note:" not in capsys.readouterr().out


def test_a_store_without_a_fingerprint_is_fingerprinted_from_its_data_or_judged_by_its_specs(runs, tmp_path, capsys):
    old = tmp_path / "B_old"
    shutil.copytree(runs["B"], old)
    del zarr.open_group(str(Store.location(old)), mode="a")["fingerprint"]  # a store made before fingerprints
    with pytest.raises(UserError, match=f"{N} of the {N} samples they share by index show different images"):
        compare_models([runs["A"], old], bootstrap=10)
    Path(Store.open(old).config["data"].split(":", 1)[1]).rename(tmp_path / "gone.npz")  # its data is gone
    with pytest.raises(UserError, match="they name different --data or --split, and B_old .*has no fingerprint"):
        compare_models([runs["A"], old], bootstrap=10)
    again = tmp_path / "A_old"
    shutil.copytree(runs["A"], again)
    del zarr.open_group(str(Store.location(again)), mode="a")["fingerprint"]
    result = compare_models([runs["A"], again], bootstrap=10)  # same specs, fingerprinted from the data: agree
    assert result["samples"]["data_note"] is None


def test_compare_refuses_other_images_and_segmentation_runs(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("report*"))
    store = Store.open(other, mode="a")
    store.write("fingerprint", 1 - store.read("fingerprint"))  # the same indices and labels, other pictures
    page = tmp_path / "c.html"
    assert main(["compare", str(tiny_run), str(other), "--out", str(page)]) == 2
    assert "the runs hold different data" in capsys.readouterr().err and not page.exists()
    assert main(["compare", str(tiny_run), str(other), "--out", str(page), "--allow-different-data"]) == 0
    assert "note: --allow-different-data" in capsys.readouterr().out
    assert "--allow-different-data" in page.read_text()

    store.note({"task": "segmentation"})
    assert main(["compare", str(tiny_run), str(other), "--out", str(page)]) == 2
    assert "a segmentation run; i2x compare sets two classifiers' prototypes side" in capsys.readouterr().err
