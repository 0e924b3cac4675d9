"""Data a careless user hands over: fractional, stray or non-numeric labels, a single class, NaN pixels
or ``--std 0``, images that are not square, files that are not npz archives, image folders with an
empty class, a link to their parent or a FIFO named ``x.png``, and a ``--layer`` without a grid.

Each is refused before anything runs with one line naming the file, split, sample or option (or, for
the image folder's links and FIFOs, skipped with a warning) instead of a silent wrong result, a
traceback or a hang."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from i2x.cli import main
from i2x.errors import UserError
from i2x.io.data import MIN_PER_CLASS, DataOptions, labels_of, load_data
from i2x.io.models import SmallCNN


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.images[:260] / 16).astype(np.float32), data.target[:260]


def npz_with(path: Path, x: np.ndarray, y: np.ndarray, **extra) -> str:
    np.savez(path, x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:], **extra)
    return f"npz:{path}"


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("i2x: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# ---- labels ---------------------------------------------------------------------------------------------
def test_fractional_labels_are_refused_not_truncated(digits, tmp_path):
    x, y = digits
    labels = y.astype(np.float64)
    labels[7] = 1.7
    with pytest.raises(UserError, match=r"train split: sample 7 has label 1\.7; labels must be whole class indices"):
        load_data(npz_with(tmp_path / "d.npz", x, labels))


def test_whole_float_labels_are_accepted(digits, tmp_path):
    x, y = digits
    data = load_data(npz_with(tmp_path / "d.npz", x, y.astype(np.float32)))
    assert labels_of(data.split("train")).tolist() == y[:200].tolist() and data.num_classes == 10


def test_a_stray_label_is_refused_naming_the_sample_not_a_bigger_model(digits, tmp_path):
    x, y = digits
    labels = y.copy()
    labels[57] = 99
    with pytest.raises(UserError, match=r"train split's sample 57 has label 99, but label\(s\) 10\.\.98 never occur"):
        load_data(npz_with(tmp_path / "d.npz", x, labels))


def test_a_label_beyond_the_class_names_is_refused(digits, tmp_path):
    x, y = digits
    labels = y.copy()
    labels[203] = 10  # test sample 3
    names = np.array([f"digit {i}" for i in range(10)])
    with pytest.raises(UserError, match="test split's sample 3 has label 10, beyond 10 class names"):
        load_data(npz_with(tmp_path / "d.npz", x, labels, class_names=names))


def test_a_test_label_no_training_sample_has_is_refused(digits, tmp_path):
    x, y = digits
    labels = y.copy()
    labels[205] = 12
    with pytest.raises(UserError, match=r"test split's sample 5 has label 12, beyond the train split's classes 0\.\.9"):
        load_data(npz_with(tmp_path / "d.npz", x, labels))


def test_a_single_class_is_refused(digits, tmp_path):
    x, y = digits
    with pytest.raises(UserError, match="single class .*needs at least 2"):
        load_data(npz_with(tmp_path / "d.npz", x, np.zeros_like(y)))


def test_a_class_with_too_few_training_samples_states_the_minimum(digits, tmp_path):
    x, y = digits
    train = np.r_[np.flatnonzero(y[:200] != 9), np.flatnonzero(y[:200] == 9)[:1]]
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x[train], y_train=y[train], x_test=x[200:], y_test=y[200:])
    with pytest.raises(UserError, match=f"every class needs at least {MIN_PER_CLASS} training samples; too few in 9 \\(1\\)"):
        load_data(f"npz:{path}")


# ---- pixels and sizes -----------------------------------------------------------------------------------
def test_a_nan_pixel_is_refused_naming_the_sample(digits, tmp_path):
    x, y = digits
    bad = x.copy()
    bad[13, 4, 4] = np.nan
    with pytest.raises(UserError, match="train split's sample 13 holds NaN or Inf; fix or remove that image"):
        load_data(npz_with(tmp_path / "d.npz", bad, y))


@pytest.mark.parametrize("std", [(0.0,), (-1.0,), (float("nan"),)])
def test_a_std_that_does_not_divide_is_refused(digits, tmp_path, std):
    x, y = digits
    with pytest.raises(UserError, match="--std .*must be a positive finite number"):
        load_data(npz_with(tmp_path / "d.npz", x, y), DataOptions(std=std))
    with pytest.raises(UserError, match="--std"):
        load_data("digits", DataOptions(std=std))


def test_non_square_images_keep_both_sides(digits, tmp_path):
    x, y = digits
    tall = x[:, :, :5]  # 8x5
    data = load_data(npz_with(tmp_path / "d.npz", tall, y))
    assert data.input_size == (8, 5) and tuple(data.split("train").tensors[0].shape[-2:]) == (8, 5)
    square = load_data(npz_with(tmp_path / "d.npz", tall, y), DataOptions(input_size=16))
    assert square.input_size == (16, 16)


# ---- files that are not what they claim -------------------------------------------------------------------
def text_npz(path: Path) -> None:
    path.write_text("x_train,y_train\n0.1,1\n")


def string_labels(path: Path) -> None:
    x = np.zeros((4, 8, 8), np.float32)
    np.savez(path, x_train=x, y_train=np.array(["cat", "dog", "cat", "dog"]), x_test=x, y_test=np.array(["cat"] * 4))


def object_labels(path: Path) -> None:
    x = np.zeros((4, 8, 8), np.float32)
    y = np.array([0, 1, "two", None], dtype=object)
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)


def string_images(path: Path) -> None:
    np.savez(path, x_train=np.full((4, 2, 2), "px"), y_train=np.array([0, 1, 0, 1]), x_test=np.full((4, 2, 2), "px"),
             y_test=np.array([0, 1, 0, 1]))


def truncated(path: Path) -> None:
    x = np.zeros((40, 8, 8), np.float32)
    np.savez(path, x_train=x, y_train=np.arange(40) % 2, x_test=x, y_test=np.arange(40) % 2)
    path.write_bytes(path.read_bytes()[:300])


BAD_FILES = {
    "a text file named .npz": (text_npz, "not an .npz archive"),
    "string labels": (string_labels, "has labels of strings; labels must be integer class indices"),
    "object labels": (object_labels, "not a readable .npz archive (it holds pickled Python objects"),
    "string images": (string_images, "images of the train split are of dtype <U2; give numbers"),
    "a truncated npz": (truncated, "not an .npz archive"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_npz_files_that_cannot_be_read_give_one_line(case, tmp_path, capsys):
    write, message = BAD_FILES[case]
    path = tmp_path / "bad.npz"
    write(path)
    assert main(["train", "--data", f"npz:{path}", "--out", str(tmp_path / "ck"), "--epochs", "1"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"i2x: error: --data npz:{path}: ") and message in line, line
    assert not (tmp_path / "ck").exists()


# ---- image folders ----------------------------------------------------------------------------------------
def image_folder(root: Path, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / split / label / f"{i}.png")


def test_an_empty_class_folder_is_named_with_its_split(tmp_path):
    image_folder(tmp_path)
    for png in (tmp_path / "test" / "dog").iterdir():
        png.unlink()
    with pytest.raises(UserError, match=r"\(test split, .*test\): Found no valid file for the classes dog"):
        load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=4))


def test_a_link_to_the_parent_folder_does_not_multiply_the_samples(tmp_path, caplog):
    image_folder(tmp_path)
    (tmp_path / "train" / "cat" / "up").symlink_to(tmp_path / "train", target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        data = load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=4))
    train = data.split("train")
    assert len(train) == 6 and labels_of(train).tolist() == [0, 0, 0, 1, 1, 1]
    assert [Path(p).parent.name for p, _ in train.samples] == ["cat"] * 3 + ["dog"] * 3
    assert "reached again through symbolic links" in caplog.text


def test_a_link_to_an_image_outside_the_folder_is_followed(tmp_path):
    image_folder(tmp_path / "data")
    Image.new("RGB", (6, 6), (9, 9, 9)).save(tmp_path / "pool.png")
    (tmp_path / "data" / "train" / "dog" / "extra.png").symlink_to(tmp_path / "pool.png")
    data = load_data(f"imagefolder:{tmp_path / 'data'}", DataOptions(input_size=4))
    assert len(data.split("train")) == 7


def test_a_fifo_named_like_an_image_is_skipped_with_a_warning(tmp_path, caplog):
    image_folder(tmp_path)
    fifo = tmp_path / "train" / "cat" / "x.png"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING):
        data = load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=4))
    assert str(fifo) not in [p for p, _ in data.split("train").samples] and len(data.split("train")) == 6
    assert "not regular files" in caplog.text and "x.png" in caplog.text
    assert data.split("train")[0][0].shape == (3, 4, 4)  # and loading the rest never opens it


# ---- the target layer's grid --------------------------------------------------------------------------------
def test_a_layer_without_a_grid_is_refused_with_advice(digits, tmp_path, capsys):
    x, y = digits
    spec = npz_with(tmp_path / "d.npz", x, y)
    ck = tmp_path / "ck"
    ck.mkdir()
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        torch.save(SmallCNN(num_classes=10, in_channels=1).state_dict(), ck / f"epoch_{epoch}.pt")

    code = main(["extract", str(ck), "--out", str(tmp_path / "an"), "--data", spec, "--input-size", "16",
                 "--layer", "head.0", "--limit", "10"])

    line = one_line_error(capsys.readouterr().err)
    assert code == 2
    assert "--layer head.0: its output grid is 1x1" in line and "at least 2x2" in line
    assert "the default layer is features" in line
    assert not (tmp_path / "an" / "store.zarr").exists()



def test_a_std_so_small_the_normalised_pixels_overflow_is_refused(digits, tmp_path):
    x, y = digits
    with pytest.raises(UserError, match="train split's sample 0 holds NaN or Inf after normalisation; fix that image "
                                        "or --mean/--std"):
        load_data(npz_with(tmp_path / "d.npz", x, y), DataOptions(mean=(-1.0,), std=(1e-40,)))
