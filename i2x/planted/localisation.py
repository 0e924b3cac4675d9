"""The localisation and retrieval sets (``planted:L-carriers``): a small bright L in a corner on most images of one
class, in both splits, so held-out carriers can be retrieved too (``i2x.planted.artefact`` is the revision's twin,
whose test split carries no L).

``planted:L-carriers``: 28x28 grey textured images of two classes, ``normal`` and ``marked``; class 1 carries
the real evidence (a soft bright blob somewhere in the middle, about as strong as in a real scan) and, on
``CARRIER_RATE`` (90%) of its images in both splits, a bright L ``ARTEFACT`` (2 pixels thick, 8 long) in the
top-left corner; no image of another class carries it. Because most of a class carries the L, the mean image
of the data holds it too (the case a saliency against the mean image cancels on).
``planted:L-carriers-3class``: the same with a third class (a soft dark blob), the L on class 1 only.
``planted:L-carriers-clean``: the two-class images without any L (the clean twin).

:func:`artefact_mask` is the ground truth of where the artefact lies, :func:`carriers` which samples carry it.
``I2X_PLANTED_SEED`` (:func:`i2x.planted.synthetic.planted_seed`) draws another set for multi-seed runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from i2x.io.data import DataOptions, ImageData, tensor_data
from i2x.io.models import build_model
from i2x.io.snapshots import SnapshotRecorder
from i2x.planted.synthetic import _seed, _smooth

SIZE = 28
SAMPLES = {"train": 1200, "test": 400}
CARRIER_RATE = 0.9
MARKED_CLASS = 1
BRIGHT = 1.0


def artefact_mask(size: int = SIZE) -> np.ndarray:
    """Boolean ``[size, size]``: the L's pixels, a vertical arm (rows 3-10) and a horizontal one (columns 3-10)."""
    mask = np.zeros((size, size), dtype=bool)
    mask[3:11, 3:5] = True
    mask[9:11, 3:11] = True
    return mask


def carriers(data: ImageData, split: str) -> np.ndarray:
    """Indices of the samples of ``split`` that carry the artefact (empty on the clean twin)."""
    return np.asarray(data.extra["marked"][split], dtype=np.int64)


def paint_artefact(images: np.ndarray) -> np.ndarray:
    """A copy of images ``[N, H, W, C]`` in [0, 1] with the L painted on."""
    out = images.copy()
    out[:, artefact_mask(out.shape[1])] = BRIGHT
    return out


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Textured grey images ``[N, SIZE, SIZE]`` in [0, 1]: smooth blotches plus grain; class 1 a soft bright blob at
    a random place in the middle, class 2 a soft dark one (the real class evidence)."""
    n = len(labels)
    coarse = _smooth(rng.standard_normal((n, SIZE, SIZE)), 2.5)
    x = 0.35 + 0.09 * coarse / coarse.std() + 0.04 * rng.standard_normal((n, SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(9, SIZE - 7, (2, n))
    sigma = rng.uniform(3.0, 5.0, n)
    sign = np.select([labels == 1, labels == 2], [1.0, -1.0], 0.0)
    amplitude = sign * rng.uniform(0.12, 0.3, n)
    blob = amplitude[:, None, None] * np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
                                             / (2 * sigma[:, None, None] ** 2))
    return np.clip(x + blob, 0.0, 0.85).astype(np.float32)


def _corner_l(classes: int, with_artefact: bool, spec: str) -> ImageData:
    seed = _seed()
    arrays, marked = {}, {}
    for i, (split, n) in enumerate(SAMPLES.items()):
        rng = np.random.default_rng([seed, 32, i])
        y = np.arange(n) % classes
        x = _images(y, rng)
        carry = (y == MARKED_CLASS) & (rng.random(n) < CARRIER_RATE) & with_artefact
        x[carry] = paint_artefact(x[carry][..., None])[..., 0]
        arrays[split], marked[split] = (x, y), np.flatnonzero(carry)
    names = ["normal", "marked", "dark"][:classes]
    data = tensor_data(spec, arrays, names, SIZE, DataOptions())
    data.extra.update({"marked": marked, "artefact": artefact_mask()})
    return data


def corner_l() -> ImageData:
    """Two classes; the L on 90% of class 1 in both splits, on no image of class 0."""
    return _corner_l(2, True, "L-carriers")


def corner_l_3class() -> ImageData:
    """Three classes; the L on 90% of class 1 only."""
    return _corner_l(3, True, "L-carriers-3class")


def corner_l_clean() -> ImageData:
    """The two-class images without any L (the clean twin of :func:`corner_l`)."""
    return _corner_l(2, False, "L-carriers-clean")


@torch.no_grad()
def artefact_effect(model: nn.Module, data: ImageData) -> dict[str, float]:
    """The rate of ``marked`` predictions on the other classes' test images (none carries the L), as they are and
    with the L painted on (in the data's normalisation), and the flip rate: the share of the images not called
    ``marked`` as they are that the L turns into ``marked`` (what the paste test measures with the true artefact;
    an untrained model that calls every image ``marked`` flips none)."""
    x, y = data.split("test").tensors  # type: ignore[attr-defined]
    clean = x[y != MARKED_CLASS]
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    raw = (clean * std + mean).permute(0, 2, 3, 1).numpy()
    painted = (torch.from_numpy(paint_artefact(raw)).permute(0, 3, 1, 2) - mean) / std
    model.eval()
    calls = [model(v).argmax(1) == MARKED_CLASS for v in (clean, painted)]
    flips = calls[1][~calls[0]]
    return {"rate_clean": float(calls[0].float().mean()), "rate_marked": float(calls[1].float().mean()),
            "flip_rate": float(flips.float().mean()) if len(flips) else 0.0, "images": int(len(clean))}


def train_with_snapshots(data: ImageData, out: str | Path, steps: int = 60, seed: int = 0, dense: int = 6,
                         lr: float = 1e-3, batch_size: int = 64) -> list[int]:
    """Train the small CNN on ``data`` for ``steps`` Adam steps, keeping snapshots on the recorder's schedule (every
    step up to ``dense``, step 0 untrained, then spaced by 1.5): the shortcut forms within the first epoch, so the
    per-epoch snapshots of ``i2x train`` would all come after it. Returns the steps saved."""
    torch.manual_seed(seed)
    model = build_model("small-cnn", num_classes=data.num_classes, in_channels=data.channels)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(data.split("train"), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    recorder = SnapshotRecorder(out, dense=dense)
    recorder.maybe_save(model, 0)
    step = 0
    while step < steps:
        for x, y in loader:
            model.train()
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
            step += 1
            recorder.maybe_save(model, step)
            if step == steps:
                break
    recorder.save(model, steps)
    return sorted(recorder.saved)
