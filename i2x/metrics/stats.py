"""Small summary statistics shared by the studies (one convention: population std, ddof=0)."""

from __future__ import annotations

import numpy as np


def mean_std(values: np.ndarray) -> dict[str, float]:
    """Mean and population standard deviation (ddof=0) of a 1-D array."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}


def nan_mean_std(values: np.ndarray, median: bool = False) -> dict[str, float | int | None]:
    """Mean, population std and count of the finite values of a 1-D array (None when there are none), and with
    ``median`` their median."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"mean": None, "std": None, "n": 0} | ({"median": None} if median else {})
    return ({"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}
            | ({"median": float(np.median(finite))} if median else {}))


def evenly_spaced(n: int, at_most: int) -> np.ndarray:
    """Up to ``at_most`` evenly spaced indices of ``range(n)``, always with the first and the last."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, at_most)).astype(int))
