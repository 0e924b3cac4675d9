"""Concepts: prototypes that are one thing seen by neighbouring grid cells.

A pattern larger than a cell (a marker or a tag across cell borders) is split over several
prototypes, one per piece, each the runner-up of the others. Two prototypes are *linked* when

* both are class-tied: their lift over chance for their dominant class is at least ``min_lift``;
* they have the same dominant class;
* they are co-present: the Jaccard index of the sets of samples holding them is at least ``min_jaccard``;
* both are fixed in place: spatial concentration at least ``min_concentration``;
* they sit on adjacent cells: some *hot cell* of one (a cell holding at least ``hot_share`` of its
  most frequent cell's count) is within ``reach`` cells (Chebyshev distance) of a hot cell of the other.

Linked pairs are merged in order of decreasing Jaccard (single linkage), but a merge is refused when the
union of the two groups' hot cells would exceed ``max_share`` of the grid: a concept is one compact thing,
not a chain of everything a class co-presents. A prototype merged with none is a concept of its own.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation


def hot_cells(cells: np.ndarray, hot_share: float = 0.5) -> np.ndarray:
    """Bool [K, h, w]: the cells holding at least ``hot_share`` of each unit's most frequent cell's count (and > 0),
    given occurrence counts ``cells`` [K, h, w]."""
    k = len(cells)
    peak = np.maximum(cells.reshape(k, -1).max(axis=1, initial=0), 1)[:, None, None]
    return (cells >= hot_share * peak) & (cells > 0)


def pieces(lead: int, candidates: list[int], cells: np.ndarray, reach: int = 1, hot_share: float = 0.5,
           max_cells: int | None = None) -> list[int]:
    """The pieces of one pattern: ``lead`` and every candidate unit reached from it through units whose hot cells
    lie within ``reach`` cells of one another (a marker split over concepts, each of which passed on its own), a
    candidate only while the union of hot cells stays within ``max_cells`` (the max-share rule of concepts).
    ``cells`` [K, h, w] are occurrence counts per unit; returns sorted ids, ``lead`` included."""
    hot = hot_cells(cells, hot_share)
    structure = np.ones((2 * reach + 1, 2 * reach + 1), dtype=bool)
    found, region = {lead}, hot[lead].copy()
    grown = True
    while grown:
        grown = False
        near = binary_dilation(region, structure=structure)
        for c in candidates:
            if c not in found and (hot[c] & near).any() and (max_cells is None
                                                             or (region | hot[c]).sum() <= max_cells):
                found.add(c)
                region |= hot[c]
                grown = True
    return sorted(found)


class ConceptGrouping:
    """Group prototypes into concepts (see the module docstring for the rule).

    Learned attributes: ``labels_`` [K] concept id per prototype (concepts numbered by their smallest
    prototype id), ``members_`` the prototype ids of each concept, ``jaccard_`` [K, K], ``adjacent_`` [K, K]
    and ``links_`` [K, K] (bool).
    """

    def __init__(self, min_jaccard: float = 0.3, min_lift: float = 0.5, min_concentration: float = 0.5,
                 hot_share: float = 0.5, reach: int = 1, max_share: float = 0.2) -> None:
        self.min_jaccard = min_jaccard
        self.min_lift = min_lift
        self.min_concentration = min_concentration
        self.max_share = max_share
        self.hot_share = hot_share
        self.reach = reach

    def fit(self, present: np.ndarray, cells: np.ndarray, dominant: np.ndarray, lift: np.ndarray,
            concentration: np.ndarray) -> "ConceptGrouping":
        """``present`` [n, K] bool (sample holds prototype), ``cells`` [K, h, w] occurrence counts, ``dominant`` [K]
        class, ``lift`` [K] lift for that class and ``concentration`` [K] (see :mod:`i2x.metrics.reliance`)."""
        present = np.asarray(present, dtype=bool)
        k = present.shape[1]
        counts = present.sum(axis=0).astype(np.float64)
        both = present.T.astype(np.float64) @ present.astype(np.float64)
        union = counts[:, None] + counts[None, :] - both
        self.jaccard_ = np.divide(both, union, out=np.zeros_like(both), where=union > 0)
        hot = hot_cells(cells, self.hot_share)
        structure = np.ones((2 * self.reach + 1, 2 * self.reach + 1), dtype=bool)
        grown = np.stack([binary_dilation(m, structure=structure) for m in hot]) if k else hot
        self.adjacent_ = (grown.reshape(k, -1).astype(np.int64) @ hot.reshape(k, -1).T.astype(np.int64)) > 0
        tied = (np.asarray(lift) >= self.min_lift) & (np.asarray(concentration) >= self.min_concentration)
        self.links_ = (tied[:, None] & tied[None, :] & (dominant[:, None] == dominant[None, :])
                       & (self.jaccard_ >= self.min_jaccard) & self.adjacent_)
        np.fill_diagonal(self.links_, False)
        parent = np.arange(k)
        region = {i: hot[i].copy() for i in range(k)}
        budget = max(1, int(round(self.max_share * cells[0].size))) if k else 1

        def root(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        pairs = np.argwhere(np.triu(self.links_))
        for a, b in pairs[np.argsort(-self.jaccard_[pairs[:, 0], pairs[:, 1]], kind="stable")]:
            ra, rb = root(a), root(b)
            if ra != rb and (region[ra] | region[rb]).sum() <= budget:
                keep, drop = min(ra, rb), max(ra, rb)
                parent[drop] = keep
                region[keep] = region[keep] | region.pop(drop)
        roots = np.array([root(i) for i in range(k)], dtype=np.int64)
        _, self.labels_ = np.unique(roots, return_inverse=True)
        self.members_ = [np.flatnonzero(self.labels_ == c).tolist() for c in range(int(self.labels_.max(initial=-1)) + 1)]
        return self
