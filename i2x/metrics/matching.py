"""Matching the prototypes of two runs: how similar each pair is, and the one-to-one pairing that is most similar.

Two similarities, both in [0, 1] or [-1, 1], shape ``[k_a, k_b]``:

* :func:`cell_overlap`: on the same samples and grid, the Jaccard index of the cells each prototype is
  assigned to (defined for any two models: it asks "do they sit on the same places of the same images");
* :func:`cosine`: cosine similarity of centroids given in one shared feature space (meaningful only when the
  two runs' features are comparable, e.g. one model fine-tuned from the other).

:func:`match` pairs them one-to-one (Hungarian assignment, most similar in total).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def cell_overlap(assign_a: np.ndarray, assign_b: np.ndarray, k_a: int, k_b: int) -> np.ndarray:
    """Jaccard index ``|A_i ∩ B_j| / |A_i ∪ B_j|`` of the (sample, cell) sets of prototype i of run A and j of B.

    ``assign_a`` and ``assign_b`` are ``[n, h, w]`` prototype ids of the same n samples on the same grid.
    """
    a, b = np.asarray(assign_a).reshape(-1), np.asarray(assign_b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"assignments of different shapes: {np.shape(assign_a)} vs {np.shape(assign_b)}")
    both = np.bincount(a.astype(np.int64) * k_b + b, minlength=k_a * k_b).reshape(k_a, k_b).astype(float)
    size_a, size_b = both.sum(axis=1), both.sum(axis=0)
    union = size_a[:, None] + size_b[None, :] - both
    return np.divide(both, union, out=np.zeros_like(both), where=union > 0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` ``[k_a, d]`` with every row of ``b`` ``[k_b, d]`` (0 for a zero row)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dots = a @ b.T
    norms = na[:, None] * nb[None, :]
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def match(similarity: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(i, j, similarity)`` maximising the total similarity, most similar first;
    with ``k_a != k_b`` the extra prototypes of the larger run stay unmatched."""
    s = np.asarray(similarity, dtype=float)
    rows, cols = linear_sum_assignment(s, maximize=True)
    pairs = [(int(i), int(j), float(s[i, j])) for i, j in zip(rows, cols)]
    return sorted(pairs, key=lambda p: (-p[2], p[0]))
