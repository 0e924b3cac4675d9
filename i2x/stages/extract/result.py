"""What an extraction returns, and how its outputs are written: the one place both the classification and the region paths share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class ExtractResult:
    """Where the store is, which layer was used, and how long it took."""

    store_path: Path
    layer: str
    grid: tuple[int, int]
    checkpoints: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    order: str = ""
    notes: list[str] = field(default_factory=list)  # the preprocessing, its check and the sample, a line each


def finite_or_nan(t: torch.Tensor, finite: bool) -> np.ndarray:
    """To numpy; a diverged checkpoint's outputs become NaN so no stage mistakes them for evidence."""
    arr = t.detach().float().cpu().numpy()
    if not finite:
        arr = np.full_like(arr, np.nan)
    return arr
