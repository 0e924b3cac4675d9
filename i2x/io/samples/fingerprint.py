"""A fingerprint of each analysed sample: its pixels averaged to a grey 8x8 thumbnail in [0, 1], recorded at
extraction (the store's ``fingerprint`` array). Two runs that match samples by their index in the data set hold
the same images only if the thumbnails agree; thumbnails, not hashes, so the same image extracted at another
input size, channel count or normalisation still agrees."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from i2x.io.data import iter_batches
from i2x.io.datasets import ImageData

SIDE = 8  # thumbnail side: 64 numbers per sample
# Largest mean absolute difference (pixel range [0, 1]) between two thumbnails of one image: resizing to another
# input size moves a thumbnail by about 0.01-0.03; two different images differ by 0.1 and more.
SAME_IMAGE = 0.05


def fingerprints(data: ImageData, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """``[n, 64]`` float16: each sample of ``dataset`` (images of ``data``) as a grey 8x8 thumbnail in [0, 1]."""
    parts = []
    for x, _ in iter_batches(dataset, 0, len(dataset), batch_size):  # type: ignore[arg-type]
        grey = data.denormalize(x.float()).mean(dim=1, keepdim=True)
        parts.append(F.adaptive_avg_pool2d(grey, SIDE).reshape(len(x), -1))
    return torch.cat(parts).numpy().astype(np.float16) if parts else np.zeros((0, SIDE * SIDE), np.float16)


def same_images(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of two fingerprint arrays (the same samples by index): do they show the same image?"""
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=1) <= SAME_IMAGE
