"""Synthetic data sets with a planted answer, built from scikit-learn's digits (usable as ``--data tests/planted.py:NAME``).

* ``shortcut_data``: a bright 2x2 marker in the top-left corner (8x8 pixels) on 90% of the
  training images of class ``SHORTCUT_CLASS`` and 5% of the others; the marker cells are known.
* ``conflict_data``: the same kind of marker (bottom-right) on half of the images of two classes
  ``CONFLICT_PAIR``: a pattern whose label conflicts between those two classes.
* ``two_class_data``: a two-class task (digits ``TWO_CLASS``) with the bottom-right marker on a
  random half of the images, independent of the label (a null data set for the marker).

Each factory is deterministic. ``MARKER_SEED`` (environment ``I2X_PLANTED_SEED``) changes which
images carry the marker, for multi-seed tests.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from i2x.io.data import DataOptions, ImageData, _tensor_data

SHORTCUT_CLASS = 3
CONFLICT_PAIR = (1, 7)
TWO_CLASS = (3, 8)
TOP_LEFT = (slice(0, 2), slice(0, 2))
BOTTOM_RIGHT = (slice(6, 8), slice(6, 8))


def _seed() -> int:
    return int(os.environ.get("I2X_PLANTED_SEED", "0"))


@contextmanager
def planted_seed(seed: int) -> Iterator[None]:
    """Set ``I2X_PLANTED_SEED`` for a block (subprocesses and rebuilt contexts see it), then restore it."""
    old = os.environ.get("I2X_PLANTED_SEED")
    os.environ["I2X_PLANTED_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("I2X_PLANTED_SEED", None)
        else:
            os.environ["I2X_PLANTED_SEED"] = old


def _digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    tr, te = train_test_split(np.arange(len(images)), test_size=0.2, random_state=0, stratify=digits.target)
    return {"train": (images[tr], digits.target[tr]), "test": (images[te], digits.target[te])}


def add_marker(images: np.ndarray, where: tuple[slice, slice] = TOP_LEFT) -> np.ndarray:
    """A copy of 8x8 images ``[N, 8, 8]`` in [0, 1] with the marker painted at ``where``."""
    out = images.copy()
    out[:, where[0], where[1]] = 1.0
    return out


def marker_mask(grid: tuple[int, int], where: tuple[slice, slice] = TOP_LEFT) -> np.ndarray:
    """Boolean ``[h, w]`` mask of the target-layer cells covering the marker (8x8 pixels -> ``grid``)."""
    h, w = grid
    mask = np.zeros((h, w), dtype=bool)
    rows = range(where[0].start * h // 8, -(-where[0].stop * h // 8))
    cols = range(where[1].start * w // 8, -(-where[1].stop * w // 8))
    mask[np.ix_(list(rows), list(cols))] = True
    return mask


def _planted(marked: dict[str, np.ndarray], where: tuple[slice, slice], spec: str) -> ImageData:
    arrays = {}
    for split, (x, y) in _digits_split().items():
        x = x.copy()
        x[marked[split]] = add_marker(x[marked[split]], where)
        arrays[split] = (x, y)
    data = _tensor_data(spec, arrays, [str(i) for i in range(10)], 32, DataOptions())
    data.extra["marked"] = {k: np.flatnonzero(v) for k, v in marked.items()}
    return data


def shortcut_marks(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which images carry the shortcut marker: 90% of SHORTCUT_CLASS, 5% of the rest."""
    rate = np.where(labels == SHORTCUT_CLASS, 0.9, 0.05)
    return rng.random(len(labels)) < rate


def shortcut_data() -> ImageData:
    """Digits where a top-left marker predicts class SHORTCUT_CLASS (train split only; test is clean)."""
    rng = np.random.default_rng(_seed())
    split = _digits_split()
    marked = {"train": shortcut_marks(split["train"][1], rng), "test": np.zeros(len(split["test"][1]), bool)}
    return _planted(marked, TOP_LEFT, "shortcut")


def conflict_data() -> ImageData:
    """Digits where a bottom-right marker sits on half of the images of both CONFLICT_PAIR classes."""
    rng = np.random.default_rng(_seed())
    marked = {}
    for split, (_, y) in _digits_split().items():
        marked[split] = np.isin(y, CONFLICT_PAIR) & (rng.random(len(y)) < 0.5)
    return _planted(marked, BOTTOM_RIGHT, "conflict")


def marked_test_images(data: ImageData, where: tuple[slice, slice] = TOP_LEFT) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean test split and the same images with the marker added, both normalised like the data."""
    x, y = _digits_split()["test"]
    clean = data.split("test").tensors[0]  # type: ignore[attr-defined]
    marked = _tensor_data("m", {"train": (add_marker(x, where), y)}, [], 32,
                          DataOptions(mean=data.mean, std=data.std)).split("train").tensors[0]  # type: ignore[attr-defined]
    return clean, marked


def _two_class_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits split restricted to TWO_CLASS, relabelled 0 and 1."""
    out = {}
    for split, (x, y) in _digits_split().items():
        keep = np.isin(y, TWO_CLASS)
        out[split] = (x[keep], (y[keep] == TWO_CLASS[1]).astype(np.int64))
    return out


def _two_class(marked: dict[str, np.ndarray], spec: str) -> ImageData:
    arrays = {}
    for split, (x, y) in _two_class_split().items():
        x = x.copy()
        x[marked[split]] = add_marker(x[marked[split]], BOTTOM_RIGHT)
        arrays[split] = (x, y)
    data = _tensor_data(spec, arrays, [str(c) for c in TWO_CLASS], 32, DataOptions())
    data.extra["marked"] = {k: np.flatnonzero(v) for k, v in marked.items()}
    return data


def two_class_data() -> ImageData:
    """Digits TWO_CLASS (a two-class task) with the bottom-right marker on a random half of all images, whatever
    their class: a null data set for the marker."""
    rng = np.random.default_rng(_seed())
    return _two_class({split: rng.random(len(y)) < 0.5 for split, (_, y) in _two_class_split().items()}, "two-class")

