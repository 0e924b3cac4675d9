"""Semantic drift between two stacks of saliency maps (two checkpoints, or two training phases).

Reference-free, per-sample metrics after arXiv 2604.08513, all vectorised over the n samples of
two stacks ``a`` (before) and ``b`` (after) of shape [n, h, w], raw or display maps (non-negative):

* ``iou``: IoU of the top-``top`` regions (default the top 20% of cells);
* ``shift_px`` / ``shift_frac``: distance between the mass-weighted centroids, in cells of the
  given grid and as a fraction of its diagonal sqrt(h^2 + w^2) (scale-free; use it to compare grids);
* ``spearman``: rank correlation of the flattened maps (average ranks for ties);
* ``concentration_a`` / ``concentration_b`` / ``concentration_change``: share of the total mass in
  the top-``top`` cells, and its change b - a.

Conventions: the top region holds exactly ceil(top * h * w) cells, ties broken in row-major order.
A map with zero mass has no centroid or concentration (NaN); a constant map has no rank
correlation (NaN); ``without_empty`` makes every metric NaN on pairs where a map is empty.
``summarize`` ignores NaNs and reports how many values it used.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import kendalltau, rankdata

from i2x.errors import UserError
from i2x.metrics.bootstrap import percentile_interval
from i2x.metrics.stats import nan_mean_std


def _stack(maps: np.ndarray, name: str = "maps") -> np.ndarray:
    """``maps`` as a float64 array [n, h, w] (accepts numpy arrays and tensors, which are detached and copied to the
    host)."""
    maps = np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"{name} must be a stack of maps [n, h, w], got shape {maps.shape}")
    return maps


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _stack(a, "a"), _stack(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"the two map stacks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def top_count(cells: int, top: float) -> int:
    """Number of cells in the top region: ceil(top * cells), at least 1."""
    if not 0 < top <= 1:
        raise UserError(f"top must be a fraction in (0, 1], got {top}; use e.g. 0.2 for the top 20%")
    return max(1, math.ceil(top * cells - 1e-9))  # the epsilon keeps 0.1 * 30 at 3, not 4


def top_mask(maps: np.ndarray, top: float = 0.2) -> np.ndarray:
    """Boolean mask [n, h, w] of each map's ceil(top * h * w) highest cells (ties in row-major order)."""
    maps = _stack(maps)
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    highest = np.argsort(-flat, axis=1, kind="stable")[:, : top_count(h * w, top)]
    mask = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(mask, highest, True, axis=1)
    return mask.reshape(n, h, w)


def iou_top(a: np.ndarray, b: np.ndarray, top: float = 0.2) -> np.ndarray:
    """IoU [n] of the top-``top`` regions of a and b."""
    a, b = _pair(a, b)
    ma, mb = top_mask(a, top), top_mask(b, top)
    return (ma & mb).sum(axis=(1, 2)) / (ma | mb).sum(axis=(1, 2))


def centroid(maps: np.ndarray) -> np.ndarray:
    """Mass-weighted centroid [n, 2] as (row, col) in cell units (cell centres at 0..h-1); NaN for zero mass."""
    maps = _stack(maps)
    _, h, w = maps.shape
    mass = maps.sum(axis=(1, 2))
    rows = (maps.sum(axis=2) * np.arange(h)).sum(axis=1)
    cols = (maps.sum(axis=1) * np.arange(w)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([rows / mass, cols / mass], axis=1)


def centroid_shift(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid displacement from a to b: (cells [n], fraction of the grid diagonal sqrt(h^2 + w^2) [n])."""
    a, b = _pair(a, b)
    _, h, w = a.shape
    shift = np.linalg.norm(centroid(b) - centroid(a), axis=1)
    return shift, shift / math.hypot(h, w)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation [n] of each pair of flattened maps (average ranks for ties; NaN if one is constant)."""
    a, b = _pair(a, b)
    n = a.shape[0]
    ra = rankdata(a.reshape(n, -1), method="average", axis=1)
    rb = rankdata(b.reshape(n, -1), method="average", axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=1) / denominator, np.nan)


def concentration(maps: np.ndarray, top: float = 0.2) -> np.ndarray:
    """Share [n] of each map's total mass that lies in its top-``top`` cells; NaN for zero mass."""
    maps = _stack(maps)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (maps * top_mask(maps, top)).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))


