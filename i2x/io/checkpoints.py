"""The checkpoint walker: the one module that knows how training snapshots are found, ordered and loaded.

Found in a directory (not recursively):

* files ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.bin``, ``*.safetensors`` and ``*.pth.tar``;
* sub-directories in the Hugging Face shape (``checkpoint-500/``) holding ``model.safetensors``
  or ``pytorch_model.bin``.

Everything else is ignored (and listed at debug level), including the Trainer's non-weight files
(``training_args.bin``, ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state.pth``).

Payloads recognised: a raw state_dict; ``{"state_dict": ...}`` (Lightning, whose keys carry the
LightningModule's attribute name, e.g. ``model.``); ``{"model_state_dict": ...}``,
``{"model": ...}``, ``{"net": ...}``; DDP ``module.`` and ``torch.compile`` ``_orig_mod.``
prefixes are stripped.

Order (``order="step"``, the default): by the step stored inside (``global_step``, then ``step``,
then ``epoch``; HF folders: ``trainer_state.json``) when every snapshot has one of the same kind,
else by the numbers in the names in natural order (``epoch_2`` before ``epoch_10``); a name without
a number (``last.pt``) goes last (first if it says ``init``/``start``/``untrained``). Modification
time orders only when asked (``order="mtime"``): copies and checkouts reset it. The order used and
why are returned with the list (:class:`Listing`).

Duplicates: snapshots whose weights are identical (a digest of the tensors' names, dtypes, shapes and
bytes, not of the file, so Lightning's ``last.ckpt`` matches the final epoch's file) are listed once,
keeping the most informative name (one with a number, ``epoch=3-step=1200.ckpt`` over ``last.ckpt``),
unless ``keep_duplicates``. A symlink that leads out of the directory is refused.

Safety: pickles load with ``torch.load(weights_only=True)``; a file that needs arbitrary code is
refused unless the caller passes ``trust=True`` (the CLI's ``--trust-checkpoints``); so is a plain
``pickle.dump`` file (torch.load cannot read it; trusted, it is unpickled as it is). A file in none of
those formats (random bytes, a gzip-compressed checkpoint, a zip torch.save did not write) or a zip
cut short is refused before anything is unpickled, trusted or not, with a message that says what
the file is and does not suggest trusting it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import struct
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from i2x.errors import UserError

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pth.tar")
ORDERS = ("step", "name", "mtime")
# Names without a number that mean "before training" (placed first); other number-less names go last.
FIRST_WORDS = ("init", "initial", "start", "untrained", "random", "scratch", "begin")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Files that sit next to weights but hold other training state (the Hugging Face Trainer writes them).
NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"})
STEP_KEYS = ("global_step", "step", "epoch")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
STRIP_PREFIXES = ("module.", "_orig_mod.")
LFS_POINTER = b"version https://git-lfs"  # how a Git LFS pointer file starts (the weights were never fetched)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
# torch.save's legacy format opens with a pickled magic number; these are its 10 little-endian bytes.
LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# What torch's weights-only unpickler says when a pickle names a Python object to import or call (as
# opposed to random bytes or a truncated file, which it reports with the same generic prefix).
NEEDS_CODE = re.compile(
    r"GLOBAL [A-Za-z_][\w.]* was not an allowed global|whose module \S+ is blocked|Trying to call reduce|"
    r"Can only (?:create new object|build)|must be imported to load|Cannot use ``weights_only=True``"
)
TRUST_HINT = (
    "it needs arbitrary Python code to unpickle, which i2x refuses by default because loading it "
    "could run anything. If you trust where it came from, rerun with --trust-checkpoints"
)


@dataclass
class Checkpoint:
    """One training snapshot: where its weights are, and its position in training."""

    name: str
    path: Path
    step: int | None = None
    step_source: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    digest: str | None = field(default=None, repr=False)  # of the weights: quick, full once a duplicate is suspected

    def sha256(self) -> str:
        """The SHA-256 of the weight file, streamed (recorded so a store knows what it was built from)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record of this snapshot."""
        return {"name": self.name, "path": str(self.path), "step": self.step, "step_source": self.step_source}


def _natural_numbers(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _natural_key(name: str) -> tuple:
    """Natural name order: ``epoch_2`` before ``epoch_10`` (digit runs compare as numbers)."""
    return tuple((1, int(part), "") if part.isdigit() else (0, 0, part.lower()) for part in re.split(r"(\d+)", name) if part)


def _has_suffix(name: str) -> bool:
    return name.endswith(SUFFIXES)


def _weight_file(entry: Path) -> Path | None:
    """The weight file behind a directory entry, or None if it is not a snapshot."""
    if entry.is_file() and _has_suffix(entry.name) and entry.name not in NOT_WEIGHTS:
        return entry
    if entry.is_dir():
        for fname in HF_WEIGHT_FILES:
            if (entry / fname).is_file():
                return entry / fname
    return None


def _refuse_placeholders(path: Path) -> None:
    """A clear error for the two stand-ins that are not weights at all: an empty file, a Git LFS pointer."""
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes); delete it or move it out of the checkpoint directory")
    with open(path, "rb") as fh:
        if fh.read(len(LFS_POINTER)) == LFS_POINTER:
            raise UserError(f"{path}: is a Git LFS pointer, not the weights; fetch them with `git lfs pull`")


def _read_payload(path: Path, trust: bool, mmap: bool = False) -> Any:
    """Load a weight file's payload safely; user-facing errors name the file and the fix."""
    _refuse_placeholders(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _unreadable_safetensors(path, exc) from exc
    if _check_torch_format(path, trust) == "pickle":
        return _trusted_load(path, plain=True)
    try:
        with warnings.catch_warnings():  # torch warns on stderr about pickle protocols before refusing anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return _weights_only_load(path, mmap)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and mmap and "mmap" in str(exc):
            return _read_payload(path, trust, mmap=False)
        if not NEEDS_CODE.search(str(exc)):
            # torch prefixes every weights-only failure with advice to load unsafely, even for random
            # bytes; only a pickle that really names code to run deserves the --trust-checkpoints hint.
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({_cause(exc)}); is it truncated or corrupt?") from exc
        if not trust:
            named = re.search(r"GLOBAL (\S+)", str(exc))
            what = f" (it names {named.group(1)})" if named else ""
            raise UserError(f"{path}: refused to load{what}: {TRUST_HINT}.") from None
        return _trusted_load(path)
    except (EOFError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        # what the unpickler raises on garbage: random bytes or a file cut short
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); is it truncated or corrupt?") from exc


def _weights_only_load(path: Path, mmap: bool) -> Any:
    """``torch.load(weights_only=True)`` that also accepts the harmless objects training scripts save beside the
    weights (an ``argparse.Namespace`` of the run's arguments, pathlib paths, numpy scalars, dtypes and arrays):
    each is rebuilt from data by its own constructor, so no file can name code to run through them."""
    import argparse
    import pathlib

    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
    harmless = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                pathlib.PureWindowsPath, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype,
                *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}]  # numeric dtypes only, never object
    with torch.serialization.safe_globals(harmless):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _unreadable_safetensors(path: Path, exc: BaseException) -> UserError:
    return UserError(f"{path}: not a readable safetensors file ({_first_line(exc)}); is it truncated or corrupt?")


COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip"), b"BZh": ("bzip2", "bunzip2"), b"\xfd7zXZ\x00": ("xz", "unxz"),
              b"\x28\xb5\x2f\xfd": ("zstd", "unzstd")}


def _check_torch_format(path: Path, trust: bool = False) -> str:
    """Name the file's format before unpickling anything: ``zip``, ``legacy`` or ``tar`` (torch.save's formats) or
    ``pickle`` (a plain ``pickle.dump``: loads only when trusted). Anything else can never load, trusted or not,
    and gets a message saying what it is: a compressed file, a zip torch.save did not write, a zip cut short."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path}: not a readable PyTorch checkpoint (a zip archive without its central directory, "
                            "as when a download or copy is cut short); is it truncated or corrupt?")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "zip"
        shown = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
        raise UserError(f"{path}: a zip archive, but not one torch.save wrote (it holds {shown or 'nothing'}); "
                        "unzip it and point i2x at the checkpoint inside")
    for magic, (kind, tool) in COMPRESSED.items():
        if head.startswith(magic):
            raise UserError(f"{path}: a {kind}-compressed file, which torch.load does not read; decompress it "
                            f"({tool}) and point i2x at the result")
    if LEGACY_MAGIC in head[:32] or tarfile.is_tarfile(path):
        return "legacy" if LEGACY_MAGIC in head[:32] else "tar"
    if head[:1] == b"\x80":  # the PROTO opcode every pickle of protocol 2+ starts with
        if trust:
            return "pickle"
        raise UserError(f"{path}: refused to load: a plain pickle (written by pickle.dump, not torch.save); {TRUST_HINT}.")
    raise UserError(
        f"{path}: not a readable PyTorch checkpoint (no torch.save format); is it truncated or corrupt? "
        "Checkpoints are written by torch.save(model.state_dict(), path) or safetensors"
    )


def _trusted_load(path: Path, plain: bool = False) -> Any:
    """Unpickle with arbitrary code allowed (the user said --trust-checkpoints); any failure is a UserError.
    ``plain``: a pickle.dump file, which torch.load cannot read (it expects torch.save's framing)."""
    try:
        if plain:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the pickle may run any code, so it may raise anything
        raise UserError(
            f"{path}: could not be loaded even with --trust-checkpoints ({type(exc).__name__}: {_first_line(exc)}); "
            "the classes it was pickled with may need to be importable"
        ) from exc


def _cause(exc: BaseException) -> str:
    """What went wrong in a torch.load error: torch wraps the unpickler's own message between generic
    advice and a documentation link (paragraphs split by blank lines); keep that message only."""
    parts = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
    if len(parts) >= 3 and parts[0].startswith("Weights only load failed"):
        return parts[-2].splitlines()[0][:200]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _inspect(path: Path, trust: bool) -> tuple[int | None, str, dict[str, Any], str | None]:
    """The step stored inside a snapshot (global_step > step > epoch), light metadata and the weights' quick
    digest (safetensors: the full one)."""
    if path.suffix == ".safetensors":
        step, source, meta, digest = *_safetensors_step(path), {}, _safetensors_digest(path)
    else:
        payload = _read_payload(path, trust, mmap=True)
        step, source, meta = _payload_step(payload)
        digest = _payload_digest(payload, path, quick=True)
    if path.name in HF_WEIGHT_FILES:
        state_file = path.parent / "trainer_state.json"
        if state_file.is_file():
            try:
                hf_step = json.loads(state_file.read_text()).get("global_step")
                if isinstance(hf_step, int):
                    step, source = hf_step, "global_step"
            except (json.JSONDecodeError, OSError):
                pass
    return step, source, meta, digest


def _safetensors_step(path: Path) -> tuple[int | None, str]:
    from safetensors import SafetensorError, safe_open

    _refuse_placeholders(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable_safetensors(path, exc) from exc
    for key in STEP_KEYS:
        if str(meta.get(key, "")).lstrip("-").isdigit():
            return int(meta[key]), key
    return None, "unknown"


def _payload_step(payload: Any) -> tuple[int | None, str, dict[str, Any]]:
    if isinstance(payload, Mapping):
        meta = {k: payload[k] for k in ("metrics",) if k in payload and isinstance(payload[k], Mapping)}
        for key in STEP_KEYS:
            value = payload.get(key)
            if isinstance(value, (int, torch.Tensor)) and not isinstance(value, bool):
                try:
                    return int(value), key, meta
                except (TypeError, ValueError, RuntimeError):
                    continue
        return None, "unknown", meta
    return None, "unknown", {}


def weights_digest(state: Mapping[str, Any], quick: bool = False) -> str | None:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes (a prefix all keys share stripped), tensor by
    tensor: two files holding the same weights get the same digest whatever else they hold or however they
    were written. ``quick`` hashes only each tensor's first and last QUICK_BYTES (a memory-mapped file then reads
    a page per tensor): equal quick digests are candidates that the full digest confirms. None when a tensor's
    bytes cannot be read (sparse, quantised): such files are never merged."""
    keys = [k for k in state if isinstance(state[k], torch.Tensor)]
    prefix = ""
    while keys and "." in keys[0]:  # wrapper prefixes every key shares: module., _orig_mod., Lightning's model.
        head = keys[0][len(prefix):].split(".", 1)[0] + "."
        if not all(k.startswith(prefix + head) and len(k) > len(prefix + head) for k in keys):
            break
        prefix += head
    digest = hashlib.sha256()
    try:
        for key in sorted(keys):
            tensor = state[key].detach()
            digest.update(f"{key[len(prefix):]}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            data = tensor.reshape(-1).contiguous().view(torch.uint8) if not quick else _ends(tensor)
            digest.update(data.numpy().data)
    except (RuntimeError, TypeError, ValueError):
        return None
    return digest.hexdigest()


QUICK_BYTES = 64


def _ends(tensor: torch.Tensor) -> torch.Tensor:
    """The first and last QUICK_BYTES of a tensor's data, read without touching the rest."""
    flat = tensor.reshape(-1)
    n = max(1, QUICK_BYTES // max(1, tensor.element_size()))
    part = flat if flat.numel() <= 2 * n else torch.cat([flat[:n], flat[-n:]])
    return part.contiguous().view(torch.uint8)


def _payload_digest(payload: Any, path: Path, quick: bool = False) -> str | None:
    try:
        return weights_digest(_unwrap(payload, path), quick)
    except UserError:  # no state_dict inside: the load reports it, naming the file
        return None


def _full_digest(c: Checkpoint, trust: bool) -> str | None:
    """The digest of every byte of a snapshot's weights (read again, streamed from a memory map)."""
    if c.path.suffix == ".safetensors":
        return _safetensors_digest(c.path)
    return _payload_digest(_read_payload(c.path, trust, mmap=True), c.path)


def _safetensors_digest(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return weights_digest(_LazyTensors(fh))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable_safetensors(path, exc) from exc


class _LazyTensors(Mapping):
    """A safetensors file as a mapping that reads one tensor at a time (the digest streams, never holding all)."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.names = handle, list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.handle.get_tensor(key)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Listing:
    """The snapshots of a directory in training order, how that order was chosen, and the duplicates left out."""

    checkpoints: list[Checkpoint]
    order: str
    reason: str
    duplicates: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record (kept in the store)."""
        return {"order": self.order, "reason": self.reason, "duplicates": list(self.duplicates)}

    def summary(self) -> str:
        """One line for the console: the order and why, and what was skipped as a duplicate."""
        line = f"checkpoint order: {self.order} ({self.reason})"
        skipped = [d for d in self.duplicates if not d["kept"]]
        if skipped:
            pairs = ", ".join(f"{d['name']} (= {d['same_as']})" for d in skipped)
            line += f"; skipped {len(skipped)} duplicate(s) with identical weights: {pairs} (--keep-duplicates keeps them)"
        elif self.duplicates:
            line += f"; {len(self.duplicates)} duplicate(s) kept (--keep-duplicates)"
        return line


def find_checkpoints(directory: str | Path, trust: bool = False, order: str = "step",
                     keep_duplicates: bool = False) -> list[Checkpoint]:
    """List the snapshots in ``directory`` in training order (see the module docstring for the rules)."""
    return list_checkpoints(directory, trust, order, keep_duplicates).checkpoints


def list_checkpoints(directory: str | Path, trust: bool = False, order: str = "step",
                     keep_duplicates: bool = False) -> Listing:
    """The snapshots in ``directory``, duplicates resolved and ordered, with the order's reason."""
    if order not in ORDERS:
        raise UserError(f"--order {order}: choose one of {', '.join(ORDERS)}")
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"checkpoint directory {root} does not exist or is not a directory")
    found: list[Checkpoint] = []
    for entry in sorted(root.iterdir()):
        weights = _weight_file(entry)
        if weights is None:
            log.debug("ignoring %s: not a checkpoint", entry)
            continue
        _refuse_escaping_link(root, entry, weights)
        step, source, meta, digest = _inspect(weights, trust)
        found.append(Checkpoint(name=entry.name, path=weights, step=step, step_source=source, meta=meta, digest=digest))
    if not found:
        raise UserError(
            f"{root}: no checkpoints found (looked for {', '.join('*' + s for s in SUFFIXES)} files and "
            f"HF-style folders holding {' or '.join(HF_WEIGHT_FILES)})"
        )
    kept, duplicates = _resolve_duplicates(found, keep_duplicates, trust)
    ordered, used, reason = _order(kept, order)
    listing = Listing(ordered, used, reason, duplicates)
    log.info("%s", listing.summary())
    return listing


def _refuse_escaping_link(root: Path, entry: Path, weights: Path) -> None:
    """A symlink (the entry or the weight file in it) leading outside ``root`` is refused: it would analyse
    a file that is not part of this training run as one of its steps."""
    if not (entry.is_symlink() or weights.is_symlink()):
        return
    inside = root.resolve()
    target = weights.resolve()
    if target != inside and inside not in target.parents:
        raise UserError(
            f"{entry}: a symbolic link to {target}, outside the checkpoint directory {root}; copy the file into "
            "the directory if it belongs to this run, or remove the link"
        )


def _pattern(name: str) -> str:
    return re.sub(r"\d+", "#", name)


def _resolve_duplicates(found: list[Checkpoint], keep: bool, trust: bool) -> tuple[list[Checkpoint], list[dict[str, Any]]]:
    """Group snapshots by weights digest (candidates by the quick digest, confirmed by the full one, so only
    likely duplicates are read in full); in each group keep one: a real file over a link, a name with a number
    (epoch=3-step=1200.ckpt) over one without (last.ckpt), the directory's usual name pattern (epoch_1.pt over
    copy_of_1.pt), then the first in natural name order."""
    patterns: dict[str, int] = {}
    for c in found:
        patterns[_pattern(c.name)] = patterns.get(_pattern(c.name), 0) + 1

    def rank(c: Checkpoint) -> tuple:
        linked = c.path.is_symlink() or c.path.parent.is_symlink()
        return (linked, not _natural_numbers(c.name), -patterns[_pattern(c.name)], _natural_key(c.name))

    candidates: dict[str, list[Checkpoint]] = {}
    for c in found:
        if c.digest is not None:
            candidates.setdefault(c.digest, []).append(c)
    groups: dict[str, list[Checkpoint]] = {}
    for members in candidates.values():
        if len(members) > 1:
            for c in members:
                c.digest = c.digest if c.path.suffix == ".safetensors" else _full_digest(c, trust)
                if c.digest is not None:
                    groups.setdefault(c.digest, []).append(c)
    dropped: set[int] = set()
    records: list[dict[str, Any]] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        first, *others = sorted(members, key=rank)
        for c in others:
            records.append({"name": c.name, "same_as": first.name, "kept": keep})
            if not keep:
                dropped.add(id(c))
        log.warning("identical weights in %s; %s", ", ".join(c.name for c in [first, *others]),
                    "all kept (--keep-duplicates)" if keep else f"analysing {first.name} only")
    return [c for c in found if id(c) not in dropped], records


def _order(found: list[Checkpoint], order: str) -> tuple[list[Checkpoint], str, str]:
    """Sort the snapshots; returns (them, the order used, why)."""
    if order == "mtime":
        ordered = sorted(found, key=lambda c: (c.path.stat().st_mtime, _natural_key(c.name)))
        for i, c in enumerate(ordered):
            c.step, c.step_source = i, "mtime"
        return ordered, "mtime", "asked (--order mtime): by file modification time"
    if order == "step":
        sources = {c.step_source for c in found}
        if all(c.step is not None for c in found) and len(sources) == 1:
            ordered = sorted(found, key=lambda c: (c.step, _natural_key(c.name)))
            return ordered, "step", f"every checkpoint records its {next(iter(sources))} inside"
        without = [c.name for c in found if c.step is None]
        if without:
            more = f" (+{len(without) - 3} more)" if len(without) > 3 else ""
            why = f"{', '.join(without[:3])}{more} record{'s' if len(without) == 1 else ''} no step inside"
        else:
            why = f"the steps inside are of different kinds ({', '.join(sorted(sources))})"
        why += "; by the numbers in the names"
    else:
        why = "asked (--order name): by the numbers in the names"
    numbered = [c for c in found if _natural_numbers(c.name)]
    bare = [c for c in found if not _natural_numbers(c.name)]
    early = sorted((c for c in bare if c.name.lower().startswith(FIRST_WORDS)), key=lambda c: _natural_key(c.name))
    late = sorted((c for c in bare if not c.name.lower().startswith(FIRST_WORDS)), key=lambda c: _natural_key(c.name))
    ordered = early + sorted(numbered, key=lambda c: _natural_key(c.name)) + late
    for c in ordered:
        numbers = _natural_numbers(c.name)
        c.step, c.step_source = (numbers[-1], "name") if numbers else (None, "none")
    if bare and numbered:
        where = []
        if early:
            where.append(f"{', '.join(c.name for c in early)} first")
        if late:
            where.append(f"{', '.join(c.name for c in late)} last")
        why += f"; without a number: {' and '.join(where)}"
    elif bare:
        why += " (none has a number: alphabetical; --order mtime orders by modification time)"
    return ordered, "name", why


def select(
    checkpoints: list[Checkpoint],
    every: int | None = None,
    first: int | None = None,
    last: int | None = None,
    names: Iterable[str] | None = None,
) -> list[Checkpoint]:
    """Pick a subset in training order: explicit names, every N-th (the final one always kept), first/last N."""
    for option, value in (("--every", every), ("--first", first), ("--last", last)):
        if value is not None and value < 1:
            raise UserError(f"{option} {value}: must be a positive integer")
    chosen = list(checkpoints)
    if names:
        wanted = list(names)
        by_name = {c.name: c for c in chosen}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise UserError(
                f"--checkpoints: {', '.join(missing)} not found; available: {', '.join(by_name)}"
            )
        chosen = [c for c in chosen if c.name in set(wanted)]
    if every:
        kept = chosen[::every]
        if chosen and kept[-1] is not chosen[-1]:
            kept.append(chosen[-1])
        chosen = kept
    if first:
        chosen = chosen[:first]
    if last:
        chosen = chosen[-last:]
    if not chosen:
        raise UserError("the checkpoint selection (--every/--first/--last/--checkpoints) left no checkpoints")
    return chosen


def _unwrap(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state_dict inside a payload (raw, Lightning, model_state_dict, model, net, nn.Module)."""
    if isinstance(payload, nn.Module):
        return payload.state_dict()
    if not isinstance(payload, Mapping):
        raise UserError(f"{path}: holds a {type(payload).__name__}, not a state_dict or a dict containing one")
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return dict(payload)
    for key in WRAPPER_KEYS:
        if key in payload:
            return _unwrap(payload[key], path)
    raise UserError(
        f"{path}: no state_dict found; expected a raw state_dict or a dict with one of the keys "
        f"{', '.join(WRAPPER_KEYS)} (found keys: {', '.join(map(str, list(payload)[:8]))})"
    )


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP ``module.``, ``_orig_mod.``, a Lightning attribute name) to fit ``expected``."""
    while True:
        if set(state) & expected and not (set(state) - expected):
            return state
        for prefix in STRIP_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                break
        else:
            break
    if set(state) & expected:
        return state
    prefixes: dict[str, int] = {}
    for key in state:
        for exp in expected:
            if key.endswith("." + exp):
                prefixes[key[: -len(exp)]] = prefixes.get(key[: -len(exp)], 0) + 1
                break
    if prefixes:
        best = max(prefixes, key=prefixes.get)
        return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
    return state


def load_state_dict(checkpoint: Checkpoint, model: nn.Module, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read ``checkpoint`` and return its state_dict with keys matched to ``model``'s."""
    payload = _read_payload(checkpoint.path, trust)
    state = _unwrap(payload, checkpoint.path)
    expected = set(model.state_dict())
    state = _strip_prefixes(state, expected)
    convert = getattr(model, "i2x_convert_state", None)  # a model whose files may use other names (hf:PATH)
    if convert is not None and set(state) != expected:
        state = convert(state)
    return state


def load_into(model: nn.Module, checkpoint: Checkpoint, trust: bool = False) -> dict[str, torch.Tensor]:
    """Load ``checkpoint`` into ``model`` in place; a mismatch is a UserError naming the file and the keys."""
    state = load_state_dict(checkpoint, model, trust)
    check_fits(model, state, checkpoint.path)
    model.load_state_dict(state, strict=True)
    return state


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Raise a UserError listing missing/unexpected keys and shape mismatches (first few) if ``state`` does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    folder = Path(path).parent
    hint = (f" It sits beside a Hugging Face config.json: --model hf:{folder} builds the model that config describes."
            if (folder / "config.json").is_file() and Path(path).name in HF_WEIGHT_FILES else "")
    raise UserError(
        f"{path}: the checkpoint does not fit the model ({'; '.join(parts)}). "
        f"Check --model, --num-classes, --channels and the data's class count.{hint}"
    )


def is_finite(state: Mapping[str, torch.Tensor]) -> bool:
    """False when any floating-point tensor holds NaN or Inf (a diverged snapshot)."""
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
