"""The subject of most hostile tests: three snapshots of a small CNN trained on 200 digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from i2x import api


def train_on_digits(root: Path, n_test: int) -> tuple[Path, Path]:
    """Write 200 training and ``n_test`` test digits to ``root/digits.npz`` and train a SmallCNN on them for
    3 epochs into ``root/ck``; returns (the snapshot directory, the npz)."""
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    npz = root / "digits.npz"
    np.savez(npz, x_train=x[:200], y_train=y[:200], x_test=x[200:200 + n_test], y_test=y[200:200 + n_test])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread, far faster on a busy machine
    try:
        api.train(data=f"npz:{npz}", input_size=32, out=root / "ck", epochs=3, lr=1e-2, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "ck", npz
