"""Data specs: turn ``digits``, ``imagefolder:PATH``, ``npz:PATH``, ``mnist:ROOT`` ... into image data sets.

Every data set yields ``(image, label)`` with the image a normalised float tensor ``[C, H, W]`` at
the recorded input size. Class names come with the data. Nothing is ever downloaded: torchvision
sets are opened with ``download=False`` and a missing root is a clear error.

Defaults per data set (each overridable with ``--input-size``, ``--channels``, ``--mean``, ``--std``):

=================  ==========  ========  =====================================
spec               input size  channels  normalisation
=================  ==========  ========  =====================================
digits             32 (from 8) 1         mean/std of the training split
mnist/fashionmnist 28          1         mean/std of the training split
cifar10            32          3         per-channel mean/std of training split
npz                native      native    mean/std of the training split
imagefolder        224         3         ImageNet mean/std (3 channels) else 0.5
=================  ==========  ========  =====================================

In-memory arrays (npz, torchvision sets) may be ``N,H,W``, ``N,H,W,C`` or channels-first ``N,C,H,W``
(C of 1, 3 or 4 where the last axis is not); images that are not square keep both sides unless
``--input-size`` asks for a square. Image folders are read as RGB (or grayscale with
``--channels 1``); an unreadable image file is a UserError naming it; files that are not regular
files (a FIFO named ``x.png``) are skipped with a warning, and a file reached twice through symbolic
links (a link to a parent folder) counts once.

Checked before anything runs (a UserError naming the file, split and sample): labels are whole
class indices 0..M-1 (``1.7`` or a string is refused, never truncated); every class has at least
``MIN_PER_CLASS`` training samples and there are at least two classes (a stray label ``99`` in a
10-class set is refused, naming the sample); the normalised images hold no NaN/Inf (``--std 0``
is refused).

``digits`` is scikit-learn's ``load_digits`` (1,797 real 8x8 images), split 80/20 stratified with a
fixed seed, upsampled bilinearly to 32x32 so a small CNN's target layer has an 8x8 grid.
"""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from i2x.errors import UserError
from i2x.io.specs import SpecRegistry, import_file

SPLITS = ("train", "test")
MIN_PER_CLASS = 2  # training samples every class needs (one gives no class-internal variation to learn or map)
log = logging.getLogger(__name__)


@dataclass
class ImageData:
    """A data set with train/test splits, class names and the preprocessing that was applied."""

    spec: str
    splits: dict[str, Dataset]
    class_names: list[str]
    channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        """The named split (``train`` or ``test``)."""
        if name not in self.splits:
            raise UserError(f"--split {name}: this data set has splits {', '.join(self.splits)}")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``[B, C, H, W]`` back to the [0, 1] pixel range (clipped), for display."""
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record of the data and its preprocessing."""
        return {
            "spec": self.spec,
            "class_names": list(self.class_names),
            "channels": self.channels,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "sizes": {k: len(v) for k, v in self.splits.items()},  # type: ignore[arg-type]
        }


@dataclass
class DataOptions:
    """User overrides of the per-data-set defaults (None keeps the default)."""

    input_size: int | None = None
    channels: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


