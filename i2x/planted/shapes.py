"""A synthetic segmentation set with a known answer: shapes of three classes on textured backgrounds.

``shapes_data`` (``--data planted:shapes``): 32x32 RGB images, each holding one or two
shapes of different classes (``square``, ``ring``, ``cross``; class 0 is the background), 10 to 15
pixels across at random places, so a shape spans several cells of a 8x8 grid and crosses cell borders.
A shape's colour is drawn at random for every shape (the class is in the outline, not the colour), and
shapes and background carry smooth noise. The mask of an image gives each pixel's class. Deterministic;
``shapes_small_data`` is a quarter of it for fast tests. ``I2X_PLANTED_SEED`` (:func:`i2x.planted.synthetic.planted_seed`) draws another set for multi-seed runs.
"""

from __future__ import annotations

import os

import numpy as np

from i2x.io.datasets import DataOptions, ImageData
from i2x.io.masks import mask_data

CLASSES = ("background", "square", "ring", "cross")
SIZE = 32
SAMPLES = {"train": 480, "test": 120}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal(shape), sigma=(0, sigma, sigma, 0)[: len(shape)])
    return noise / (noise.std() + 1e-8)


def shape_mask(kind: str, centre: tuple[int, int], radius: int, size: int = SIZE) -> np.ndarray:
    """Boolean ``[size, size]`` pixels of one shape: a filled square, a ring 2 pixels thick or a plus sign, reaching
    ``radius`` pixels from its centre."""
    yy, xx = np.mgrid[:size, :size]
    dy, dx = np.abs(yy - centre[0]), np.abs(xx - centre[1])
    if kind == "square":
        return (dy <= radius * 0.8) & (dx <= radius * 0.8)
    if kind == "ring":
        return ((radius - 2) ** 2 <= dy ** 2 + dx ** 2) & (dy ** 2 + dx ** 2 <= radius ** 2)
    if kind == "cross":
        arm = max(1, radius // 3)
        return ((dy <= arm) & (dx <= radius)) | ((dx <= arm) & (dy <= radius))
    raise ValueError(f"unknown shape {kind!r}")


def make_shapes(n: int, rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``[n, size, size, 3]`` in [0, 1] and their masks ``[n, size, size]`` (int64 class indices)."""
    images = 0.45 + 0.12 * _smooth_noise(rng, (n, size, size, 3), 2.0)
    texture = 0.08 * _smooth_noise(rng, (n, size, size, 1), 1.0)
    masks = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        count = 1 + int(rng.random() < 0.6)
        for c in rng.choice(np.arange(1, len(CLASSES)), size=count, replace=False):
            for _ in range(20):  # a place that does not overlap a shape already drawn
                radius = int(rng.integers(5, 8))
                centre = (int(rng.integers(radius, size - radius)), int(rng.integers(radius, size - radius)))
                pixels = shape_mask(CLASSES[c], centre, radius, size)
                if not (pixels & (masks[i] > 0)).any():
                    break
            pixels &= masks[i] == 0
            colour = rng.uniform(0.55, 1.0, size=3) * rng.permutation([1.0, 1.0, 0.4])
            images[i][pixels] = colour + texture[i][pixels]
            masks[i][pixels] = c
    return np.clip(images, 0, 1).astype(np.float32), masks


def _shapes(samples: dict[str, int], spec: str) -> ImageData:
    rng = np.random.default_rng(1000 + int(os.environ.get("I2X_PLANTED_SEED", "0")))
    arrays = {split: make_shapes(n, rng) for split, n in samples.items()}
    return mask_data(spec, arrays, list(CLASSES), None, DataOptions())


def shapes_data() -> ImageData:
    """The synthetic segmentation set (train and test splits, masks, the four class names)."""
    return _shapes(SAMPLES, "shapes")


def shapes_small_data() -> ImageData:
    """A quarter of it (120 training, 40 test images), for fast tests."""
    return _shapes({"train": 120, "test": 40}, "shapes_small")
