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

Segmentation sets (``segfolder:PATH``, an npz with mask keys, ``planted:shapes``) yield a
class mask per image instead of a label; :mod:`i2x.io.masks` describes them.

``digits`` is scikit-learn's ``load_digits`` (1,797 real 8x8 images), split 80/20 stratified with a
fixed seed, upsampled bilinearly to 32x32 so a small CNN's target layer has an 8x8 grid.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from i2x.errors import UserError
from i2x.io.datasets import MIN_PER_CLASS, SPLITS, DataOptions, ImageData, tensor_data
from i2x.io.loaders import digits, imagefolder, npz, torchvision_set
from i2x.io.masks import segfolder
from i2x.io.specs import SpecRegistry, import_file

log = logging.getLogger(__name__)

__all__ = ["DATA_SPECS", "MIN_PER_CLASS", "SPLITS", "DataOptions", "ImageData", "iter_batches", "labels_of",
           "load_data", "tensor_data"]


#: Where the planted sets lived before they became ``planted:NAME`` specs (``i2x/io/synthetic.py:shortcut_data``).
_MOVED = {"i2x/io/synthetic.py": "synthetic.py", "i2x/io/shapes.py": "shapes.py"}


def _factory(target: str, opts: DataOptions) -> ImageData:
    file_part, _, attr = target.rpartition(":")
    path = Path(file_part)
    if file_part in _MOVED and not path.is_file():  # the old spelling still opens, with the new one named
        name = attr.removesuffix("_data").replace("_", "-")
        log.warning("--data %s is deprecated: the planted sets moved out of i2x/io; write --data planted:%s",
                    target, name)
        return load_data(f"planted:{name}", opts)
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
    raise UserError(f"--data {target}: the factory must return an i2x.io.datasets.ImageData or "
                    "(train, test, class_names)")


#: The kinds of ``--data`` spec; a new kind is one loader ``(argument, opts) -> ImageData`` and one entry here.
DATA_SPECS = SpecRegistry("--data", "data", plugins="i2x.data_specs")
DATA_SPECS.register("digits", "scikit-learn's 1,797 handwritten digits, ships with the install")(
    lambda _spec, opts: digits(opts))
DATA_SPECS.register("imagefolder:PATH", "PATH/train/<class>/*.png and PATH/test/<class>/...")(imagefolder)
DATA_SPECS.register("npz:PATH", "MedMNIST or Keras keys; with mask keys a segmentation set")(npz)
DATA_SPECS.register("segfolder:PATH", "segmentation: PATH/train/images/*.png, masks of the same name in "
                    "PATH/train/masks/, names in PATH/classes.txt")(segfolder)
for _kind in ("mnist", "fashionmnist", "cifar10"):
    DATA_SPECS.register(f"{_kind}:ROOT", "torchvision's files, already under ROOT")(
        lambda root, opts, kind=_kind: torchvision_set(kind, root, opts))
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
