"""Deletion at the target layer for the reliance study: which samples each unit is deleted from, running
every deletion grouped by sample, and the summary paired against random cells."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from i2x.attribution.interventions import CellReplacement, deletion_margins, random_cells
from i2x.io.store import Store, chunk_ranges
from i2x.metrics.reliance import paired
from i2x.stages.reliance.config import RelianceConfig


def images_at(dataset: Dataset, index: np.ndarray, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``dataset`` at ``index`` (stacked, on the CPU)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        idx = torch.as_tensor(index, dtype=torch.long)
        return tensors[0][idx], tensors[1][idx]
    xs, ys = [], []
    for x, y in DataLoader(Subset(dataset, index.tolist()), batch_size=batch_size):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


def mean_activation(store: Store) -> torch.Tensor:
    """The data set's mean activation per channel [d]: stored final-checkpoint features over every sample and cell."""
    features = store.array("features")
    n, d = features.shape[0], features.shape[-1]
    total, count = np.zeros(d), 0
    for lo, hi in chunk_ranges(n, store.chunk_n):
        block = np.asarray(features[lo:hi], dtype=np.float64)
        total += block.reshape(-1, d).sum(axis=0)
        count += block.size // d
    return torch.as_tensor(total / max(count, 1), dtype=torch.float32)


def choose(pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``size`` distinct entries of ``pool`` drawn at random."""
    return rng.choice(pool, size=min(size, pool.size), replace=False) if pool.size else pool


def deletion_plan(unit_assign: np.ndarray, labels: np.ndarray, holders: np.ndarray, u: int, c: int,
                  grid: tuple[int, int], cfg: RelianceConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which samples unit u is deleted from (up to ``max_samples`` class-c holders, the reliance toward c, and half
    as many holders of other classes) and the masks: u's cells, then ``random_draws`` sets of as many uniformly
    random cells. Returns rows [S], masks [S, 1 + draws, h, w] and u's cell counts [S]."""
    own_class = labels[holders] == c
    chosen = np.sort(np.concatenate([choose(holders[own_class], cfg.max_samples, rng),
                                     choose(holders[~own_class], cfg.max_samples // 2, rng)])).astype(np.int64)
    own = unit_assign[chosen] == u                                              # [S, h, w]
    counts = own.reshape(len(chosen), -1).sum(axis=1)
    masks = np.concatenate([own[:, None], random_cells(counts, cfg.random_draws, grid, rng)], axis=1)
    return chosen, masks, counts
def run_deletions(model: nn.Module, replacement: CellReplacement, expand: bool, analysed: Dataset,
                  rows_index: np.ndarray, labels: np.ndarray,
                  plans: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: RelianceConfig,
                  progress: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run every planned deletion, grouped by sample so that each image passes the layer once (with expansion)
    for its clean margin and all its interventions. Returns per prototype the margin drops [S, 1 + draws] and
    the clean margins [S]."""
    h, w = plans[0][1].shape[2:] if plans else (1, 1)
    rows_p = np.concatenate([np.repeat(p[0], p[1].shape[1]) for p in plans])            # plan order
    masks_p = np.concatenate([p[1].reshape(-1, h, w) for p in plans])
    order = np.argsort(rows_p, kind="stable")
    uniq, per_row = np.unique(rows_p[order], return_counts=True)
    group = np.repeat(np.arange(uniq.size), per_row)
    entry_pos = np.arange(order.size) + group + 1            # sorted entries shift by one clean slot per row
    clean_pos = np.cumsum(per_row + 1) - per_row - 1
    masks = np.zeros((order.size + uniq.size, h, w), dtype=bool)
    masks[entry_pos] = masks_p[order]
    counts = torch.as_tensor(per_row + 1)
    margins = np.empty(masks.shape[0], dtype=np.float32)
    for lo, hi in tqdm(list(chunk_ranges(uniq.size, cfg.batch_size)), desc="deletion", disable=not progress):
        a, b = int(clean_pos[lo]), int(clean_pos[hi - 1] + per_row[hi - 1] + 1)
        images, _ = images_at(analysed, rows_index[uniq[lo:hi]], cfg.batch_size)
        y = torch.as_tensor(labels[uniq[lo:hi]], dtype=torch.long)
        margins[a:b] = deletion_margins(model, replacement, images, y, torch.from_numpy(masks[a:b]),
                                        counts[lo:hi], cfg.batch_size, expand).numpy()
    clean_of_row = margins[clean_pos]
    after = np.empty(order.size, dtype=np.float32)
    after[order] = margins[entry_pos]
    clean_p = clean_of_row[np.searchsorted(uniq, rows_p)]
    drops_p = clean_p - after
    splits = np.cumsum([p[1].shape[0] * p[1].shape[1] for p in plans])[:-1]
    drops = [d.reshape(p[1].shape[:2]) for d, p in zip(np.split(drops_p, splits), plans)]
    cleans = [c.reshape(p[1].shape[:2])[:, 0] for c, p in zip(np.split(clean_p, splits), plans)]
    return drops, cleans


def deletion_summary(drops: np.ndarray, clean: np.ndarray, chosen: np.ndarray, counts: np.ndarray,
                     labels: np.ndarray, c: int, m: int) -> dict[str, Any]:
    """Deletion results of one prototype: toward its class c (paired against random cells), per cell, per class
    and per sample. ``drops`` [S, 1 + draws] are margin drops for k's cells then the random draws."""
    y = labels[chosen]
    in_c = y == c
    toward = paired(drops[in_c, 0], drops[in_c, 1:]) if in_c.any() else {}
    per_cell = drops / np.maximum(counts, 1)[:, None]
    n_c = np.bincount(y, minlength=m)

    def by_class(values: np.ndarray) -> list[float | None]:
        sums = np.bincount(y, weights=values, minlength=m)
        return [None if n == 0 else round(float(v / n), 6) for v, n in zip(sums, n_c)]

    return {**toward, "class_samples": int(in_c.sum()), "samples": int(len(chosen)), "cells": float(counts.mean()),
            "clean_margin": float(clean[in_c].mean()) if in_c.any() else None,
            "effect_per_cell": float(per_cell[in_c, 0].mean()) if in_c.any() else None,
            "random_per_cell": float(per_cell[in_c, 1:].mean()) if in_c.any() else None,
            "per_class": by_class(drops[:, 0]), "per_class_random": by_class(drops[:, 1:].mean(axis=1)),
            "per_sample": {"rows": chosen.tolist(), "drop": drops[:, 0].round(5).tolist(),
                           "random": drops[:, 1:].mean(axis=1).round(5).tolist(), "cells": counts.tolist()}}