def concentration_change(a: np.ndarray, b: np.ndarray, top: float = 0.2) -> np.ndarray:
    """Change [n] in concentration from a to b (positive: b is more concentrated)."""
    a, b = _pair(a, b)
    return concentration(b, top) - concentration(a, top)


def drift_metrics(a: np.ndarray, b: np.ndarray, top: float = 0.2) -> dict[str, np.ndarray]:
    """All drift metrics between map stacks a and b, each an array [n] (see the module docstring)."""
    a, b = _pair(a, b)
    shift_px, shift_frac = centroid_shift(a, b)
    conc_a, conc_b = concentration(a, top), concentration(b, top)
    return {
        "iou": iou_top(a, b, top),
        "shift_px": shift_px,
        "shift_frac": shift_frac,
        "spearman": spearman(a, b),
        "concentration_a": conc_a,
        "concentration_b": conc_b,
        "concentration_change": conc_b - conc_a,
    }


def empty_either(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] True where map a or map b has no positive mass (all zero, or NaN): its top region and ranks are ties."""
    a, b = _pair(a, b)
    return ~((a.sum(axis=(1, 2)) > 0) & (b.sum(axis=(1, 2)) > 0))


def without_empty(metrics: Mapping[str, np.ndarray], a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """``metrics`` of the pairs a -> b with NaN where either map is empty (:func:`empty_either`): the IoU of an empty
    map's top region (row-major ties) or its rank correlation would be an artefact of the tie rule, not a drift."""
    empty = empty_either(a, b)
    return {name: np.where(empty, np.nan, np.asarray(values, dtype=np.float64)) for name, values in metrics.items()}


