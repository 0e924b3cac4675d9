"""The comparison page of the tiny run (tests/fixtures_pipeline.py) against itself with its prototypes renumbered by a
known permutation, so the right pairing is known; shared by the comparison and browser tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from i2x.io.store import Store
from i2x.reporting.comparison import CompareConfig, write_comparison

PERM_SEED = 3


def _renumbered(src: Path, dest: Path, perm: np.ndarray) -> Path:
    """A copy of the analysis ``src`` whose prototype k is called perm[k] (store arrays and summary alike)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("report*"))
    store = Store.open(dest, mode="a")
    inverse = np.argsort(perm)
    store.write("analysis/assign", perm[store.read("analysis/assign")].astype(store.read("analysis/assign").dtype))
    store.write("analysis/centroids", store.read("analysis/centroids")[inverse])
    summary = json.loads((dest / "summary.json").read_text())
    protos = [dict(summary["prototypes"][int(k)], id=int(perm[k])) for k in inverse]
    summary["prototypes"] = protos
    summary["uncertain"] = [dict(u, prototype=int(perm[u["prototype"]])) for u in summary["uncertain"]]
    for c in (summary.get("reliance") or {}).get("concepts") or []:   # the reliance study's concepts, renumbered too
        c["members"] = sorted(int(perm[k]) for k in c["members"])
    (dest / "summary.json").write_text(json.dumps(summary))
    return dest


@pytest.fixture(scope="module")
def pair(tiny_run, tmp_path_factory):
    """(dir A, dir B = A renumbered, the permutation, the comparison page)."""
    root = tmp_path_factory.mktemp("compare")
    k = json.loads((tiny_run / "summary.json").read_text())["k"]
    perm = np.random.default_rng(PERM_SEED).permutation(k)
    b = _renumbered(tiny_run, root / "renumbered", perm)
    page = write_comparison(tiny_run, b, CompareConfig(out=str(root / "out" / "compare.html"),
                                                       names=("<b>bold</b>", "plain & simple")))
    return tiny_run, b, perm, page
