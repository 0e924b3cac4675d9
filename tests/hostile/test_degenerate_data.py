"""Degenerate data through the pipeline: a class missing from the analysed split, more prototypes asked
for than there are feature vectors, confidence changes in which HDBSCAN finds only noise, a dead target
layer (all-zero CAMs and features), and images of unexpected size, layout or channel count.

Each has a defined outcome: the analysis and the report complete and say what happened, or the
command stops with one line naming the option or file and what to do; never a traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from i2x.cli import main
from i2x.io.models import SmallCNN
from i2x.io.store import Store

from .digits_snapshots import train_on_digits


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.images / 16).astype(np.float32), data.target


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(three snapshots of a SmallCNN trained 3 epochs on 200 digits, the npz of those digits)."""
    return train_on_digits(tmp_path_factory.mktemp("trained"), n_test=100)


def npz_options(path: Path) -> list[str]:
    return ["--data", f"npz:{path}", "--input-size", "32"]


@pytest.fixture(scope="module")
def extracted(trained, tmp_path_factory) -> Path:
    """An analysis directory holding the extraction of 60 training samples (tests analyse copies of it)."""
    ckpts, npz = trained
    out = tmp_path_factory.mktemp("extracted") / "an"
    assert main(["extract", str(ckpts), "--out", str(out), "--limit", "60", *npz_options(npz)]) == 0
    return out


def copy_of(out: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(out, tmp_path / "an"))


