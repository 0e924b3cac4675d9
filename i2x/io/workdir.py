"""The analysis directory: the one place that knows its file names, reads and writes its JSON files
(strict, atomic) and looks up checkpoints by name in its store.

Layout of ``DIR`` (an ``i2x run --out``)::

    store.zarr/          the Zarr store (layout in :mod:`i2x.io.store`)
    summary.json         the analysis (i2x analyze), with the reliance verdict merged in
    reliance.json        the reliance study (i2x reliance)
    faithfulness.json    the deletion/insertion study (i2x faithfulness)
    drift.json           the drift study (i2x drift)
    evidence.json        the minimal evidence study (i2x evidence; masks in store.zarr/evidence/)
    benchmark.json       the attribution benchmark (i2x benchmark)
    finetune/            fine-tuning runs and finetune.json (i2x finetune)
    report.html          the report, and report/ with its PNG charts
    .i2x-analysis.json   the marker: this directory is an i2x analysis (version, creation settings)
    .i2x.lock            the lock every writer holds (:mod:`i2x.io.lock`)

i2x writes only into directories it recognises by the marker (or empty ones), never through a
symlink, and replaces files whole (write beside, then rename), so a crash or a full disk leaves the
previous file rather than half of a new one.

``DIR`` may be a URL on object storage (``s3://bucket/analysis``, :mod:`i2x.io.location`): there each file is
one PUT, which replaces the object whole (no rename is needed for a reader never to see half a file), and
the report's chart folder is uploaded file by file after it was written locally.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from i2x.errors import UserError
from i2x.io.location import RemotePath, as_path
from i2x.io.lock import LOCK_NAME
from i2x.io.store import Store
from i2x.version import __version__

SUMMARY = "summary.json"
RELIANCE = "reliance.json"
RELIANCE_MASKS = "reliance_masks.npz"
SHORTCUT_SAMPLES = "shortcut_samples.json"
FAITHFULNESS = "faithfulness.json"
DRIFT = "drift.json"
EVIDENCE = "evidence.json"
BENCHMARK = "benchmark.json"
FINETUNE_DIR = "finetune"
FINETUNE = "finetune.json"
REPORT = "report.html"
REPORT_ASSETS = "report"
MARKER = ".i2x-analysis.json"


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


def refuse_symlink(path: str | Path | RemotePath) -> Path | RemotePath:
    """``path``, after checking it is not a symlink: i2x never writes through one (a planted link could
    make it truncate any file the user can write)."""
    path = as_path(path)
    if path.is_symlink():
        raise UserError(f"{path}: is a symlink (to {os.readlink(path)}); i2x does not write through symlinks. "
                        "Remove the link or choose another --out")
    return path


def write_bytes(path: str | Path | RemotePath, data: bytes) -> Path | RemotePath:
    """Write ``data`` to ``path`` atomically (beside it, then renamed over it; on object storage one PUT),
    never through a symlink: a reader, a crash or a full disk never leaves half a file."""
    path = refuse_symlink(path)
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path | RemotePath, text: str) -> Path | RemotePath:
    """Write UTF-8 ``text`` atomically, never through a symlink (:func:`write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path | RemotePath, data: Any, indent: int = 1) -> Path | RemotePath:
    """Write ``data`` as strict JSON, atomically: a reader (or a crash) never sees half a file."""
    return write_text(path, json.dumps(clean_json(data), indent=indent, allow_nan=False))


def replace_dir(staged: Path, final: Path | RemotePath) -> None:
    """Swap the finished folder ``staged`` in for ``final`` (the old one is removed only after the swap; on
    object storage, which has no rename, the old files are deleted and the new ones uploaded)."""
    refuse_symlink(final)
    if isinstance(final, RemotePath):
        final.upload(staged)
        return
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


# ---- is this an i2x analysis directory? ---------------------------------------------------------
def is_analysis(out: str | Path | RemotePath) -> bool:
    """True if ``out`` holds the i2x marker, or (made before the marker existed) an i2x store."""
    out = as_path(out)
    if (out / MARKER).is_file() and not (out / MARKER).is_symlink():
        return True
    store_meta = out / "store.zarr" / "zarr.json"
    try:
        return "i2x_version" in json.loads(store_meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def claim(out: str | Path | RemotePath, settings: dict[str, Any], overwrite: bool = False) -> Path | RemotePath:
    """Make ``out`` an i2x analysis directory, refusing (before writing anything) a folder that holds files
    i2x did not write unless ``overwrite``; then record the marker with the version and ``settings``."""
    out = as_path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a directory; choose another --out")
    if out.is_dir() and not is_analysis(out) and not overwrite:
        held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if held:
            raise UserError(f"--out {out}: the folder is not empty and is not an i2x analysis (it holds "
                            f"{', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); choose an empty or new folder, "
                            "or pass --overwrite to write into it anyway (replacing any store.zarr, summary.json, "
                            "report.html there)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create it ({exc.strerror}); choose a writable --out") from None
    if not (out / MARKER).is_file() or overwrite:
        write_json(out / MARKER, {"i2x_version": __version__, "settings": settings}, indent=2)
    return out


def read_json(path: str | Path | RemotePath, command: str) -> dict[str, Any]:
    """Read a JSON file of the analysis directory; ``command`` is the one that writes it (for the errors)."""
    path = as_path(path)
    if not path.is_file():
        raise UserError(f"{path.parent}: no {path.name}; run `{command}` first")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # cut short by a crash, or edited by hand
        raise UserError(f"{path}: not valid JSON ({exc}); rerun `{command}`") from None


def load_summary(out: str | Path | RemotePath) -> dict[str, Any]:
    """Read ``DIR/summary.json`` (a UserError if the analysis has not run)."""
    return read_json(as_path(out) / SUMMARY, f"i2x analyze {out}")


def save_summary(out: str | Path | RemotePath, summary: dict[str, Any]) -> Path | RemotePath:
    """Write ``DIR/summary.json`` atomically."""
    return write_json(as_path(out) / SUMMARY, summary, indent=2)


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
