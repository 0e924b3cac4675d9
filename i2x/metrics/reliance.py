"""Reliance statistics: presence, purity and concentration of a unit (a prototype or a concept), and paired
tests of an intervention against random baselines. Arrays in, numbers out."""
from __future__ import annotations

import numpy as np


def presence_stats(assign: np.ndarray, labels: np.ndarray, k: int, m: int) -> dict[str, np.ndarray]:
    """Per unit (ids ``0..k-1`` in ``assign`` [n, h, w]): presence [n, K], presence rate per class [K, M], purity
    P(class | present) [K, M], the share of each class among all samples [M], cell occurrence counts [K, h, w],
    the cells it covers per sample that holds it [K], the entropy of its cell distribution [K] and its spatial
    concentration [K]. A concept is measured by passing its id per cell (the union of its prototypes' cells)."""
    n, h, w = assign.shape
    flat = assign.reshape(n, -1)
    present = np.zeros((n, k), dtype=bool)
    present[np.repeat(np.arange(n), h * w), flat.ravel()] = True
    onehot = np.eye(m, dtype=np.float64)[labels]                          # [n, M]
    both = present.T.astype(np.float64) @ onehot                          # [K, M] samples of class c holding k
    class_sizes = onehot.sum(axis=0)
    rate = np.divide(both, class_sizes, out=np.zeros_like(both), where=class_sizes > 0)
    holders = both.sum(axis=1)
    purity = np.divide(both, holders[:, None], out=np.zeros_like(both), where=holders[:, None] > 0)
    cells = np.bincount(flat.ravel() * (h * w) + np.tile(np.arange(h * w), n), minlength=k * h * w).reshape(k, h * w)
    total = cells.sum(axis=1)
    size = np.divide(total, holders, out=np.zeros(k), where=holders > 0)
    p = cells / np.maximum(total, 1)[:, None]
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return {"present": present, "rate": rate, "purity": purity, "prior": class_sizes / max(n, 1),
            "cells": cells.reshape(k, h, w), "size": size, "entropy": entropy,
            "concentration": concentration(entropy, size, h * w)}


def concentration(entropy: np.ndarray, size: np.ndarray, cells: int) -> np.ndarray:
    """How fixed a unit's place is, in [0, 1]: ``(log(cells) - H) / (log(cells) - log(a))``.

    H is the entropy of its cell distribution and ``a`` the cells it covers per sample. A unit that covers the
    same ``a`` cells in every image has H = log(a): 1. One spread evenly over the whole grid has H = log(cells): 0.
    Plain ``1 - H / log(cells)`` would call a pattern that covers many cells spread out even when those cells
    never change.
    """
    top = np.log(cells) - entropy
    room = np.log(cells) - np.log(np.maximum(size, 1.0))
    return np.clip(np.divide(top, room, out=np.ones_like(top), where=room > 1e-9), 0.0, 1.0)


def lift(purity: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """How much purer than chance each unit is for each class: (P(c|k) - P(c)) / (1 - P(c)), clipped at 0."""
    return np.clip((purity - prior) / np.maximum(1.0 - prior, 1e-12), 0.0, None)


def paired(effect: np.ndarray, random: np.ndarray) -> dict[str, float]:
    """An intervention's effect per sample [S] against ``random`` [S, D] baselines on the same samples: the mean
    effect, the mean and spread of the random effect, the paired excess (effect minus the sample's mean random
    effect), its z (excess / standard error) and effect size (Cohen's d_z: excess / sd of the differences)."""
    effect, random = np.asarray(effect, dtype=np.float64), np.asarray(random, dtype=np.float64)
    if effect.size == 0:
        return {"effect": 0.0, "random": 0.0, "random_sd": 0.0, "excess": 0.0, "z": 0.0, "effect_size": 0.0}
    diff = effect - random.mean(axis=1)
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    se = sd / np.sqrt(diff.size)
    excess = float(diff.mean())
    return {"effect": float(effect.mean()), "random": float(random.mean()), "random_sd": float(random.std()),
            "excess": excess, "z": excess / max(se, 1e-9) if diff.size > 1 else 0.0,
            "effect_size": excess / max(sd, 1e-9) if diff.size > 1 else 0.0}


def agreement(masks: np.ndarray) -> float:
    """How much per-image footprints [N, H, W] (bool) sit on the same pixels, in [0, 1]: with F the share of images
    whose footprint holds each pixel, sum(F^2) / sum(F), the chance that a footprint pixel of one image is in the
    footprint of another drawn at random (itself included). 1: the same pixels in every image; a pattern that
    wanders over an area A times its own size gives about 1/A."""
    share = np.asarray(masks, dtype=np.float64).reshape(len(masks), -1).mean(axis=0) if len(masks) else np.zeros(1)
    total = share.sum()
    return float((share ** 2).sum() / total) if total > 0 else 0.0


def shortcut_checks(lift_c: float, concentration_c: float, paste: dict[str, float] | None,
                    deletion: dict[str, float] | None, z_threshold: float, min_flip_excess: float, min_lift: float,
                    min_concentration: float, max_random_flip: float = 1.0,
                    min_agreement: float = 0.0) -> dict[str, bool]:
    """The four tests a shortcut passes: class-tied (lift), fixed in place (concentration), its paste turns
    recipients into its class more than random patches (flip excess and its z) while random patches of that shape
    rarely do (at most ``max_random_flip``: otherwise the footprint pastes so much of the donor that the test cannot
    isolate a local pattern), and deleting it costs its class's margin more than random cells (z). ``paste`` holds
    ``excess_flip``, ``flip_z``, ``random_flip_rate`` and ``agreement`` (of its donors' footprints, :func:`agreement`:
    fixed in place needs the same grid cells, concentration, and the same pixels, at least ``min_agreement``);
    ``deletion`` holds ``z``."""
    paste, deletion = paste or {}, deletion or {}
    return {"class_tied": bool(lift_c >= min_lift),
            "fixed_in_place": bool(concentration_c >= min_concentration
                                   and paste.get("agreement", 0.0 if min_agreement > 0 else 1.0) >= min_agreement),
            "paste": bool(paste.get("excess_flip", 0.0) >= min_flip_excess and paste.get("flip_z", 0.0) >= z_threshold
                          and paste.get("random_flip_rate", 1.0) <= max_random_flip),
            "deletion": bool(deletion.get("z", 0.0) >= z_threshold)}


def evidence_order(passes: np.ndarray, flip_excess: np.ndarray, logit_excess: np.ndarray) -> np.ndarray:
    """Ranking by causal evidence: units that pass every shortcut test first, then by paste flip excess over random
    patches, then by the paste's margin change over random patches (all descending)."""
    return np.lexsort((-np.nan_to_num(logit_excess), -np.nan_to_num(flip_excess), ~np.asarray(passes, dtype=bool)))
