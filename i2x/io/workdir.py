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
    .i2x-analysis.json   the marker: i2x made this directory (version, creation settings)
    .i2x.lock            the lock every writer holds (:mod:`i2x.io.lock`)

i2x writes only into directories it recognises by the marker (or empty ones), never through a
symlink (a store, or a folder in it, that is a link to another place is refused: :func:`refuse_links`),
and replaces files whole (write beside, then rename), so a crash or a full disk leaves the previous
file rather than half of a new one. Outside an analysis directory (``compare --out``, ``drift A B
--out``, ``finetune --dest``) it replaces only files and folders it wrote (:func:`refuse_foreign_file`,
:func:`refuse_foreign`).

``DIR`` may be a URL on object storage (``s3://bucket/analysis``, :mod:`i2x.io.location`): there each file is
one PUT, which replaces the object whole (no rename is needed for a reader never to see half a file), and
the report's chart folder is uploaded file by file after it was written locally.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from i2x.errors import UserError
from i2x.io.location import RemotePath, as_path
from i2x.io.lock import LOCK_NAME, locked
from i2x.io.store import Store
from i2x.settings import name_list
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
#: The mark in a page or JSON file i2x writes outside an analysis directory (:func:`written_by_i2x`).
GENERATOR = f"i2x {__version__}"


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"{path}: cannot write it ({exc.strerror}); make {path.parent} writable or write the "
                            "results elsewhere (--out)") from None
        raise
    try:
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


# ---- encodings inside the JSON files -----------------------------------------------------------
def pack_mask(mask: np.ndarray) -> str:
    """A boolean [H, W] mask as hex of its packed bits (how reliance.json stores footprints)."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes().hex()


def unpack_mask(hex_bits: str, size: tuple[int, int]) -> np.ndarray:
    """The [H, W] bool mask :func:`pack_mask` stored."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hex_bits), dtype=np.uint8))
    return bits[: size[0] * size[1]].reshape(size).astype(bool)


def assign_digest(assign: np.ndarray) -> str:
    """A short fingerprint of the prototype assignments, recorded by a study so the report can tell it is stale."""
    return hashlib.sha256(np.ascontiguousarray(assign, dtype=np.int64).tobytes()).hexdigest()[:16]


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


def refuse_foreign(out: str | Path | RemotePath, overwrite: bool = False, option: str = "--out") -> Path | RemotePath:
    """``out``, after checking i2x may write there: a new or empty folder, or one i2x made (its marker), whose
    store and sub-folders hold no symlink; a file, a folder holding files i2x did not write (unless ``overwrite``)
    or a link inside is refused before anything is written."""
    out = as_path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out}: is a file, not a directory; choose another {option}")
    if out.is_dir() and not is_analysis(out) and not overwrite:
        held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if held:
            what = "is not an i2x analysis" if option == "--out" else "was not made by i2x"
            hint = (", or pass --overwrite to write into it anyway (replacing any store.zarr, summary.json, "
                    "report.html there)") if option == "--out" else ""
            raise UserError(f"{option} {out}: the folder is not empty and {what} (it holds "
                            f"{', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); choose an empty or new "
                            f"folder{hint}")
    refuse_links(out)
    return out


