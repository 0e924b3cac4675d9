"""The loaders of the file-backed ``--data`` specs: digits, npz archives, torchvision sets and image folders.

Each loader takes its spec's argument and the user's :class:`DataOptions` and returns a validated
:class:`ImageData`; :mod:`i2x.io.data` registers them and documents their defaults.
"""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from i2x.errors import UserError
from i2x.io.datasets import DataOptions, ImageData, check_classes, check_stats, tensor_data
from i2x.io.masks import npz_masks

log = logging.getLogger(__name__)


def digits(opts: DataOptions) -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=0.2, random_state=0, stratify=digits.target
    )
    arrays = {
        "train": (images[idx_train], digits.target[idx_train]),
        "test": (images[idx_test], digits.target[idx_test]),
    }
    return tensor_data("digits", arrays, [str(i) for i in range(10)], 32, opts)


def npz(path: str, opts: DataOptions) -> ImageData:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--data npz:{path}: file not found")
    try:
        if zipfile.is_zipfile(p):
            with np.load(p, allow_pickle=False) as archive:
                segmented = npz_masks(f"npz:{path}", archive, p, opts)
            if segmented is not None:
                return segmented
        arrays, names = _read_npz(p, path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # what np.load raises on a file that is no npz, a cut-short one, or object arrays (pickles: never loaded)
        why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if "allow_pickle" in why:
            why = "it holds pickled Python objects (object arrays), which i2x never loads"
        raise UserError(f"--data npz:{path}: not a readable .npz archive ({why}); save it with "
                        "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) using numeric arrays") from None
    return tensor_data(f"npz:{path}", arrays, names, None, opts)


def _read_npz(p: Path, path: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """The splits' (images, labels) arrays and the class names of an npz archive, read into memory."""
    if not zipfile.is_zipfile(p):
        raise UserError(f"--data npz:{path}: not an .npz archive (np.savez writes a zip file; this is not one)")
    with np.load(p, allow_pickle=False) as npz:
        keys = set(npz.files)
        layouts = {
            "medmnist": {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels"),
                         "val": ("val_images", "val_labels")},
            "keras": {"train": ("x_train", "y_train"), "test": ("x_test", "y_test"), "val": ("x_val", "y_val")},
        }
        for layout in layouts.values():
            if {"train", "test"} <= {s for s, (xk, yk) in layout.items() if xk in keys and yk in keys}:
                arrays = {s: (npz[xk], npz[yk]) for s, (xk, yk) in layout.items() if xk in keys and yk in keys}
                break
        else:
            raise UserError(
                f"--data npz:{path}: expected arrays train_images/train_labels/test_images/test_labels (MedMNIST) "
                f"or x_train/y_train/x_test/y_test (Keras); found {', '.join(sorted(keys))}"
            )
        names = [str(n) for n in npz["class_names"]] if "class_names" in keys else []
    return arrays, names


# Where torchvision expects each set's files (already extracted), for the "not found" message.
_MNIST_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
_TORCHVISION_FILES = {
    "mnist": f"the four MNIST files ({_MNIST_FILES}) in {{root}}/MNIST/raw/",
    "fashionmnist": f"the four Fashion-MNIST files ({_MNIST_FILES}) in {{root}}/FashionMNIST/raw/",
    "cifar10": "the extracted CIFAR-10 python version (data_batch_1..5, test_batch, batches.meta) in "
               "{root}/cifar-10-batches-py/",
}


def torchvision_set(kind: str, root: str, opts: DataOptions) -> ImageData:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[kind]
    try:
        train = cls(root, train=True, download=False)
        test = cls(root, train=False, download=False)
    except RuntimeError as exc:
        raise UserError(
            f"--data {kind}:{root}: the {cls.__name__} files are not under {root}. i2x never downloads; "
            f"put {_TORCHVISION_FILES[kind].format(root=Path(root))}"
        ) from exc

    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        return data, np.asarray(ds.targets)

    return tensor_data(f"{kind}:{root}", {"train": arrays(train), "test": arrays(test)},
                        list(train.classes), None, opts)


def imagefolder(path: str, opts: DataOptions) -> ImageData:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"--data imagefolder:{path}: directory not found")
    sub = {s: root / s for s in ("train", "test", "val") if (root / s).is_dir()}
    if "train" not in sub:
        sub = {"train": root, "test": root}
    elif "test" not in sub:
        sub["test"] = sub.get("val", sub["train"])
    sub.pop("val", None)
    channels = opts.channels or 3
    if channels not in (1, 3):
        raise UserError(f"--channels {channels}: image folders are read as RGB (3 channels) or grayscale (1)")
    size = opts.input_size or 224
    mean = tuple(opts.mean) if opts.mean else ((0.485, 0.456, 0.406) if channels == 3 else (0.5,) * channels)
    std = tuple(opts.std) if opts.std else ((0.229, 0.224, 0.225) if channels == 3 else (0.5,) * channels)
    check_stats(mean, std, channels)
    steps: list[Callable] = [T.Resize((size, size))]
    if channels == 1:
        steps.append(T.Grayscale(1))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    transform = T.Compose(steps)
    splits = {}
    for name, folder in sub.items():
        valid = _ImageFiles(folder)
        try:
            splits[name] = tvd.ImageFolder(str(folder), transform=transform, loader=_load_image, is_valid_file=valid)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"--data imagefolder:{path} ({name} split, {folder}): {_first_line(exc)}") from None
        valid.report()
    for name, folder in splits.items():
        if name != "train":
            _align_classes(folder, splits["train"].classes, f"--data imagefolder:{path} ({name} split)")
    classes = list(splits["train"].classes)
    check_classes(f"imagefolder:{path}", {k: np.asarray(f.targets, dtype=np.int64) for k, f in splits.items()}, classes)
    return ImageData(f"imagefolder:{path}", splits, classes, channels, (size, size), mean, std)