def summary_of(out: Path) -> dict:
    """summary.json, refusing NaN/Infinity (JSON has neither; browsers reject them)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"summary.json holds {constant}")
    return json.loads((out / "summary.json").read_text(), parse_constant=refuse)


def one_line_error(stderr: str) -> str:
    """The single ``i2x: error:`` line of a user error; fails on anything else (progress-bar text aside)."""
    lines = [line[line.index("i2x: error: "):] for line in stderr.splitlines() if "i2x: error: " in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ---- classes and prototypes ---------------------------------------------------------------------------
def test_a_class_missing_from_the_analysed_split(trained, digits, tmp_path):
    ckpts, _ = trained
    x, y = digits
    test = np.flatnonzero(y[200:300] != 9) + 200  # the test split has no 9
    npz = tmp_path / "no_nines.npz"
    np.savez(npz, x_train=x[:200], y_train=y[:200], x_test=x[test], y_test=y[test])
    out = tmp_path / "an"

    assert main(["extract", str(ckpts), "--out", str(out), "--split", "test", *npz_options(npz)]) == 0
    assert main(["analyze", str(out), "--k", "8"]) == 0
    assert main(["report", str(out), "--no-png"]) == 0

    summary = summary_of(out)
    assert summary["classes"][9] == "9" and summary["n_samples"] == len(test)
    assert all(p["presence"][9] == 0.0 for p in summary["prototypes"])
    assert summary["shared"]["9"] == [] and sum(summary["final_confusion"][9]) == 0
    # the class table lists it with 0 samples and no recall
    assert '<tr><td><span id="class-9">9</span></td><td>0</td><td><span class="muted">–</span></td>' \
        in (out / "report.html").read_text()


def test_more_prototypes_than_samples_is_refused(trained, tmp_path, capsys):
    """k=5000 on 10 samples used to be clamped to the 640 feature vectors and analysed (at 20,000 on 200 samples
    that ran for minutes with no progress): it is refused in one line, before the analysis is cleared."""
    ckpts, npz = trained
    out = tmp_path / "an"
    assert main(["extract", str(ckpts), "--out", str(out), "--limit", "10", *npz_options(npz)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--k", "5000"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "i2x: error: --k 5000: more prototypes than the 10 analysed samples (the mapping fits one coefficient per "
        "prototype and class from the samples); choose --k at most 32, or extract more samples (--limit)")


def test_hdbscan_finding_only_noise(extracted, tmp_path):
    """With min_cluster_size above half the samples HDBSCAN cannot form two groups (and never forms one):
    every step is noise, no group gets its own ridge fit, and the global fit and the report stand."""
    out = copy_of(extracted, tmp_path)
    assert main(["analyze", str(out), "--k", "8", "--min-cluster-size", "31"]) == 0
    assert main(["report", str(out), "--no-png"]) == 0

    summary = summary_of(out)
    groups = summary["groups"]
    assert groups["min_cluster_size"] == 31 and groups["per_step"] == [0, 0] and groups["noise_share"] == [1.0, 1.0]
    store = Store.open(out)
    assert (store.read("analysis/groups") == -1).all() and (store.read("analysis/group_ids") == -1).all()
    assert np.isnan(store.read("analysis/group_beta")).all()
    assert np.abs(store.read("analysis/beta")).max() > 0  # the global map is still fitted
    assert not any(summary["specialized"].values())  # specialized prototypes need a group


def test_identical_snapshots_change_nothing(trained, tmp_path):
    """Three copies of one snapshot kept as steps (--keep-duplicates): every ΔŶ and ΔP is zero, so every step is
    noise and every β is exactly 0."""
    ckpts, npz = trained
    folder = tmp_path / "same"
    folder.mkdir()
    for name in ("epoch_1.pt", "epoch_2.pt", "epoch_3.pt"):
        shutil.copy(ckpts / "epoch_3.pt", folder / name)
    out = tmp_path / "an"
    assert main(["extract", str(folder), "--out", str(out), "--limit", "40", "--keep-duplicates", *npz_options(npz)]) == 0
    assert main(["analyze", str(out), "--k", "8"]) == 0

    summary = summary_of(out)
    assert summary["groups"]["per_step"] == [0, 0] and summary["uncertain"] == []
    store = Store.open(out)
    assert (store.read("analysis/beta") == 0).all() and (store.read("analysis/groups") == -1).all()
    np.testing.assert_array_equal(store.read("analysis/forgetting"), 0)
    np.testing.assert_array_equal(store.read("analysis/variability"), 0)


def test_a_dead_target_layer(trained, tmp_path, capsys):
    """The last BatchNorm before the target ReLU outputs -1 everywhere: features and every CAM are 0. The
    analysis falls back to one prototype, says the layer is dead, and the report still builds."""
    ckpts, npz = trained
    folder = tmp_path / "dead"
    folder.mkdir()
    for name in ("epoch_1.pt", "epoch_2.pt", "epoch_3.pt"):
        payload = torch.load(ckpts / name, weights_only=True)
        payload["state_dict"]["features.12.weight"].zero_()
        payload["state_dict"]["features.12.bias"].fill_(-1.0)
        torch.save(payload, folder / name)
    out = tmp_path / "an"

    assert main(["extract", str(folder), "--out", str(out), "--limit", "40", *npz_options(npz)]) == 0
    with pytest.warns(UserWarning, match="the target layer is dead"):
        assert main(["analyze", str(out), "--k", "8"]) == 0
    assert main(["report", str(out), "--no-png"]) == 0

    store = Store.open(out)
    assert not store.read("features").any()
    assert all(not store.read(f"cam/{m}").any() for m in store.methods)
    summary = summary_of(out)
    assert summary["k"] == 1 and summary["pca_explained_variance"] == 0.0
    assert summary["warnings"] == [
        "k=8 prototypes requested but the feature vectors k-means trained on hold only 1 distinct ones; using k=1; "
        "every location has the same feature vector, so the target layer is dead (e.g. a ReLU that outputs 0 "
        "everywhere): choose another --layer"]
    assert (store.read("analysis/intensity") == 0).all() and (store.read("analysis/beta") == 0).all()
    assert "the target layer is dead" in (out / "report.html").read_text()


# ---- images of unexpected size, layout or channel count ---------------------------------------------------
def test_images_too_small_for_the_model(trained, tmp_path, capsys):
    ckpts, npz = trained
    assert main(["extract", str(ckpts), "--out", str(tmp_path / "an"), "--data", f"npz:{npz}",
                 "--input-size", "2"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"i2x: error: --model small-cnn cannot run on the images of --data npz:{npz} (C x H x W = 1 x 2 x 2): Given "
        "input size: (32x1x1). Calculated output size: (32x0x0). Output size is too small; choose another "
        "--input-size or --channels")


@pytest.mark.parametrize("option", ["--input-size", "--channels"])
def test_non_positive_sizes_are_refused(option, trained, tmp_path, capsys):
    ckpts, npz = trained
    assert main(["extract", str(ckpts), "--out", str(tmp_path / "an"), "--data", f"npz:{npz}", option, "0"]) == 2
    assert one_line_error(capsys.readouterr().err) == f"i2x: error: {option} 0: must be at least 1"


def test_channels_first_arrays_read_like_channels_last(trained, digits, tmp_path):
    ckpts, _ = trained
    x, y = digits
    last, first = tmp_path / "last.npz", tmp_path / "first.npz"
    np.savez(last, x_train=x[:200, :, :, None], y_train=y[:200], x_test=x[200:260, :, :, None], y_test=y[200:260])
    np.savez(first, x_train=x[:200, None], y_train=y[:200], x_test=x[200:260, None], y_test=y[200:260])
    for npz in (last, first):
        assert main(["extract", str(ckpts), "--out", str(tmp_path / npz.stem), "--limit", "20",
                     *npz_options(npz)]) == 0
    np.testing.assert_array_equal(Store.open(tmp_path / "first").read("probs"),
                                  Store.open(tmp_path / "last").read("probs"))


def test_colour_images_for_a_grayscale_model(trained, digits, tmp_path, capsys):
    ckpts, _ = trained
    x, y = digits
    rgb = np.repeat(x[..., None], 3, axis=-1)
    npz = tmp_path / "rgb.npz"
    np.savez(npz, x_train=rgb[:200], y_train=y[:200], x_test=rgb[200:260], y_test=y[200:260])
    extract = ["extract", str(ckpts), "--limit", "20", *npz_options(npz)]

    assert main([*extract, "--out", str(tmp_path / "a")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "shape mismatches: features.0.weight: checkpoint (16, 1, 3, 3) vs model (16, 3, 3, 3)" in line
    assert "--channels" in line
    assert main([*extract, "--out", str(tmp_path / "b"), "--channels", "1"]) == 0  # the advice works


BAD_ARRAYS = {
    "5-D images": (lambda x, y: (x[:, :, :, None, None], y),
                   "images of the train split have shape (200, 8, 8, 1, 1); expected N,H,W or N,H,W,C"),
    "negative labels": (lambda x, y: (x, y - 1), "the train split has label -1; labels must be indices 0..M-1"),
    "one label per pixel": (lambda x, y: (x, np.zeros((len(y), 8, 8), dtype=int)),
                            "the train split has 200 images but labels of shape (200, 8, 8); i2x needs exactly one "
                            "class index per image (multi-label data is not supported)"),
    "empty train split": (lambda x, y: (x[:0], y[:0]), "the train split has no images"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_arrays_of_the_wrong_shape_or_labels(case, digits, tmp_path, capsys):
    x, y = digits
    make, message = BAD_ARRAYS[case]
    bx, by = make(x[:200], y[:200])
    npz = tmp_path / "bad.npz"
    np.savez(npz, x_train=bx, y_train=by, x_test=x[200:210], y_test=y[200:210])
    assert main(["train", "--data", f"npz:{npz}", "--out", str(tmp_path / "ck"), "--epochs", "1"]) == 2
    assert one_line_error(capsys.readouterr().err) == f"i2x: error: --data npz:{npz}: {message}"


def test_an_empty_analysed_split(trained, digits, tmp_path, capsys):
    ckpts, _ = trained
    x, y = digits
    npz = tmp_path / "no_test.npz"
    np.savez(npz, x_train=x[:200], y_train=y[:200], x_test=x[:0], y_test=y[:0])
    assert main(["extract", str(ckpts), "--out", str(tmp_path / "an"), "--split", "test", *npz_options(npz)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"i2x: error: --split test: this split of --data npz:{npz} has no samples")


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, Path]:
    """(an image folder of two classes whose files mix modes and sizes, two snapshots of a 3-channel 2-class model)."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    kinds = [("RGB", (40, 30)), ("L", (16, 16)), ("RGBA", (50, 50)), ("P", (20, 33)), ("I;16", (24, 24)),
             ("CMYK", (12, 40))]
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i, (mode, (w, h)) in enumerate(kinds):
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode).save(
                    root / split / label / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
            (root / split / label / "README.txt").write_text("not an image, not listed")
    ckpts = tmp_path / "ck"
    ckpts.mkdir()
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        torch.save(SmallCNN(num_classes=2, in_channels=3).state_dict(), ckpts / f"epoch_{epoch}.pt")
    return root, ckpts


def test_an_image_folder_of_mixed_modes_and_sizes(image_folder, tmp_path):
    root, ckpts = image_folder
    out = tmp_path / "an"
    assert main(["extract", str(ckpts), "--out", str(out), "--data", f"imagefolder:{root}", "--input-size", "32"]) == 0
    store = Store.open(out)
    assert store.done().all() and store.read("labels").tolist() == [0] * 6 + [1] * 6
    assert np.isfinite(store.read("probs")).all() and store.read("features").shape == (12, 8, 8, 64)


def test_an_unreadable_image_is_named(image_folder, tmp_path, capsys):
    root, ckpts = image_folder
    broken = root / "train" / "dog" / "7.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    assert main(["extract", str(ckpts), "--out", str(tmp_path / "an"), "--data", f"imagefolder:{root}",
                 "--input-size", "32"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"i2x: error: {broken}: not a readable image (in no image format PIL knows); remove or replace the file")


def test_an_image_folder_with_four_channels(image_folder, tmp_path, capsys):
    root, ckpts = image_folder
    assert main(["extract", str(ckpts), "--out", str(tmp_path / "an"), "--data", f"imagefolder:{root}",
                 "--channels", "4"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "i2x: error: --channels 4: image folders are read as RGB (3 channels) or grayscale (1)")