def summarize(
    metrics: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Per class and overall mean / median / std of each metric: ``{"overall": {metric: stats}, "per_class": {name: ...}}``.

    Classes are named by ``class_names[label]`` (or the label itself) and listed only when present.
    """
    labels = np.asarray(labels)
    metrics = {name: np.asarray(values, dtype=np.float64) for name, values in metrics.items()}
    per_class = {}
    for label in np.unique(labels):
        name = str(class_names[label]) if class_names is not None else str(label)
        chosen = labels == label
        per_class[name] = {metric: nan_mean_std(values[chosen], median=True) for metric, values in metrics.items()}
    return {
        "overall": {metric: nan_mean_std(values, median=True) for metric, values in metrics.items()},
        "per_class": per_class,
    }


def tau_undefined(x: np.ndarray, y: np.ndarray, first: str, second: str, noun: str = "items") -> str | None:
    """Why Kendall's tau of scores x and y is not defined (fewer than two items, or one side all tied); None if it is."""
    if len(x) < 2:
        return f"fewer than two {noun} are scored under both {first} and {second} ({len(x)})"
    for name, values in ((first, x), (second, y)):
        if np.unique(values).size < 2:
            return f"every one of the {len(values)} {noun} has the same score under {name} (all tied)"
    return None


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of x and y [b, k] (scipy's definition, vectorised over rows); NaN where
    one row is all tied or holds a NaN."""
    x, y = np.atleast_2d(np.asarray(x, dtype=np.float64)), np.atleast_2d(np.asarray(y, dtype=np.float64))
    i, j = np.triu_indices(x.shape[1], k=1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
    denominator = np.sqrt((sx != 0).sum(axis=1) * (sy != 0).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (sx * sy).sum(axis=1) / denominator, np.nan)


def _noise(first: str, second: str, pair: tuple[int, int], x: np.ndarray, y: np.ndarray,
           rx: np.ndarray, ry: np.ndarray, confidence: float) -> dict:
    """A reversed pair with each method's score difference and its bootstrap interval; ``within_noise`` when
    either interval contains 0 (the reversal could be resampling noise)."""
    a, b = pair
    difference = {}
    for name, point, reps in ((first, x, rx), (second, y, ry)):
        lo, hi = percentile_interval(reps[:, a] - reps[:, b], confidence)
        difference[name] = {"estimate": float(point[a] - point[b]), "interval": [lo, hi],
                            "crosses_zero": None if lo is None else bool(lo <= 0 <= hi)}
    flags = [d["crosses_zero"] for d in difference.values()]
    both = np.isfinite(rx[:, [a, b]]).all(axis=1) & np.isfinite(ry[:, [a, b]]).all(axis=1)
    flipped = (rx[both, a] > rx[both, b]) & (ry[both, a] < ry[both, b])
    return {"difference": difference, "within_noise": None if None in flags else any(flags),
            "share_reversed": float(flipped.mean()) if both.any() else None}


def rank_reversals(
    stability: Mapping[str, Mapping[str, float]],
    methods: Sequence[str] | None = None,
    replicates: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    confidence: float = 0.95,
    noun: str = "items",
) -> list[dict]:
    """Compare how two or more methods rank the same items (classes, models or phases) by a stability score.

    ``stability[method][item]`` is a score, higher = ranked higher. For each pair of methods (all pairs
    of ``methods``, default all keys in order) over their common items, returns a dict with
    ``methods``, ``items``, ``kendall_tau`` and ``p_value`` (scipy's tau-b; NaN when not defined, with
    the reason in ``undefined``: fewer than two items, or all tied under one method), ``reversed_pairs``:
    [first, second] pairs that the first method ranks first>second and the second method ranks
    second>first, and ``tied_pairs`` (ties are not reversals).

    ``replicates[method][item]`` (bootstrap replicates of the scores, the same resamples for every
    method and item) adds ``kendall_tau_interval`` and ``reversals``: per reversed pair each method's
    score difference with its ``confidence`` interval, ``within_noise`` (either interval contains 0)
    and ``share_reversed`` (the share of replicates in which the pair is reversed).
    """
    methods = list(stability) if methods is None else list(methods)
    missing = [m for m in methods if m not in stability]
    if missing:
        raise UserError(f"no stability scores for method(s) {', '.join(missing)}; known: {', '.join(stability)}")
    comparisons = []
    for first, second in itertools.combinations(methods, 2):
        items = [item for item in stability[first] if item in stability[second]]
        x = np.array([stability[first][item] for item in items], dtype=np.float64)
        y = np.array([stability[second][item] for item in items], dtype=np.float64)
        # reversed[i, j]: the first method puts item i above j, the second puts j above i.
        reversed_ = (x[:, None] > x[None, :]) & (y[:, None] < y[None, :])
        tied = np.triu((x[:, None] == x[None, :]) | (y[:, None] == y[None, :]), k=1)
        undefined = tau_undefined(x, y, first, second, noun)
        if undefined is None:
            result = kendalltau(x, y)
            tau, p_value = float(result.statistic), float(result.pvalue)
        else:
            tau = p_value = math.nan
        pairs = list(zip(*np.nonzero(reversed_)))
        comparison = {
            "methods": [first, second],
            "items": items,
            "kendall_tau": tau,
            "p_value": p_value,
            "undefined": undefined,
            "reversed_pairs": [[items[i], items[j]] for i, j in pairs],
            "tied_pairs": [[items[i], items[j]] for i, j in zip(*np.nonzero(tied))],
        }
        if replicates is not None:
            rx = np.stack([np.asarray(replicates[first][item], dtype=np.float64) for item in items], axis=1) \
                if items else np.empty((0, 0))
            ry = np.stack([np.asarray(replicates[second][item], dtype=np.float64) for item in items], axis=1) \
                if items else np.empty((0, 0))
            taus = kendall_tau_b(rx, ry) if len(items) >= 2 else np.empty(0)
            comparison["kendall_tau_interval"] = percentile_interval(taus, confidence)
            comparison["reversals"] = [{"pair": [items[i], items[j]],
                                        **_noise(first, second, (i, j), x, y, rx, ry, confidence)}
                                       for i, j in pairs]
        comparisons.append(comparison)
    return comparisons
