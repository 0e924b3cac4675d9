"""Data specs: digits (split, determinism, normalisation), npz in the MedMNIST and Keras layouts,
image folders, torchvision roots that are missing, and user factories, all built in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from i2x.io.data import DataOptions, ImageData, iter_batches, labels_of, load_data
from i2x.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- digits -------------------------------------------------------------------------------------
def test_digits_shapes_and_split_sizes(digits_data):
    train, test = digits_data.split("train"), digits_data.split("test")
    assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
    assert train.tensors[0].shape == (1437, 1, 32, 32) and test.tensors[0].shape == (360, 1, 32, 32)
    assert train.tensors[1].dtype == torch.long
    assert digits_data.class_names == [str(i) for i in range(10)]
    assert (digits_data.channels, digits_data.input_size, digits_data.num_classes) == (1, (32, 32), 10)
    assert digits_data.describe()["sizes"] == {"train": 1437, "test": 360}
    with pytest.raises(UserError, match="--split val"):
        digits_data.split("val")


def test_digits_split_is_the_same_every_time(digits_data):
    again = load_data("digits")
    for split in ("train", "test"):
        for a, b in zip(digits_data.split(split).tensors, again.split(split).tensors):
            assert torch.equal(a, b)


def test_digits_splits_partition_the_real_images_stratified_by_class(digits_data):
    """Every split sample, denormalised, is one of sklearn's 1,797 digits (upsampled) with its label;
    train and test together use each exactly once, and each class is split 80/20."""
    raw = load_digits()
    upsampled = F.interpolate(torch.from_numpy(raw.images / 16.0).float()[:, None], size=(32, 32),
                              mode="bilinear", align_corners=False)
    reference = F.avg_pool2d(upsampled, 4).flatten(1)
    matched = {}
    for split in ("train", "test"):
        x, y = digits_data.split(split).tensors
        pixels = F.avg_pool2d(digits_data.denormalize(x), 4).flatten(1)
        dist = torch.cdist(pixels, reference, compute_mode="donot_use_mm_for_euclid_dist")
        best = dist.argmin(1)
        assert dist.min(1).values.max() < 1e-4  # an exact copy, not merely a similar digit
        assert np.array_equal(raw.target[best.numpy()], y.numpy())
        matched[split] = best.numpy()
    used = np.concatenate([matched["train"], matched["test"]])
    assert np.array_equal(np.sort(used), np.arange(1797))
    per_class = np.bincount(raw.target)
    test_per_class = np.bincount(raw.target[matched["test"]], minlength=10)
    assert np.all(np.abs(test_per_class - 0.2 * per_class) <= 1)


def test_digits_normalisation_is_recorded_and_applied(digits_data):
    x = digits_data.split("train").tensors[0]
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5
    raw_pixels = digits_data.denormalize(x)
    assert float(raw_pixels.min()) >= 0 and float(raw_pixels.max()) <= 1
    recorded = digits_data.describe()
    assert recorded["mean"] == pytest.approx([float(raw_pixels.mean())], abs=1e-5)
    assert recorded["std"] == pytest.approx([float(raw_pixels.std())], abs=1e-5)
    assert 0.2 < recorded["mean"][0] < 0.4  # digits are mostly background: a sanity range for [0, 1] pixels


def test_digits_options_override_size_channels_and_statistics():
    data = load_data("digits", DataOptions(input_size=16, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    x = data.split("test").tensors[0]
    assert x.shape == (360, 3, 16, 16) and data.input_size == (16, 16)
    assert torch.equal(x[:, 0], x[:, 2])  # grey copied to every channel
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.25, 0.25, 0.25)
    assert float(data.denormalize(x).min()) >= 0 and float(x.min()) == pytest.approx(-2.0)  # (0 - 0.5) / 0.25
    with pytest.raises(UserError, match="--mean/--std need 3 value"):
        load_data("digits", DataOptions(channels=3, mean=(0.5,), std=(0.2,)))


# ---- npz ----------------------------------------------------------------------------------------
def _images(n: int, seed: int, shape=(8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_npz_medmnist_layout(tmp_path):
    arrays = {
        "train_images": _images(20, 0), "train_labels": (np.arange(20) % 3)[:, None],
        "val_images": _images(6, 1), "val_labels": np.array([[0], [1], [2], [0], [1], [2]]),
        "test_images": _images(9, 2), "test_labels": (np.arange(9) % 3)[:, None],
    }
    path = tmp_path / "pathmnist_like.npz"
    np.savez(path, **arrays)

    data = load_data(f"npz:{path}")

    assert set(data.splits) == {"train", "val", "test"}
    assert (data.channels, data.input_size, data.class_names) == (1, (8, 8), ["0", "1", "2"])
    assert data.mean == pytest.approx((arrays["train_images"].mean() / 255,), abs=1e-6)
    assert data.std == pytest.approx((arrays["train_images"].std(ddof=1) / 255,), abs=1e-6)
    for split in ("train", "val", "test"):
        x, y = data.split(split).tensors
        assert np.array_equal(y.numpy(), arrays[f"{split}_labels"].ravel())
        assert np.allclose(data.denormalize(x)[:, 0].numpy(), arrays[f"{split}_images"] / 255, atol=1e-6)


def test_npz_keras_layout_with_colour_and_class_names(tmp_path):
    x_train, x_test = _images(12, 3, (6, 6, 3)), _images(4, 4, (6, 6, 3))
    path = tmp_path / "keras_like.npz"
    np.savez(path, x_train=x_train, y_train=np.arange(12) % 2, x_test=x_test, y_test=np.array([1, 0, 1, 0]),
             class_names=np.array(["cat", "dog"]))

    data = load_data(f"npz:{path}", DataOptions(input_size=6))

    assert set(data.splits) == {"train", "test"}
    assert (data.channels, data.class_names) == (3, ["cat", "dog"])
    assert data.mean == pytest.approx(tuple(x_train.reshape(-1, 3).mean(0) / 255), abs=1e-6)
    x, y = data.split("test").tensors
    assert x.shape == (4, 3, 6, 6) and y.tolist() == [1, 0, 1, 0]
    assert np.allclose(data.denormalize(x).permute(0, 2, 3, 1).numpy(), x_test / 255, atol=1e-6)


def test_npz_float_images_are_not_rescaled(tmp_path):
    x = np.random.default_rng(5).random((10, 4, 4)).astype(np.float32)
    path = tmp_path / "floats.npz"
    np.savez(path, x_train=x, y_train=np.arange(10) % 2, x_test=x[:3], y_test=np.array([0, 1, 0]))
    data = load_data(f"npz:{path}")
    assert data.mean == pytest.approx((float(x.mean()),), abs=1e-6)
    assert np.allclose(data.denormalize(data.split("test").tensors[0])[:, 0].numpy(), x[:3], atol=1e-6)


def test_npz_problems_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_data(f"npz:{tmp_path / 'missing.npz'}")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=_images(4, 0), labels=np.arange(4))
    with pytest.raises(UserError, match="x_train/y_train.*found images, labels"):
        load_data(f"npz:{wrong}")
    multilabel = tmp_path / "chest_like.npz"
    np.savez(multilabel, train_images=_images(5, 0), train_labels=np.zeros((5, 14), dtype=np.uint8),
             test_images=_images(3, 1), test_labels=np.zeros((3, 14), dtype=np.uint8))
    with pytest.raises(UserError, match="one class index per image"):
        load_data(f"npz:{multilabel}")


# ---- image folders ------------------------------------------------------------------------------
COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "fox": (0, 255, 0)}


def _folder(root, layout: dict[str, dict[str, int]]) -> None:
    """Write solid-colour 10x10 PNGs: layout[split][class] = how many."""
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (10, 10), COLOURS[name]).save(folder / f"{i}.png")


def test_imagefolder_with_train_and_test_subfolders(tmp_path):
    _folder(tmp_path, {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 2}})

    data = load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=8))

    assert data.class_names == ["cat", "dog"] and data.channels == 3 and data.input_size == (8, 8)
    assert (data.mean, data.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5, "test": 3}
    assert labels_of(data.split("test")).tolist() == [0, 1, 1]
    for split in ("train", "test"):
        for x, y in (data.split(split)[i] for i in range(len(data.split(split)))):
            rgb = np.array(COLOURS[data.class_names[y]]) / 255
            expected = (rgb - IMAGENET_MEAN) / IMAGENET_STD
            assert x.shape == (3, 8, 8)
            assert np.allclose(x.numpy(), expected[:, None, None], atol=1e-5)


def test_imagefolder_grey_and_a_test_split_missing_a_class(tmp_path):
    """A test split without 'dog' must still call 'fox' class 2, as the train split does."""
    _folder(tmp_path, {"train": {"cat": 2, "dog": 2, "fox": 2}, "test": {"cat": 1, "fox": 2}})

    data = load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=4, channels=1))

    test = data.split("test")
    assert data.class_names == ["cat", "dog", "fox"] and test.classes == data.class_names
    assert labels_of(test).tolist() == [0, 2, 2] and [test[i][1] for i in range(3)] == [0, 2, 2]
    x, _ = test[0]  # a red cat: PIL's grey level for pure red is 76
    assert x.shape == (1, 4, 4) and np.allclose(x.numpy(), (76 / 255 - 0.5) / 0.5, atol=1e-6)


def test_imagefolder_problems_are_user_errors(tmp_path):
    _folder(tmp_path, {"train": {"cat": 1}, "test": {"cat": 1, "dog": 1}})
    with pytest.raises(UserError, match="test split.*dog do not exist in the train split"):
        load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=4))
    with pytest.raises(UserError, match="directory not found"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")


def test_imagefolder_without_split_folders_uses_the_root_for_both(tmp_path):
    _folder(tmp_path, {".": {"cat": 2, "dog": 2}})
    data = load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=4))
    assert len(data.split("train")) == len(data.split("test")) == 4 and data.class_names == ["cat", "dog"]


# ---- torchvision roots, factories, unknown specs ------------------------------------------------
@pytest.mark.parametrize(("kind", "where"), [
    ("mnist", "/nonexistent/MNIST/raw/"),
    ("fashionmnist", "/nonexistent/FashionMNIST/raw/"),
    ("cifar10", "/nonexistent/cifar-10-batches-py/"),
])
def test_missing_torchvision_files_say_where_to_put_them(kind, where):
    with pytest.raises(UserError) as found:
        load_data(f"{kind}:/nonexistent")
    message = str(found.value)
    assert where in message and "never downloads" in message and "download=True" not in message


FACTORY_FILE = '''
import torch
from torch.utils.data import TensorDataset
from i2x.io.data import ImageData

def triple():
    g = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(6, 2, 5, 7, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]))
    test = TensorDataset(torch.randn(3, 2, 5, 7, generator=g), torch.tensor([2, 1, 0]))
    return train, test, ["a", "b", "c"]

def full():
    train, test, names = triple()
    return ImageData("mine", {"train": train, "test": test}, names, 2, (5, 7), (0.1, 0.2), (1.0, 2.0))

not_callable = 3
'''


def test_factory_file_returning_splits_or_image_data(tmp_path):
    path = tmp_path / "my_data.py"
    path.write_text(FACTORY_FILE)

    data = load_data(f"{path}:triple")
    assert isinstance(data, ImageData) and data.class_names == ["a", "b", "c"]
    assert (data.channels, data.input_size, len(data.split("train")), len(data.split("test"))) == (2, (5, 7), 6, 3)
    assert labels_of(data.split("test")).tolist() == [2, 1, 0]
    assert data.mean == (0.0, 0.0) and data.std == (1.0, 1.0)  # nothing to undo unless the user says so

    full = load_data(f"{path}:full")
    assert full.mean == (0.1, 0.2) and full.spec == "mine"

    with pytest.raises(UserError, match="no callable named 'not_callable'"):
        load_data(f"{path}:not_callable")
    with pytest.raises(UserError, match="does not exist"):
        load_data(f"{tmp_path / 'nope.py'}:triple")


def test_unknown_spec_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown data spec; use digits, imagefolder:PATH"):
        load_data("mnist")


def test_iter_batches_slices_in_order(digits_data, tmp_path):
    test = digits_data.split("test")
    batches = list(iter_batches(test, 5, 17, 5))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), test.tensors[0][5:17])
    _folder(tmp_path, {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1}})
    folder = load_data(f"imagefolder:{tmp_path}", DataOptions(input_size=4)).split("train")
    (x, y), = list(iter_batches(folder, 1, 4, 8))
    assert y.tolist() == [0, 1, 1] and torch.equal(x[2], folder[3][0])


def test_planted_sets_open_by_name_and_the_old_spelling_still_opens(caplog):
    """``--data planted:NAME`` opens i2x.planted's factory (found through the i2x.data_specs entry point); the old
    ``i2x/io/synthetic.py:FACTORY`` spelling opens the same set and says how to write it now."""
    from i2x.io.data import DATA_SPECS
    from i2x.planted import PLANTED, planted_name, synthetic

    assert "planted:NAME" in DATA_SPECS.usage() and "marker-corner-grey" in DATA_SPECS.help()
    named = load_data("planted:shortcut")
    direct = synthetic.shortcut_data()
    for split in ("train", "test"):
        torch.testing.assert_close(named.split(split).tensors[0], direct.split(split).tensors[0])
    with caplog.at_level("WARNING"):
        old = load_data("i2x/io/synthetic.py:shortcut_data")
    assert "write --data planted:shortcut" in caplog.text
    torch.testing.assert_close(old.split("train").tensors[0], direct.split("train").tensors[0])
    for name, factory in PLANTED.items():  # the rule the old spelling (synthetic and shapes) is translated by
        if factory.__module__ in ("i2x.planted.synthetic", "i2x.planted.shapes"):
            assert planted_name(factory.__name__) == name == factory.__name__.removesuffix("_data").replace("_", "-")
    with pytest.raises(UserError, match="no such planted set; choose one of shortcut"):
        load_data("planted:nothing")