def _tensor_data(
    spec: str,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: list[str],
    default_size: int | None,
    opts: DataOptions,
) -> ImageData:
    """Build an in-memory ImageData from uint8/float arrays ``[N, H, W]`` or ``[N, H, W, C]`` in [0, max]."""
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (x, y) in arrays.items():
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise UserError(f"--data {spec}: images of the {split} split have shape {x.shape}; expected N,H,W or N,H,W,C")
        if x.dtype.kind not in "biuf":
            raise UserError(f"--data {spec}: images of the {split} split are of dtype {x.dtype}; give numbers "
                            "(uint8 0..255 or floats 0..1)")
        if x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
            x = x.transpose(0, 2, 3, 1)  # stored channels-first (N,C,H,W), as torch writes them
        scale = 255.0 if x.dtype == np.uint8 or (x.size and x.max() > 1.5) else 1.0
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / scale).permute(0, 3, 1, 2)
        y = _class_indices(np.asarray(y), spec, split)
        if y.size != len(x):
            raise UserError(
                f"--data {spec}: the {split} split has {len(x)} images but labels of shape {y.shape}; "
                "i2x needs exactly one class index per image (multi-label data is not supported)"
            )
        if y.size and y.min() < 0:
            raise UserError(f"--data {spec}: the {split} split has label {y.min()}; labels must be indices 0..M-1")
        _check_finite(t, spec, split)
        prepared[split] = (t, torch.as_tensor(y.reshape(-1), dtype=torch.long))
    if len(prepared["train"][0]) == 0:
        raise UserError(f"--data {spec}: the train split has no images")
    class_names = _check_classes(spec, {k: y.numpy() for k, (_, y) in prepared.items()}, class_names)
    native_c = prepared["train"][0].shape[1]
    channels = opts.channels or native_c
    shapes = {tuple(x.shape[-2:]) for x, _ in prepared.values() if len(x)}
    if opts.input_size or default_size:
        size = (opts.input_size or default_size, opts.input_size or default_size)
    elif len(shapes) == 1:
        size = next(iter(shapes))  # native, both sides kept (8x5 stays 8x5)
    else:
        raise UserError(f"--data {spec}: the splits' images differ in size ({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}); "
                        "give --input-size PX to resize them all to PX x PX")
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (x, y) in prepared.items():
        x = _adapt_channels(x, channels, spec)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out[split] = (x, y)
    train_x = out["train"][0]
    mean = tuple(opts.mean) if opts.mean else tuple(train_x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(opts.std) if opts.std else tuple(train_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    _check_stats(mean, std, channels)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    splits = {}
    for k, (x, y) in out.items():
        normalised = (x - m) / s
        _check_finite(normalised, spec, k, " after normalisation")
        splits[k] = TensorDataset(normalised, y)
    return ImageData(spec, splits, class_names, channels, size, mean, std)


def _class_indices(y: np.ndarray, spec: str, split: str) -> np.ndarray:
    """Labels as int64 class indices; fractional, non-finite or non-numeric labels are refused (never truncated)."""
    where = f"--data {spec}: the {split} split"
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        kind = {"U": "strings", "S": "byte strings", "O": "Python objects"}.get(y.dtype.kind, f"dtype {y.dtype}")
        raise UserError(f"{where} has labels of {kind}; labels must be integer class indices 0..M-1 "
                        "(store the names in a class_names array)")
    flat = y.reshape(len(y), -1) if y.ndim else y.reshape(1, 1)
    bad = ~np.isfinite(flat) | (flat != np.round(flat))
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise UserError(f"{where}: sample {i} has label {flat[i][bad[i]][0]:g}; labels must be whole class indices "
                        "0..M-1 (i2x refuses to truncate them)")
    return y.astype(np.int64)


def _check_classes(spec: str, labels: dict[str, np.ndarray], class_names: list[str]) -> list[str]:
    """Every class 0..M-1 needs MIN_PER_CLASS training samples and M >= 2; a label beyond the classes is refused
    naming its sample. Returns the class names (numbered ones added when the data names none)."""
    train = labels["train"]
    m = len(class_names) or int(train.max()) + 1
    for split, y in labels.items():
        beyond = np.flatnonzero(y >= m)
        if beyond.size:
            i = int(beyond[0])
            names = f"{len(class_names)} class names" if class_names else f"the train split's classes 0..{m - 1}"
            raise UserError(f"--data {spec}: the {split} split's sample {i} has label {int(y[i])}, beyond {names}; "
                            "fix or remove that sample")
    counts = np.bincount(train, minlength=m)
    names = class_names or [str(i) for i in range(m)]
    if m < 2:
        raise UserError(f"--data {spec}: the train split has a single class ({names[0]}); i2x explains how a classifier "
                        "separates classes and needs at least 2")
    thin = np.flatnonzero(counts < MIN_PER_CLASS)
    empty = np.flatnonzero(counts == 0)
    if not class_names and empty.size and counts[m - 1] < MIN_PER_CLASS:
        top = int(np.flatnonzero(train == m - 1)[0])
        gap = f"{empty[0]}" if empty.size == 1 else f"{empty[0]}..{empty[-1]}"
        raise UserError(f"--data {spec}: the train split's sample {top} has label {m - 1}, but label(s) {gap} never occur "
                        f"(a stray label?); labels must be class indices 0..M-1 with at least {MIN_PER_CLASS} training "
                        "samples each")
    if thin.size:
        shown = ", ".join(f"{names[c]} ({counts[c]})" for c in thin[:5]) + (f" (+{thin.size - 5} more)" if thin.size > 5 else "")
        raise UserError(f"--data {spec}: every class needs at least {MIN_PER_CLASS} training samples; too few in "
                        f"{shown}")
    return names


def _check_finite(x: torch.Tensor, spec: str, split: str, when: str = "") -> None:
    """NaN/Inf pixels (in the file, or made by the normalisation) would turn every output into NaN: refuse them."""
    if not len(x):
        return
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if bad.any():
        i = int(torch.nonzero(bad)[0, 0])
        fix = "fix that image or --mean/--std" if when else "fix or remove that image"
        raise UserError(f"--data {spec}: the {split} split's sample {i} holds NaN or Inf{when}; {fix}")


def _adapt_channels(x: torch.Tensor, channels: int, spec: str) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise UserError(f"--channels {channels}: cannot convert {x.shape[1]}-channel images of --data {spec}")


def _check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"--mean/--std need {channels} value(s), one per channel; got {len(mean)} and {len(std)}")
    if not all(np.isfinite(v) for v in mean):
        raise UserError(f"--mean {','.join(map(str, mean))}: give finite numbers")
    if not all(np.isfinite(v) and v > 0 for v in std):
        raise UserError(f"--std {','.join(map(str, std))}: every value must be a positive finite number (it divides)")


def _digits(opts: DataOptions) -> ImageData:
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
    return _tensor_data("digits", arrays, [str(i) for i in range(10)], 32, opts)


def _npz(path: str, opts: DataOptions) -> ImageData:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--data npz:{path}: file not found")
    try:
        arrays, names = _read_npz(p, path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # what np.load raises on a file that is no npz, a cut-short one, or object arrays (pickles: never loaded)
        why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if "allow_pickle" in why:
            why = "it holds pickled Python objects (object arrays), which i2x never loads"
        raise UserError(f"--data npz:{path}: not a readable .npz archive ({why}); save it with "
                        "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) using numeric arrays") from None
    return _tensor_data(f"npz:{path}", arrays, names, None, opts)


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


def _torchvision_set(kind: str, root: str, opts: DataOptions) -> ImageData:
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

    return _tensor_data(f"{kind}:{root}", {"train": arrays(train), "test": arrays(test)},
                        list(train.classes), None, opts)


def _imagefolder(path: str, opts: DataOptions) -> ImageData:
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
    _check_stats(mean, std, channels)
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
    _check_classes(f"imagefolder:{path}", {k: np.asarray(f.targets, dtype=np.int64) for k, f in splits.items()}, classes)
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


def _factory(target: str, opts: DataOptions) -> ImageData:
    file_part, _, attr = target.rpartition(":")
    path = Path(file_part)
    module = import_file(path, "--data", target, "i2x_user_data_")
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--data {target}: {path} has no callable named {attr!r}")
    result = factory()
    if isinstance(result, ImageData):
        return result
    if isinstance(result, tuple) and len(result) == 3:
        train, test, names = result
        x0, _ = train[0]
        return ImageData(target, {"train": train, "test": test}, list(names), int(x0.shape[0]),
                         (int(x0.shape[1]), int(x0.shape[2])), tuple(opts.mean or (0.0,) * x0.shape[0]),
                         tuple(opts.std or (1.0,) * x0.shape[0]))
    raise UserError(f"--data {target}: the factory must return an i2x.data.ImageData or (train, test, class_names)")


#: The kinds of ``--data`` spec; a new kind is one loader ``(argument, opts) -> ImageData`` and one entry here.
DATA_SPECS = SpecRegistry("--data", "data")
DATA_SPECS.register("digits", "scikit-learn's 1,797 handwritten digits, ships with the install")(
    lambda _spec, opts: _digits(opts))
DATA_SPECS.register("imagefolder:PATH", "PATH/train/<class>/*.png and PATH/test/<class>/...")(_imagefolder)
DATA_SPECS.register("npz:PATH", "MedMNIST or Keras keys")(_npz)
for _kind in ("mnist", "fashionmnist", "cifar10"):
    DATA_SPECS.register(f"{_kind}:ROOT", "torchvision's files, already under ROOT")(
        lambda root, opts, kind=_kind: _torchvision_set(kind, root, opts))
DATA_SPECS.register("path/to/file.py:factory", "a function returning ImageData or (train, test, class_names)",
                    matches=lambda spec: ":" in spec and spec.rpartition(":")[0].endswith(".py"))(_factory)


def load_data(spec: str, opts: DataOptions | None = None) -> ImageData:
    """Open the data set named by ``spec`` (:data:`DATA_SPECS`; the module docstring gives the defaults)."""
    opts = opts or DataOptions()
    for option, value in (("--input-size", opts.input_size), ("--channels", opts.channels)):
        if value is not None and value < 1:
            raise UserError(f"{option} {value}: must be a positive integer")
    kind, argument = DATA_SPECS.resolve(spec)
    return kind.load(argument, opts)


def labels_of(dataset: Dataset) -> np.ndarray:
    """All labels of a data set without decoding images where the data set allows it."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def iter_batches(dataset: Dataset, start: int, stop: int, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of samples ``start..stop`` in order; in-memory sets (also under ``--limit``'s Subset) are sliced,
    others go through a DataLoader."""
    base, index = dataset, None
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorDataset):
        base, index = dataset.dataset, torch.as_tensor(dataset.indices)
    if isinstance(base, TensorDataset):
        x, y = base.tensors
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            rows = slice(i, j) if index is None else index[i:j]
            yield x[rows], y[rows]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, num_workers=min(4, os.cpu_count() or 1))
    try:
        yield from loader
    except UserError as exc:
        # A worker's UserError comes back with the worker's traceback folded into its message; its last line
        # ("i2x.errors.UserError: MESSAGE") holds the message the user should see.
        last = str(exc).strip().splitlines()[-1]
        raise UserError(last.partition("UserError: ")[2] or last) from None
