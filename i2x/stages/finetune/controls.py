"""Control exclusions for curated fine-tuning: as many samples per class as the curated set, chosen otherwise.

* ``random``: drawn uniformly from the analysed training samples of each class the curated set
  touches, a new draw per fine-tuning seed (numpy's generator seeded with it), so the spread over
  seeds includes the spread over random selections.
* ``cartography``: per class, the analysed samples with the highest variability of the true-class
  probability over the checkpoints (dataset cartography's "ambiguous" axis), ties to the lower
  confidence, then the lower index.

Both answer "would any exclusion of that size from those classes do as well?". Candidates are the
analysed samples (the store's ``sample_index``), the same pool the curation rule picks from.
"""

from __future__ import annotations

import numpy as np

from i2x.errors import UserError
from i2x.io.store import Store

#: Exclusion sets that are controls for the curated one (training-set names in a strategy).
CONTROLS = ("random", "cartography")


def per_class_counts(ids: np.ndarray, train_labels: np.ndarray) -> dict[int, int]:
    """{class: number of ``ids`` of that class}, classes with none left out."""
    counts = np.bincount(train_labels[ids], minlength=int(train_labels.max(initial=-1)) + 1)
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts)}


def random_exclusion(counts: dict[int, int], sample_index: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sorted training ids: ``counts[c]`` analysed samples of class c drawn at random without replacement."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(_pool(c, n, sample_index, labels), size=n, replace=False) for c, n in sorted(counts.items())]
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def cartography_exclusion(counts: dict[int, int], sample_index: np.ndarray, labels: np.ndarray,
                          variability: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Sorted training ids: per class c the ``counts[c]`` most ambiguous analysed samples (highest variability)."""
    chosen = []
    for c, n in sorted(counts.items()):
        rows = np.flatnonzero(labels == c)
        _pool(c, n, sample_index, labels)
        order = np.lexsort((sample_index[rows], confidence[rows], -variability[rows]))
        chosen.append(sample_index[rows[order[:n]]])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def control_exclusions(store: Store, curated_ids: np.ndarray, train_labels: np.ndarray,
                       wanted: set[str] | frozenset[str], seeds: list[int]) -> dict[str, dict[int, np.ndarray]]:
    """{control name: {fine-tuning seed: its excluded training ids}} for the ``wanted`` controls, matched to
    ``curated_ids`` per class (the cartography set is the same for every seed)."""
    if not wanted:
        return {}
    counts = per_class_counts(curated_ids, train_labels)
    sample_index, labels = store.read("sample_index"), store.read("labels")
    out: dict[str, dict[int, np.ndarray]] = {}
    try:
        if "random" in wanted:
            out["random"] = {seed: random_exclusion(counts, sample_index, labels, seed) for seed in seeds}
        if "cartography" in wanted:
            ids = cartography_exclusion(counts, sample_index, labels, store.read("analysis/variability"),
                                        store.read("analysis/confidence"))
            out["cartography"] = {seed: ids for seed in seeds}
        return out
    except ValueError as err:
        raise UserError(f"{store.path}: cannot match the curated set for a control ({err}); analyse more training "
                        "samples (a larger --limit) or drop the random/cartography strategies") from None


def _pool(c: int, n: int, sample_index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The analysed training ids of class c; a ValueError when fewer than ``n``."""
    pool = sample_index[labels == c]
    if pool.size < n:
        raise ValueError(f"class {c}: {n} to exclude but only {pool.size} analysed samples")
    return pool


__all__ = ["CONTROLS", "per_class_counts", "random_exclusion", "cartography_exclusion", "control_exclusions"]
