"""Synthetic data sets with a planted answer (usable as ``--data planted:NAME``).

Digits with a small marker (built from scikit-learn's digits, 8x8 upsampled to 32x32):

* ``shortcut_data``: a bright 2x2 marker in the top-left corner (8x8 pixels) on 90% of the
  training images of class ``SHORTCUT_CLASS`` and 5% of the others; the marker cells are known.
* ``conflict_data``: the same kind of marker (bottom-right) on half of the images of two classes
  ``CONFLICT_PAIR``: a pattern whose label conflicts between those two classes.
* ``two_class_data``: a two-class task (digits ``TWO_CLASS``) with the bottom-right marker on a
  random half of the images, independent of the label (a null data set for the marker).

Two-class shortcut sets as hard as the real case (a marker spanning several grid cells across
cell borders, on textured backgrounds), 28x28 so the small CNN's target layer is a 7x7 grid:

* ``marker_{corner,centre}_{grey,rgb}``: class 1 ("marked") carries a weak soft blob, class 0
  none; a bright L (corner) or bar (centre) marker sits on ``MARKER_RATES`` of each class's
  images (90% of class 1, 10% of class 0), in both splits, as a scanner tag would.
* ``clean_{grey,rgb}``: the same images without any marker (the clean twin).

Each factory is deterministic. ``I2X_PLANTED_SEED`` changes which images carry the marker (and the
textures of the two-class sets), for multi-seed runs; :func:`planted_seed` sets it for a block.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from i2x.io.data import DataOptions, ImageData, tensor_data

SHORTCUT_CLASS = 3
CONFLICT_PAIR = (1, 7)
TOP_LEFT = (slice(0, 2), slice(0, 2))
BOTTOM_RIGHT = (slice(6, 8), slice(6, 8))

#: two-class marker sets: input size, samples per split, marker rate per class, the marked class
SIZE = 28
SAMPLES = {"train": 1200, "test": 400}
MARKER_RATES = (0.1, 0.9)
MARKED_CLASS = 1
MARKER_COLOUR = (1.0, 0.95, 0.2)
KINDS = ("corner_grey", "centre_grey", "corner_rgb", "centre_rgb")


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


# ---- digits with a small marker --------------------------------------------------------------
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
    data = tensor_data(spec, arrays, [str(i) for i in range(10)], 32, DataOptions())
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
    marked = tensor_data("m", {"train": (add_marker(x, where), y)}, [], 32,
                          DataOptions(mean=data.mean, std=data.std)).split("train").tensors[0]  # type: ignore[attr-defined]
    return clean, marked


# ---- two-class marker sets on textured backgrounds --------------------------------------------
def marker_pixels(place: str, size: int = SIZE) -> np.ndarray:
    """Boolean ``[size, size]`` marker: an L in the top-left corner (``corner``) or a bar in the middle
    (``centre``), 2 pixels thick and 10-12 pixels long, so on a 7x7 grid it spans 3 cells across cell borders."""
    mask = np.zeros((size, size), dtype=bool)
    if place == "corner":
        mask[2:12, 2:4] = True      # vertical arm, rows 2-11
        mask[10:12, 2:12] = True    # horizontal arm, columns 2-11
    elif place == "centre":
        mid = size // 2
        mask[mid - 1:mid + 1, mid - 6:mid + 6] = True
    else:
        raise ValueError(f"unknown marker place {place!r}; use corner or centre")
    return mask


def marker_cells(place: str, grid: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """Boolean ``[h, w]`` mask of the grid cells whose stride block holds marker pixels."""
    h, w = grid
    ys, xs = np.nonzero(marker_pixels(place, size))
    cells = np.zeros((h, w), dtype=bool)
    cells[ys * h // size, xs * w // size] = True
    return cells


def _smooth(noise: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(noise, sigma=(0, sigma, sigma), mode="wrap")


def _backgrounds(labels: np.ndarray, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Textured images ``[N, size, size, channels]`` in [0, 1]: smooth blotches plus grain, and for class 1 a weak
    soft blob at a random place in the middle (the real class signal, deliberately weaker than the marker)."""
    n = len(labels)
    coarse = _smooth(rng.standard_normal((n * channels, SIZE, SIZE)), 2.5)
    coarse = coarse / coarse.std()
    fine = rng.standard_normal((n * channels, SIZE, SIZE))
    x = 0.32 + 0.09 * coarse + 0.04 * fine
    x = x.reshape(n, channels, SIZE, SIZE).transpose(0, 2, 3, 1)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(8, SIZE - 8, (2, n))
    sigma = rng.uniform(3.0, 5.0, n)
    amplitude = np.where(labels == 1, rng.uniform(0.08, 0.22, n), 0.0)
    blob = amplitude[:, None, None] * np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
                                             / (2 * sigma[:, None, None] ** 2))
    return np.clip(x + blob[..., None], 0.0, 0.85).astype(np.float32)


def paint_marker(images: np.ndarray, place: str) -> np.ndarray:
    """A copy of images ``[N, H, W, C]`` in [0, 1] with the bright marker painted at ``place``."""
    out = images.copy()
    colour = np.asarray(MARKER_COLOUR[: out.shape[-1]] if out.shape[-1] == 3 else (1.0,), dtype=np.float32)
    out[:, marker_pixels(place, out.shape[1])] = colour
    return out


