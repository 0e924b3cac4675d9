"""Dataset cartography (Swayamdipta et al., EMNLP 2020) over the checkpoints: how each sample was learned.

Per sample, with p_t the softmax probability of its true class at checkpoint t:
confidence = mean_t p_t, variability = population std_t p_t, correctness = fraction of
checkpoints where argmax == label, forgetting = number of t with right at t and wrong at t+1.

Regions (chosen here; the paper draws them by eye on the map): a sample is *ambiguous* if
variability >= 0.2; otherwise *easy* if confidence >= 0.5, else *hard*. The three regions
partition the samples. Both cut-offs are arguments and are written into the summary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REGIONS = ("easy", "ambiguous", "hard")


def cartography(probs: Any, labels: Any) -> dict[str, np.ndarray]:
    """Per-sample confidence, variability, correctness (float32 [n]) and forgetting (int32 [n]) from probs [t, n, m]."""
    t, n, _ = tuple(probs.shape)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(n)
    p_true = np.empty((t, n), dtype=np.float64)
    correct = np.empty((t, n), dtype=bool)
    for step in range(t):  # one checkpoint at a time, so a zarr store is read in [n, m] slices
        p = np.asarray(probs[step])
        p_true[step] = p[rows, labels]
        correct[step] = p.argmax(axis=1) == labels
    return {
        "confidence": p_true.mean(axis=0).astype(np.float32),
        "variability": p_true.std(axis=0).astype(np.float32),
        "correctness": correct.mean(axis=0).astype(np.float32),
        "forgetting": (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.int32),
    }


def cartography_regions(carto: dict[str, np.ndarray], confidence_cut: float = 0.5,
                        variability_cut: float = 0.2) -> np.ndarray:
    """Region index per sample into REGIONS (0 easy, 1 ambiguous, 2 hard), int8 [n]."""
    ambiguous = carto["variability"] >= variability_cut
    easy = carto["confidence"] >= confidence_cut
    return np.where(ambiguous, 1, np.where(easy, 0, 2)).astype(np.int8)


def _mean(values: np.ndarray) -> float | None:
    """Mean as a float, None when there are no values (JSON has no NaN)."""
    return float(np.mean(values)) if np.size(values) else None


def cartography_summary(carto: dict[str, np.ndarray], confidence_cut: float = 0.5,
                        variability_cut: float = 0.2) -> dict[str, Any]:
    """JSON-ready summary: means, forgetting counts, region sizes and the cut-offs used."""
    region = cartography_regions(carto, confidence_cut, variability_cut)
    counts = np.bincount(region, minlength=len(REGIONS))
    return {
        "n": int(region.size),
        "mean_confidence": _mean(carto["confidence"]),
        "mean_variability": _mean(carto["variability"]),
        "mean_correctness": _mean(carto["correctness"]),
        "mean_forgetting": _mean(carto["forgetting"]),
        "forgotten_at_least_once": int(np.count_nonzero(carto["forgetting"])),
        "regions": {name: int(c) for name, c in zip(REGIONS, counts)},
        "cutoffs": {"confidence": confidence_cut, "variability": variability_cut},
    }
