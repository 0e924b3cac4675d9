"""Two analysis directories side by side: what the comparison page shows, computed once from both runs.

The runs are matched on the samples both hold with the same label (same ``sample_index``). Prototypes are
paired one-to-one by a similarity (see :mod:`i2x.metrics.matching`): by default the overlap of the cells they
occupy on the shared samples, which is defined for any two models; ``centroid`` uses the cosine of the
centroids in feature space, which only means something when the two runs' features are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from i2x.errors import UserError
from i2x.metrics.drift import drift_metrics
from i2x.metrics.matching import cell_overlap, cosine, match
from i2x.reporting.inputs import ReportInputs
from i2x.stages.drift.runs import DifferentData, common_samples

MATCH_RULES = ("overlap", "centroid")


@dataclass
class Run:
    """One of the two runs: its letter on the page (A, B), its name and what its sections read."""

    letter: str
    name: str
    r: ReportInputs

    def final_correct(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, correct?) of store rows ``rows`` at the run's final usable checkpoint."""
        probs = np.asarray(self.r.store.array("probs")[self.r.final])[rows]
        pred = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
        return pred, pred == self.r.read("labels")[rows]


@dataclass
class RunPair:
    """The two runs and what they share: samples, prototype pairing, predictions and final-map agreement."""

    a: Run
    b: Run
    rows_a: np.ndarray  # store rows of the shared samples in run A
    rows_b: np.ndarray  # the same samples' rows in run B
    n_label_mismatch: int
    rule: str  # how the prototypes were paired, in words
    similarity: np.ndarray  # [k_a, k_b]
    matches: list[tuple[int, int, float]]
    centroid_cosine: np.ndarray | None  # [k_a, k_b] when the features are comparable
    maps: dict[str, np.ndarray] | None  # drift metrics between the final maps of A and B, per shared sample
    notes: list[str]

    @property
    def runs(self) -> tuple[Run, Run]:
        return self.a, self.b

    def partner(self, letter: str, k: int) -> tuple[int, float] | None:
        """The prototype of the other run paired with prototype ``k`` of run ``letter``, and their similarity."""
        for i, j, s in self.matches:
            if (letter == self.a.letter and i == k) or (letter == self.b.letter and j == k):
                return (j if letter == self.a.letter else i), s
        return None


def _centroids(r: ReportInputs) -> np.ndarray:
    """The prototypes' centroids back in the layer's feature space, ``[k, d]``."""
    return r.read("analysis/centroids") @ r.read("analysis/pca_components") + r.read("analysis/pca_mean")


def _comparable_features(a: ReportInputs, b: ReportInputs) -> str | None:
    """Why the two runs' centroids cannot be compared, or None when they share a layer and its width."""
    da, db = a.read("analysis/pca_mean").shape[0], b.read("analysis/pca_mean").shape[0]
    if da != db or a.summary["layer"] != b.summary["layer"]:
        return f"the runs read different layers ({a.summary['layer']}, {da} channels vs {b.summary['layer']}, {db})"
    return None


def pair_runs(a: Run, b: Run, rule: str = "overlap", top: float = 0.2, allow_different_data: bool = False,
              trust_analysis: bool = False) -> RunPair:
    """Everything the comparison page shows about ``a`` and ``b`` (``rule``: overlap or centroid); runs whose
    shared samples are other images are refused unless ``allow_different_data``."""
    if rule not in MATCH_RULES:
        raise UserError(f"--match {rule}: use one of {', '.join(MATCH_RULES)}")
    notes: list[str] = []
    try:
        (rows_a, rows_b), info = common_samples([a.r.store, b.r.store], [a.name, b.name], allow_different_data,
                                                trust_analysis)
        mismatch = int(info["n_label_mismatch"])
        notes += [info["data_note"]] if info["data_note"] else []
    except DifferentData:
        raise
    except UserError:
        rows_a = rows_b = np.zeros(0, dtype=np.int64)
        mismatch = 0
        notes.append("The runs share no sample (same sample index and label): extract both from the same --data "
                     "and --split to compare their maps and pair their prototypes by place.")
    if a.r.summary["data"] != b.r.summary["data"] or a.r.summary["split"] != b.r.summary["split"]:
        notes.append("The runs name different data or splits; samples are matched by their index and label only.")
    why_not = _comparable_features(a.r, b.r)
    cos = cosine(_centroids(a.r), _centroids(b.r)) if why_not is None else None
    same_grid = a.r.store.grid == b.r.store.grid
    ka, kb = int(a.r.summary["k"]), int(b.r.summary["k"])
    if rule == "centroid":
        if cos is None:
            raise UserError(f"--match centroid: {why_not}; pair them with --match overlap")
        similarity, text = cos, "cosine similarity of the centroids in the layer's feature space"
    elif rows_a.size and same_grid:
        similarity = cell_overlap(a.r.read("analysis/assign")[rows_a], b.r.read("analysis/assign")[rows_b], ka, kb)
        text = (f"overlap (Jaccard index) of the grid cells each prototype occupies on the {rows_a.size} shared "
                "samples")
    elif cos is not None:
        similarity, text = cos, "cosine similarity of the centroids (the runs share no sample on one grid)"
    else:
        similarity = cosine(np.array([p["presence"] for p in a.r.summary["prototypes"]]),
                            np.array([p["presence"] for p in b.r.summary["prototypes"]]))
        text = "cosine similarity of the per-class presence profiles (no shared samples on one grid, no shared layer)"
    if cos is None:
        notes.append(f"Centroids are not compared: {why_not}.")
    maps = None
    if rows_a.size and same_grid:
        maps = drift_metrics(a.r.final_cam[rows_a], b.r.final_cam[rows_b], top)
    elif rows_a.size:
        notes.append(f"The maps are not compared: the grids differ ({a.r.store.grid} vs {b.r.store.grid}).")
    return RunPair(a, b, rows_a, rows_b, mismatch, text, similarity, match(similarity), cos, maps, notes)


def agreement(pair: RunPair) -> dict[str, Any]:
    """Final predictions on the shared samples: per sample correct in A / in B, predictions, labels."""
    pred_a, ok_a = pair.a.final_correct(pair.rows_a)
    pred_b, ok_b = pair.b.final_correct(pair.rows_b)
    return {"pred_a": pred_a, "pred_b": pred_b, "ok_a": ok_a, "ok_b": ok_b,
            "labels": pair.a.r.read("labels")[pair.rows_a], "index": pair.a.r.read("sample_index")[pair.rows_a]}