def _two_class(place: str | None, channels: int) -> ImageData:
    seed = _seed()
    arrays, marked = {}, {}
    for i, (split, n) in enumerate(SAMPLES.items()):
        rng = np.random.default_rng([seed, i])
        y = np.arange(n) % 2
        x = _backgrounds(y, channels, rng)
        marks = rng.random(n) < np.asarray(MARKER_RATES)[y]
        if place is not None:
            x[marks] = paint_marker(x[marks], place)
        arrays[split], marked[split] = (x, y), (np.flatnonzero(marks) if place else np.zeros(0, np.int64))
    spec = f"{place or 'clean'}-{'rgb' if channels == 3 else 'grey'}"
    data = tensor_data(spec, arrays, ["plain", "marked"], SIZE, DataOptions())
    data.extra.update({"marked": marked, "place": place})
    return data


def marker_corner_grey() -> ImageData:
    """Grey textured two-class set with an L marker in the top-left corner (see the module docstring)."""
    return _two_class("corner", 1)


def marker_centre_grey() -> ImageData:
    """Grey textured two-class set with a bar marker in the middle."""
    return _two_class("centre", 1)


def marker_corner_rgb() -> ImageData:
    """3-channel textured two-class set with a yellow L marker in the top-left corner."""
    return _two_class("corner", 3)


def marker_centre_rgb() -> ImageData:
    """3-channel textured two-class set with a yellow bar marker in the middle."""
    return _two_class("centre", 3)


def clean_grey() -> ImageData:
    """The grey two-class set without any marker (the clean twin)."""
    return _two_class(None, 1)


def clean_rgb() -> ImageData:
    """The 3-channel two-class set without any marker (the clean twin)."""
    return _two_class(None, 3)


@torch.no_grad()
def marker_effect(model: nn.Module, data: ImageData, place: str) -> dict[str, float]:
    """Direct input intervention: the rate of MARKED_CLASS predictions on the other class's unmarked test images,
    as they are and with the marker painted on (in the data's normalisation)."""
    x, y = data.split("test").tensors  # type: ignore[attr-defined]
    keep = (y != MARKED_CLASS).numpy()
    keep[data.extra["marked"]["test"]] = False
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    clean = x[torch.from_numpy(keep)]
    raw = (clean * std + mean).permute(0, 2, 3, 1).numpy()
    marked = (torch.from_numpy(paint_marker(raw, place)).permute(0, 3, 1, 2) - mean) / std
    model.eval()
    rate = [float((model(v).argmax(1) == MARKED_CLASS).float().mean()) for v in (clean, marked)]
    return {"rate_clean": rate[0], "rate_marked": rate[1], "images": int(keep.sum())}


#: a concept "holds the marker" when it covers at least this share of the marker's cells in the marked images
MARKER_HOLD = 0.2


def marker_shares(assign: np.ndarray, sample_index: np.ndarray, members: list[list[int]], marked: np.ndarray,
                  cells: np.ndarray) -> np.ndarray:
    """Per concept: the share of the marker's cells (``cells`` [h, w]) it holds in the marked images (data set
    indices ``marked``), given prototype assignments [n, h, w] and each concept's prototypes. A marker wider than
    a cell is often held by two or three concepts (an arm each)."""
    concept_of = np.zeros(int(assign.max()) + 1, dtype=np.int64)
    for c, protos in enumerate(members):
        concept_of[protos] = c
    held = concept_of[assign[np.isin(sample_index, marked)][:, cells]]
    return np.bincount(held.ravel(), minlength=len(members)) / max(held.size, 1)


# ---- a two-class null set on digits ------------------------------------------------------------------
TWO_CLASS = (3, 8)


def _digits_pair_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits split restricted to TWO_CLASS, relabelled 0 and 1."""
    out = {}
    for split, (x, y) in _digits_split().items():
        keep = np.isin(y, TWO_CLASS)
        out[split] = (x[keep], (y[keep] == TWO_CLASS[1]).astype(np.int64))
    return out


def _digits_pair(marked: dict[str, np.ndarray], spec: str) -> ImageData:
    arrays = {}
    for split, (x, y) in _digits_pair_split().items():
        x = x.copy()
        x[marked[split]] = add_marker(x[marked[split]], BOTTOM_RIGHT)
        arrays[split] = (x, y)
    data = tensor_data(spec, arrays, [str(c) for c in TWO_CLASS], 32, DataOptions())
    data.extra["marked"] = {k: np.flatnonzero(v) for k, v in marked.items()}
    return data


def two_class_data() -> ImageData:
    """Digits TWO_CLASS (a two-class task) with the bottom-right marker on a random half of all images, whatever
    their class: a null data set for the marker."""
    rng = np.random.default_rng(_seed())
    return _digits_pair({split: rng.random(len(y)) < 0.5 for split, (_, y) in _digits_pair_split().items()}, "two-class")


# ---- a coloured box as the evidence (attribution benchmark) ------------------------------------------
#: Where the box sits in the 32x32 images of :func:`box_images`: a known region of interest.
BOX = (slice(6, 18), slice(10, 22))


def box_images(labels: np.ndarray, rng: np.random.Generator, with_box: bool = True) -> np.ndarray:
    """Textured 32x32 RGB images [n, H, W, 3] whose label is the colour of a box at :data:`BOX` (red for 1,
    blue for 0): the only evidence, so a faithful map stays inside the box."""
    x = rng.uniform(0.0, 0.6, size=(len(labels), 32, 32, 3)).astype(np.float32)
    if with_box:
        for i, y in enumerate(labels):
            x[i, BOX[0], BOX[1], 0 if y else 2] += 0.4
    return x