class _ImageFiles:
    """``is_valid_file`` for an ImageFolder: image extensions only; files that are not regular files (a FIFO named
    x.png would hang the loader) are skipped; a file reached again through symbolic links (a link to a parent
    folder repeats the whole tree) counts once, and never under a class folder it does not live in. Links to
    images outside the split folder are followed. Skips are reported as one warning per split."""

    def __init__(self, root: Path) -> None:
        self.root, self.real_root = root, root.resolve()
        self.seen: set[tuple[int, int]] = set()
        self.irregular: list[str] = []
        self.repeats = 0

    def __call__(self, path: str) -> bool:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        try:
            info = os.stat(path)
        except OSError:  # a dangling link or a loop: nothing to read
            self.irregular.append(path)
            return False
        if not stat.S_ISREG(info.st_mode):
            self.irregular.append(path)
            return False
        key = (info.st_dev, info.st_ino)
        real = Path(os.path.realpath(path))
        own_class = self.real_root / Path(path).relative_to(self.root).parts[0]
        inside = self.real_root in real.parents
        if key in self.seen or (inside and own_class not in real.parents):
            self.repeats += 1
            return False
        self.seen.add(key)
        return True

    def report(self) -> None:
        if self.irregular:
            shown = ", ".join(self.irregular[:3]) + (f" (+{len(self.irregular) - 3} more)" if len(self.irregular) > 3 else "")
            log.warning("%s: skipped %d entries that are not regular files (FIFOs, devices, dangling links): %s",
                        self.root, len(self.irregular), shown)
        if self.repeats:
            log.warning("%s: %d files reached again through symbolic links (a link to a parent folder?) counted once",
                        self.root, self.repeats)


def _load_image(path: str) -> Any:
    """torchvision's image loader, with an unreadable file (corrupt, empty, not an image) as a UserError naming it."""
    from PIL import UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        why = "in no image format PIL knows" if isinstance(exc, UnidentifiedImageError) else _first_line(exc)
        raise UserError(f"{path}: not a readable image ({why}); remove or replace the file") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _align_classes(folder: Any, classes: list[str], where: str) -> None:
    """Renumber an ImageFolder's labels to ``classes`` (the train split's), so a split that lacks a
    class folder does not shift every later class index by one."""
    extra = sorted(set(folder.classes) - set(classes))
    if extra:
        raise UserError(f"{where}: class folders {', '.join(extra)} do not exist in the train split")
    new_index = np.array([classes.index(c) for c in folder.classes], dtype=np.int64)
    folder.targets = new_index[np.asarray(folder.targets, dtype=np.int64)].tolist()
    folder.samples = folder.imgs = [(p, t) for (p, _), t in zip(folder.samples, folder.targets)]
    folder.classes, folder.class_to_idx = list(classes), {c: i for i, c in enumerate(classes)}
