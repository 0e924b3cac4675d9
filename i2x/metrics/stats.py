"""Small summary statistics shared by the studies (one convention: population std, ddof=0)."""

from __future__ import annotations

import numpy as np


def mean_std(values: np.ndarray) -> dict[str, float]:
    """Mean and population standard deviation (ddof=0) of a 1-D array."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}
