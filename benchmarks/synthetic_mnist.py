"""A synthetic MNIST-size digit set: generated on the fly (never downloaded), deterministic by seed.

``mnist_like`` is an i2x data factory::

    I2X_BENCH_N=60000 i2x extract CKPT --data benchmarks/synthetic_mnist.py:mnist_like --out DIR

It returns ``I2X_BENCH_N`` training images (default 60,000) and ``I2X_BENCH_N_TEST`` test images
(default 2,000), 28x28 grey, 10 classes, normalised with MNIST's mean and std. Each class is a
digit-shaped set of strokes (lines and elliptic arcs); each image draws its class's strokes with
a random affine transform (rotation, scale, shear, a shift of up to 3 px), a smooth random warp,
a random stroke width and ink, segments left out at random (broken strokes), a stray stroke in
some images, and Gaussian pixel noise. Shapes that share strokes (4/9, 3/8/5, 1/7) are confused,
and some images are ambiguous, as in MNIST. Images are made in blocks of 500, each seeded by
(seed, split, block), so the first N images are the same whatever N is. Pixels are stored as
uint8, as MNIST's are; with ``I2X_BENCH_CACHE`` set, each split is drawn once and kept there as .npy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from i2x.io.data import ImageData

SIZE = 28
BLOCK = 500
MEAN, STD = 0.1307, 0.3081  # MNIST's, so the inputs have the usual scale
DROP = 0.12  # chance that each stroke segment is left out
DISTRACTOR = 0.3  # share of images with a stray stroke
NOISE = 0.08  # std of the Gaussian pixel noise


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float,
         points: int = 12) -> list[tuple[float, float]]:
    """Points of an elliptic arc in the unit box (y down), from angle a0 to a1 in degrees (90 = top)."""
    angles = np.radians(np.linspace(a0, a1, points))
    return list(zip(cx + rx * np.cos(angles), cy - ry * np.sin(angles)))


#: class -> strokes (polylines in the unit box, y down)
STROKES: list[list[list[tuple[float, float]]]] = [
    [_arc(0.5, 0.5, 0.28, 0.42, 0, 360, 17)],
    [[(0.33, 0.25), (0.55, 0.08), (0.55, 0.92)]],
    [_arc(0.5, 0.3, 0.28, 0.22, 160, -40, 8) + [(0.2, 0.92), (0.82, 0.92)]],
    [_arc(0.5, 0.3, 0.27, 0.2, 150, -90, 9), _arc(0.5, 0.71, 0.3, 0.21, 90, -150, 9)],
    [[(0.62, 0.92), (0.62, 0.08), (0.15, 0.65), (0.85, 0.65)]],
    [[(0.78, 0.08), (0.3, 0.08), (0.27, 0.45)], _arc(0.5, 0.66, 0.3, 0.26, 135, -150, 10)],
    [[(0.68, 0.08), (0.4, 0.35), (0.25, 0.65)], _arc(0.5, 0.68, 0.25, 0.24, 0, 360, 13)],
    [[(0.18, 0.1), (0.82, 0.1), (0.4, 0.92)]],
    [_arc(0.5, 0.29, 0.22, 0.2, 0, 360, 13), _arc(0.5, 0.7, 0.27, 0.22, 0, 360, 13)],
    [_arc(0.5, 0.32, 0.25, 0.23, 0, 360, 13), [(0.75, 0.35), (0.65, 0.92)]],
]


def _segments() -> torch.Tensor:
    """Every class's strokes as line segments [10, S, 2 ends, 2 coords], padded by repeating the last one."""
    per_class = [[(a, b) for line in strokes for a, b in zip(line[:-1], line[1:])] for strokes in STROKES]
    s = max(len(segs) for segs in per_class)
    padded = [segs + [segs[-1]] * (s - len(segs)) for segs in per_class]
    return torch.tensor(padded, dtype=torch.float32)


