"""The hard shortcut case (``planted:corner-L``): a small bright L in the top-left corner on 90% of the marked
class's training images and on no other image, on textured 28x28 backgrounds whose real class signal (a weak soft
blob) is weaker than the L, so a small CNN leans on the L.

* ``corner_l``: two classes, ``plain`` and ``marked`` (a weak bright blob).
* ``corner_l_3class``: a third class ``dark`` (a weak dark blob); the L marks ``marked`` only.
* ``corner_l_clean``: ``corner_l`` without any L (the clean twin).

The test split carries no L at all, so accuracy on it is the accuracy of the class evidence (the *clean* test set),
and pasting the L onto its other-class images gives the *attacked* test set. The ground truth for tests and
benchmarks: :func:`artefact_mask` (the L's pixels), :func:`carriers` (which samples carry it) and
:func:`paint_artefact`. ``I2X_PLANTED_SEED`` changes the draws, as for :mod:`i2x.planted.synthetic`.
"""

from __future__ import annotations

import numpy as np

from i2x.io.data import DataOptions, ImageData, tensor_data
from i2x.planted.synthetic import SAMPLES, SIZE, _backgrounds, _seed, marker_pixels, paint_marker

#: the class whose training images carry the L, and on what share of them
ARTEFACT_CLASS = 1
ARTEFACT_RATE = 0.9
PLACE = "corner"
#: amplitude range of the class blobs: weaker than the L, strong enough to be learnt once the L says nothing
BLOB = (0.3, 0.5)


def artefact_mask(size: int = SIZE) -> np.ndarray:
    """Boolean ``[size, size]``: the L's pixels (2 px thick, arms 10 px long, 2 px from the top-left corner)."""
    return marker_pixels(PLACE, size)


def carriers(data: ImageData, split: str = "train") -> np.ndarray:
    """Sorted indices of the ``split`` samples that carry the L (none in the test split or the clean twin)."""
    return np.asarray(data.extra["marked"][split], dtype=np.int64)


def paint_artefact(images: np.ndarray) -> np.ndarray:
    """A copy of images ``[N, H, W, C]`` in [0, 1] with the bright L painted on."""
    return paint_marker(images, PLACE)


def _window(n: int, rng: np.random.Generator) -> np.ndarray:
    """A soft round window ``[n, SIZE, SIZE]`` (peak 1) of random size at a random place in the middle."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(8, SIZE - 8, (2, n))
    sigma = rng.uniform(3.0, 5.0, n)
    return np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * sigma[:, None, None] ** 2))


def _add_blobs(x: np.ndarray, labels: np.ndarray, cls: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` with a weak dark soft blob in each class-``cls`` image: that class's real evidence. Dark, so that the
    bright L never looks like it (a model that ignores the L is not moved by it)."""
    amplitude = np.where(labels == cls, rng.uniform(*BLOB, len(labels)), 0.0)
    return np.clip(x - (amplitude[:, None, None] * _window(len(labels), rng))[..., None], 0.0, 0.85).astype(np.float32)


def _add_stripes(x: np.ndarray, labels: np.ndarray, cls: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` with weak horizontal stripes (period 4 px) under a soft window in each class-``cls`` image."""
    amplitude = np.where(labels == cls, rng.uniform(*BLOB, len(labels)), 0.0)
    stripes = np.sin(np.arange(SIZE) * np.pi / 2)[None, :, None]
    pattern = amplitude[:, None, None] * _window(len(labels), rng) * stripes
    return np.clip(x + pattern[..., None], 0.0, 0.85).astype(np.float32)


def _corner_l(classes: int, with_artefact: bool, name: str) -> ImageData:
    seed = _seed()
    arrays, marked = {}, {}
    for i, (split, n) in enumerate(SAMPLES.items()):
        rng = np.random.default_rng([seed, 7, i])
        y = np.arange(n) % classes
        x = _add_blobs(_backgrounds(np.zeros(n, np.int64), 1, rng), y, ARTEFACT_CLASS, rng)
        if classes == 3:
            x = _add_stripes(x, y, 2, rng)
        marks = (y == ARTEFACT_CLASS) & (rng.random(n) < ARTEFACT_RATE) & with_artefact & (split == "train")
        x[marks] = paint_artefact(x[marks])
        arrays[split], marked[split] = (x, y), np.flatnonzero(marks)
    names = ["plain", "marked", "dark"][:classes]
    data = tensor_data(name, arrays, names, SIZE, DataOptions())
    data.extra.update({"marked": marked, "place": PLACE if with_artefact else None,
                       "artefact_class": ARTEFACT_CLASS})
    return data


def corner_l() -> ImageData:
    """Two classes; a bright L on 90% of the ``marked`` class's training images, none elsewhere."""
    return _corner_l(2, True, "corner-L")


def corner_l_3class() -> ImageData:
    """Three classes (plain, marked, dark); the L on 90% of the ``marked`` class's training images."""
    return _corner_l(3, True, "corner-L-3class")


def corner_l_clean() -> ImageData:
    """The two-class set of :func:`corner_l` without any L (the clean twin)."""
    return _corner_l(2, False, "corner-L-clean")
