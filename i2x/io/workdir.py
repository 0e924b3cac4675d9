"""The analysis directory: the one place that knows its file names, reads and writes its JSON files
(strict, atomic) and looks up checkpoints by name in its store.

Layout of ``DIR`` (an ``i2x run --out``)::

    store.zarr/          the Zarr store (layout in :mod:`i2x.io.store`)
    summary.json         the analysis (i2x analyze), with the reliance verdict merged in
    reliance.json        the reliance study (i2x reliance)
    faithfulness.json    the deletion/insertion study (i2x faithfulness)
    drift.json           the drift study (i2x drift)
    benchmark.json       the attribution benchmark (i2x benchmark)
    finetune/            fine-tuning runs and finetune.json (i2x finetune)
    report.html          the report, and report/ with its PNG charts
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from i2x.errors import UserError
from i2x.io.store import Store

SUMMARY = "summary.json"
RELIANCE = "reliance.json"
FAITHFULNESS = "faithfulness.json"
DRIFT = "drift.json"
BENCHMARK = "benchmark.json"
FINETUNE_DIR = "finetune"
FINETUNE = "finetune.json"
REPORT = "report.html"
REPORT_ASSETS = "report"


def clean_json(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain and NaN/Inf made None, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: str | Path, data: Any, indent: int = 1) -> Path:
    """Write ``data`` as strict JSON, atomically: a reader (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(clean_json(data), indent=indent, allow_nan=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: str | Path, command: str) -> dict[str, Any]:
    """Read a JSON file of the analysis directory; ``command`` is the one that writes it (for the errors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path.parent}: no {path.name}; run `{command}` first")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # cut short by a crash, or edited by hand
        raise UserError(f"{path}: not valid JSON ({exc}); rerun `{command}`") from None


def optional_json(path: str | Path) -> dict[str, Any] | None:
    """A study's JSON if it ran and is readable, else None."""
    try:
        return read_json(path, "i2x")
    except UserError:
        return None


def load_summary(out: str | Path) -> dict[str, Any]:
    """Read ``DIR/summary.json`` (a UserError if the analysis has not run)."""
    return read_json(Path(out) / SUMMARY, f"i2x analyze {out}")


def save_summary(out: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``DIR/summary.json`` atomically."""
    return write_json(Path(out) / SUMMARY, summary, indent=2)


# ---- checkpoints of the store ------------------------------------------------------------------
def usable_checkpoints(store: Store) -> np.ndarray:
    """Indices of the checkpoints that are extracted and whose weights were finite."""
    ok = store.done() & store.read("finite").astype(bool)
    if not ok.any():
        raise UserError(f"{store.path}: no checkpoint is fully extracted with finite weights; rerun `i2x extract`")
    return np.flatnonzero(ok)


def checkpoint_index(store: Store, name: str) -> int:
    """Store index t of the checkpoint called ``name``; ``first`` / ``final`` are the first / last usable one."""
    usable = usable_checkpoints(store)
    if name == "first":
        return int(usable[0])
    if name == "final":
        return int(usable[-1])
    names = [c["name"] for c in store.checkpoints]
    if name not in names:
        raise UserError(f"checkpoint {name!r} is not in the store; choose first, final or one of {', '.join(names)}")
    t = names.index(name)
    if t not in usable:
        raise UserError(f"checkpoint {name}: it is not extracted or its weights hold NaN/Inf; choose another")
    return t


def describe_checkpoint(store: Store, t: int) -> dict[str, Any]:
    """Name, training step, store index and training phase of checkpoint t."""
    c = store.checkpoints[t]
    return {"index": t, "name": c["name"], "step": c.get("step"), "phase": c.get("metrics", {}).get("phase")}


def stored_methods(store: Store, methods: Sequence[str] | str | None) -> list[str]:
    """The requested CAM methods (default: all stored), each checked to be in the store."""
    chosen = store.methods if methods is None else [methods] if isinstance(methods, str) else list(methods)
    for m in chosen:
        store.cam(m)  # raises a UserError naming the stored methods
    if not chosen:
        raise UserError("--methods: give at least one CAM method")
    return chosen