def render(labels: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Draw one image per label: [B] -> [B, 28, 28] float32 in [0, 1]."""
    b = len(labels)
    seg = _segments()[torch.as_tensor(labels)]  # [B, S, 2, 2] in the unit box
    pts = (seg - 0.5) * 20.0  # a 20 px digit box centred on the origin, as in MNIST

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.as_tensor(rng.uniform(lo, hi, size=(b, *shape)), dtype=torch.float32)

    angle = uniform(-15, 15) * math.pi / 180
    scale, shear = uniform(0.85, 1.1), uniform(-0.25, 0.25)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    affine = torch.stack([torch.stack([cos, -sin + shear * cos], -1), torch.stack([sin, cos + shear * sin], -1)], -2)
    pts = torch.einsum("bij,bsej->bsei", affine, pts) + (SIZE / 2 + uniform(-3, 3, 2)).view(b, 1, 1, 2)
    # a smooth random warp: each point moves by up to 1.2 px along a sine field of random direction and phase
    freq, phase, amp = uniform(0.1, 0.3, 2, 2), uniform(0, 2 * math.pi, 2), uniform(0, 1.2, 2)
    pts = pts + amp.view(b, 1, 1, 2) * torch.sin(torch.einsum("bij,bsej->bsei", freq, pts) + phase.view(b, 1, 1, 2))

    # a distractor: a short stray stroke anywhere, in DISTRACTOR of the images
    start, turn, length = uniform(4, SIZE - 4, 2), uniform(0, 2 * math.pi), uniform(4, 10)
    end = start + length.unsqueeze(1) * torch.stack([torch.cos(turn), torch.sin(turn)], -1)
    pts = torch.cat([pts, torch.stack([start, end], 1).unsqueeze(1)], 1)  # [B, S + 1, 2, 2]
    keep = torch.as_tensor(rng.random(size=pts.shape[:2]) >= DROP)  # strokes break, as pen strokes do
    keep[:, -1] = torch.as_tensor(rng.random(size=b) < DISTRACTOR)

    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1)  # [P, 2] pixel centres
    a, d = pts[:, :, 0], pts[:, :, 1] - pts[:, :, 0]  # [B, S + 1, 2]
    rel = grid.view(1, 1, -1, 2) - a.unsqueeze(2)  # [B, S + 1, P, 2]
    t = ((rel * d.unsqueeze(2)).sum(-1) / (d * d).sum(-1).clamp_min(1e-6).unsqueeze(2)).clamp(0, 1)
    dist2 = (rel - t.unsqueeze(-1) * d.unsqueeze(2)).square().sum(-1).masked_fill_(~keep.unsqueeze(-1), math.inf)
    dist = dist2.amin(dim=1).sqrt()  # [B, P] distance to the nearest stroke drawn
    width = uniform(0.7, 1.5, 1)
    ink = (width + 0.5 - dist).clamp(0, 1) * uniform(0.7, 1.0, 1)
    noisy = ink + torch.as_tensor(rng.normal(0, NOISE, size=ink.shape), dtype=torch.float32)
    return noisy.clamp(0, 1).view(b, SIZE, SIZE)


def make_images(n: int, seed: int = 0, split: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images [n, 28, 28] uint8 and labels [n] int64 (balanced in expectation), built block by block."""
    x = np.empty((n, SIZE, SIZE), dtype=np.uint8)
    y = np.empty(n, dtype=np.int64)
    for i, start in enumerate(range(0, n, BLOCK)):
        stop = min(start + BLOCK, n)
        rng = np.random.default_rng([seed, split, i])
        labels = rng.integers(0, 10, size=BLOCK)
        x[start:stop] = (render(labels, rng)[: stop - start] * 255).round().to(torch.uint8).numpy()
        y[start:stop] = labels[: stop - start]
    return x, y


def _cached_images(n: int, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_images`, kept as .npy under ``I2X_BENCH_CACHE`` (when set) so it is drawn only once.

    Any cached draw of at least n images serves (its first n images are the same); it is memory-mapped,
    so only the n images asked for are read.
    """
    cache = os.environ.get("I2X_BENCH_CACHE")
    if not cache:
        return make_images(n, seed, split)
    prefix = f"synthetic-mnist-seed{seed}-split{split}-n"
    sizes = sorted(int(f.name[len(prefix):-len("-x.npy")]) for f in Path(cache).glob(f"{prefix}*-x.npy"))
    usable = [m for m in sizes if m >= n]
    stem = Path(cache) / f"{prefix}{usable[0] if usable else n}"
    if not usable:
        stem.parent.mkdir(parents=True, exist_ok=True)
        x, y = make_images(n, seed, split)
        for arr, part in ((y, "y"), (x, "x")):  # x last: its presence marks a complete pair
            tmp = stem.with_name(f"tmp-{os.getpid()}-{stem.name}-{part}.npy")
            np.save(tmp, arr)
            tmp.replace(f"{stem}-{part}.npy")
    x = np.load(f"{stem}-x.npy", mmap_mode="r")[:n]
    y = np.load(f"{stem}-y.npy", mmap_mode="r")[:n]
    return np.array(x), np.array(y)


def make_split(n: int, seed: int = 0, split: int = 0) -> TensorDataset:
    """``n`` normalised images [n, 1, 28, 28] float32 with their labels."""
    x, y = _cached_images(n, seed, split)
    images = torch.from_numpy(x).unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return TensorDataset(images, torch.from_numpy(y))


def mnist_like() -> ImageData:
    """The i2x data factory: sizes from ``I2X_BENCH_N`` (train, default 60,000) and ``I2X_BENCH_N_TEST`` (2,000)."""
    n_train = int(os.environ.get("I2X_BENCH_N", "60000"))
    n_test = int(os.environ.get("I2X_BENCH_N_TEST", "2000"))
    seed = int(os.environ.get("I2X_BENCH_SEED", "0"))
    splits = {"train": make_split(n_train, seed, 0), "test": make_split(n_test, seed, 1)}
    return ImageData("synthetic-mnist", splits, [str(c) for c in range(10)], 1, (SIZE, SIZE), (MEAN,), (STD,))