def claim(out: str | Path | RemotePath, settings: dict[str, Any], overwrite: bool = False,
          option: str = "--out") -> Path | RemotePath:
    """Make ``out`` an i2x directory (an analysis, or a fine-tuning ``--dest``) after :func:`refuse_foreign`'s
    checks; then record the marker with the version and ``settings``."""
    out = refuse_foreign(out, overwrite, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {out}: cannot create it ({exc.strerror}); choose a writable {option}") from None
    if not (out / MARKER).is_file() or overwrite:
        write_json(out / MARKER, {"i2x_version": __version__, "settings": settings}, indent=2)
    return out


def refuse_links(out: str | Path | RemotePath) -> None:
    """Refuse to write into ``out`` when its store, its report charts or its fine-tuning folder is, or holds, a
    symlink: writing (or clearing a group) through it would change another store or folder outside ``out``; and
    when ``out`` or its store is read-only (refused now, rather than half-way through rewriting the store)."""
    out = as_path(out)
    if isinstance(out, RemotePath):
        return
    for folder in (out, Store.location(out)):
        if folder.is_dir() and not folder.is_symlink() and not os.access(folder, os.W_OK):
            raise UserError(f"{folder}: is read-only; make it writable, or copy the analysis to a writable place "
                            "and run i2x there")
    for top in (Store.location(out), out / FINETUNE_DIR, out / REPORT_ASSETS):
        link = _first_link(top)
        if link is not None:
            raise UserError(f"{link}: is a symlink (to {os.readlink(link)}); i2x does not write through links out of "
                            f"the analysis directory {out}. Replace the link by a copy of what it points to, or "
                            "choose another --out")


def _first_link(folder: Path) -> Path | None:
    """``folder`` if it is a symlink, else the first symlink found anywhere below it (None: no link)."""
    if folder.is_symlink():
        return folder
    pending = [folder] if folder.is_dir() else []
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    return Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
    return None


def refuse_foreign_file(path: str | Path, option: str = "--out") -> Path:
    """``path``, after checking i2x may write it: missing, or a page or JSON file i2x wrote (:data:`GENERATOR`
    near its start). A name given for i2x's output must never cost the user a file of their own."""
    path = Path(path)
    refuse_symlink(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; name the file to write (e.g. {path / 'compare.json'})")
    if path.exists() and not written_by_i2x(path):
        raise UserError(f"{option} {path}: the file exists and i2x did not write it (or an older i2x did), so i2x "
                        f"does not replace it; choose another {option}, or move the file away")
    return path


def written_by_i2x(path: Path) -> bool:
    """True if ``path`` is a page or JSON file that carries i2x's generator mark near its start (pages from
    before the mark: the report's brand)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return any(mark in head for mark in (b'"generator": "i2x', b'<meta name="generator" content="i2x',
                                         b'<div class="brand">i2x report</div>'))


def read_json(path: str | Path | RemotePath, command: str) -> dict[str, Any]:
    """Read a JSON file of the analysis directory; ``command`` is the one that writes it (for the errors)."""
    path = as_path(path)
    if not path.is_file():
        raise UserError(f"{path.parent}: no {path.name}; run `{command}` first")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # cut short by a crash, or edited by hand
        raise UserError(f"{path}: not valid JSON ({exc}); rerun `{command}`") from None


def load_summary(out: str | Path | RemotePath | AnalysisDir) -> dict[str, Any]:
    """Read ``DIR/summary.json`` (a UserError if the analysis has not run)."""
    return read_json(_path(out) / SUMMARY, f"i2x analyze {out}")


def save_summary(out: str | Path | RemotePath | AnalysisDir, summary: dict[str, Any]) -> Path | RemotePath:
    """Write ``DIR/summary.json`` atomically."""
    return write_json(_path(out) / SUMMARY, summary, indent=2)


def _path(out: str | Path | RemotePath | AnalysisDir) -> Path | RemotePath:
    return out.path if isinstance(out, AnalysisDir) else as_path(out)


# ---- the directory as one object ----------------------------------------------------------------
@dataclass(frozen=True)
class AnalysisDir:
    """An analysis directory opened once (by the API) and handed to the stages: where it is, its store, its JSON
    files and its lock, so no stage re-derives them from a bare string."""

    path: Path | RemotePath

    @classmethod
    def at(cls, out: str | Path | RemotePath | AnalysisDir) -> AnalysisDir:
        """``out`` as an :class:`AnalysisDir` (a path or URL is resolved once; an AnalysisDir is returned as is)."""
        return out if isinstance(out, AnalysisDir) else cls(as_path(out))

    def __truediv__(self, name: str) -> Path | RemotePath:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def store(self, mode: str = "r") -> Store:
        """The analysis's Zarr store (a UserError if extraction has not run); opened for writing only when neither
        it nor the directory's other output folders is or holds a link out of the directory (:func:`refuse_links`)."""
        if mode != "r":
            refuse_links(self.path)
        return Store.open(self.path, mode=mode)

    def locked(self, enabled: bool = True) -> AbstractContextManager[None]:
        """Hold the directory's lock (:func:`i2x.io.lock.locked`) while writing."""
        return locked(self.path, enabled)

    def read(self, name: str, command: str) -> dict[str, Any]:
        """The JSON file ``name``; ``command`` writes it (named in the error when it is missing)."""
        return read_json(self.path / name, command)

    def write(self, name: str, data: Any, indent: int = 1) -> Path | RemotePath:
        """Write the JSON file ``name`` strictly and atomically (:func:`write_json`)."""
        return write_json(self.path / name, data, indent=indent)

    def summary(self) -> dict[str, Any]:
        """``summary.json`` (a UserError if the analysis has not run)."""
        return load_summary(self.path)


# ---- checkpoints of the store ------------------------------------------------------------------
def usable_checkpoints(store: Store) -> np.ndarray:
    """Indices of the checkpoints that are extracted and whose weights were finite."""
    ok = store.done() & store.read("finite").astype(bool)
    if not ok.any():
        raise UserError(f"{store.path}: no checkpoint is fully extracted with finite weights; rerun `i2x extract`")
    return np.flatnonzero(ok)


#: The words every command takes for checkpoints beside their names (``mid`` is read as ``middle``).
CHECKPOINT_WORDS = ("first", "middle", "final", "all")


def checkpoint_index(store: Store, name: str) -> int:
    """Store index t of the checkpoint called ``name``; ``first`` / ``middle`` / ``final`` are the first / middle /
    last usable one."""
    usable = usable_checkpoints(store)
    if name == "first":
        return int(usable[0])
    if name in ("middle", "mid"):
        return int(usable[len(usable) // 2])
    if name == "final":
        return int(usable[-1])
    names = [c["name"] for c in store.checkpoints]
    if name not in names:
        raise UserError(f"checkpoint {name!r} is not in the store; choose first, middle, final or one of "
                        f"{', '.join(names)}")
    t = names.index(name)
    if t not in usable:
        raise UserError(f"checkpoint {name}: it is not extracted or its weights hold NaN/Inf; choose another")
    return t


def select_checkpoints(store: Store, names: Sequence[str] | str, every: int | None = None) -> list[int]:
    """Store indices of the checkpoints named (first, middle, final, all, or names; comma-separated text or a
    sequence), or of every ``every``-th usable one and the final, in training order without repeats."""
    usable = usable_checkpoints(store)
    if every is not None:
        return sorted({int(t) for t in [*usable[::every], usable[-1]]})
    chosen: set[int] = set()
    for name in name_list(names):
        if name == "all":
            chosen.update(int(t) for t in usable)
            continue
        try:
            chosen.add(checkpoint_index(store, name))
        except UserError as exc:
            raise UserError(f"--checkpoints {','.join(name_list(names))}: {exc}") from None
    if not chosen:
        raise UserError(f"--checkpoints: name at least one checkpoint ({', '.join(CHECKPOINT_WORDS)} or a name)")
    return sorted(chosen)


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
