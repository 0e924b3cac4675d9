"""Off-target leakage of attribution maps given a region of interest (ROI), arrays in, numbers out.

For a non-negative map a [B, H, W] and a boolean ROI s [B, H, W] of the same size, per sample:

* leakage = sum(a over not-s) / sum(a): the share of positive attribution outside the ROI;
* relevance mass accuracy (Quantus) = sum(a s) / sum(a) (= 1 - leakage for non-negative maps);
* relevance rank accuracy (Quantus) = |top-K pixels of a, K = |s|| within s| / K;
* pointing game (TorchRay) = 1 when the map's maximum (first in row-major order on ties) lies
  within ``tolerance`` pixels (Euclidean) of the ROI, else 0; tolerance 0 = inside the ROI;
* energy-based pointing game (Score-CAM) = sum(L s) / sum(L), L the per-image min-max normalised map.

A map with no positive mass, or an empty ROI, gives NaN.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

#: The TorchRay pointing game's tolerance, in input pixels.
POINTING_TOLERANCE = 15


def _flat(maps: np.ndarray, roi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, roi = np.asarray(maps, dtype=np.float64), np.asarray(roi, dtype=bool)
    if maps.shape != roi.shape:
        raise ValueError(f"maps {maps.shape} and ROI {roi.shape} must have the same shape")
    return maps.reshape(maps.shape[0], -1), roi.reshape(roi.shape[0], -1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def leakage(maps: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Share [B] of the positive attribution outside the ROI."""
    a, s = _flat(maps, roi)
    a = np.clip(a, 0, None)
    return np.where(s.any(1), _ratio((a * ~s).sum(1), a.sum(1)), np.nan)


def relevance_mass(maps: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Quantus' relevance mass accuracy [B]: sum(a s) / sum(a)."""
    a, s = _flat(maps, roi)
    return np.where(s.any(1), _ratio((a * s).sum(1), a.sum(1)), np.nan)


def relevance_rank(maps: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Quantus' relevance rank accuracy [B]: share of the top-|ROI| pixels that lie in the ROI."""
    a, s = _flat(maps, roi)
    out = np.full(a.shape[0], np.nan)
    for i in range(a.shape[0]):
        k = int(s[i].sum())
        if k:
            top = np.argsort(-a[i], kind="stable")[:k]
            out[i] = s[i, top].mean()
    return out


def pointing_game(maps: np.ndarray, roi: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> np.ndarray:
    """1.0 where the map's maximum lies within ``tolerance`` pixels of the ROI, else 0.0 [B]."""
    maps, roi = np.asarray(maps), np.asarray(roi, dtype=bool)
    a, s = _flat(maps, roi)
    out = np.full(a.shape[0], np.nan)
    for i in range(a.shape[0]):
        if s[i].any():
            distance = distance_transform_edt(~roi[i])  # distance of every pixel to the nearest ROI pixel
            out[i] = float(distance.reshape(-1)[int(np.argmax(a[i]))] <= tolerance)
    return out


def energy_pointing_game(maps: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Score-CAM's energy-based pointing game [B]: the min-max normalised map's share inside the ROI."""
    a, s = _flat(maps, roi)
    lo, hi = a.min(1, keepdims=True), a.max(1, keepdims=True)
    energy = _ratio(a - lo, np.broadcast_to(hi - lo, a.shape))
    return np.where(s.any(1), _ratio((energy * s).sum(1), energy.sum(1)), np.nan)
