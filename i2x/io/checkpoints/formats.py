"""Reading one weight file safely: the formats i2x accepts and the refusals, before anything is unpickled.

Pickles load with ``torch.load(weights_only=True)``; a file that needs arbitrary code is refused unless the
caller passes ``trust=True`` (the CLI's ``--trust-checkpoints``); so is a plain ``pickle.dump`` file
(torch.load cannot read it; trusted, it is unpickled as it is). A file in none of those formats (random
bytes, a gzip-compressed checkpoint, a zip torch.save did not write) or a zip cut short is refused before
anything is unpickled, trusted or not, with a message that says what the file is and does not suggest
trusting it. Safetensors files load with safetensors.
"""

from __future__ import annotations

import pickle
import re
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from i2x.errors import UserError
from i2x.io.object_copies import FetchedFile, readable

#: The weight files of a Hugging Face checkpoint folder (``checkpoint-500/model.safetensors``).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
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


COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip"), b"BZh": ("bzip2", "bunzip2"), b"\xfd7zXZ\x00": ("xz", "unxz"),
              b"\x28\xb5\x2f\xfd": ("zstd", "unzstd")}


def refuse_placeholders(path: Path) -> None:
    """A clear error for the two stand-ins that are not weights at all: an empty file, a Git LFS pointer."""
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes); delete it or move it out of the checkpoint directory")
    with path.open("rb") as fh:
        if fh.read(len(LFS_POINTER)) == LFS_POINTER:
            raise UserError(f"{path}: is a Git LFS pointer, not the weights; fetch them with `git lfs pull`")


def read_payload(path: Path, trust: bool, mmap: bool = False) -> Any:
    """Load a weight file's payload safely; user-facing errors name the file and the fix."""
    path = readable(path)  # on object storage: the local copy (fetched once per process), named by its URL
    refuse_placeholders(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(source(path)), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise unreadable_safetensors(path, exc) from exc
    if check_torch_format(path, trust) == "pickle":
        return _trusted_load(path, plain=True)
    try:
        with warnings.catch_warnings():  # torch warns on stderr about pickle protocols before refusing anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return _weights_only_load(path, mmap)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and mmap and "mmap" in str(exc):
            return read_payload(path, trust, mmap=False)
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
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)}); is it truncated or corrupt?") from exc


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
        return torch.load(source(path), map_location="cpu", weights_only=True, mmap=mmap)


def unreadable_safetensors(path: Path, exc: BaseException) -> UserError:
    return UserError(f"{path}: not a readable safetensors file ({first_line(exc)}); is it truncated or corrupt?")


def check_torch_format(path: Path, trust: bool = False) -> str:
    """Name the file's format before unpickling anything: ``zip``, ``legacy`` or ``tar`` (torch.save's formats) or
    ``pickle`` (a plain ``pickle.dump``: loads only when trusted). Anything else can never load, trusted or not,
    and gets a message saying what it is: a compressed file, a zip torch.save did not write, a zip cut short."""
    with path.open("rb") as fh:
        head = fh.read(64)
        is_zip, is_tar = head.startswith(ZIP_MAGIC) and zipfile.is_zipfile(fh), _is_tar(fh)
    if head.startswith(ZIP_MAGIC):
        if not is_zip:
            raise UserError(f"{path}: not a readable PyTorch checkpoint (a zip archive without its central directory, "
                            "as when a download or copy is cut short); is it truncated or corrupt?")
        with path.open("rb") as fh, zipfile.ZipFile(fh) as archive:
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
    if LEGACY_MAGIC in head[:32] or is_tar:
        return "legacy" if LEGACY_MAGIC in head[:32] else "tar"
    if head[:1] == b"\x80":  # the PROTO opcode every pickle of protocol 2+ starts with
        if trust:
            return "pickle"
        raise UserError(f"{path}: refused to load: a plain pickle (written by pickle.dump, not torch.save); {TRUST_HINT}.")
    raise UserError(
        f"{path}: not a readable PyTorch checkpoint (no torch.save format); is it truncated or corrupt? "
        "Checkpoints are written by torch.save(model.state_dict(), path) or safetensors"
    )


def source(path: Path | FetchedFile) -> Path:
    """The local file torch.load and safetensors read (memory-mappable): a local checkpoint in place, a remote one's
    copy (:mod:`i2x.io.object_copies`)."""
    return path if isinstance(path, Path) else path.local


def _is_tar(fh: Any) -> bool:
    fh.seek(0)
    try:
        return tarfile.is_tarfile(fh)
    finally:
        fh.seek(0)


def _trusted_load(path: Path, plain: bool = False) -> Any:
    """Unpickle with arbitrary code allowed (the user said --trust-checkpoints); any failure is a UserError.
    ``plain``: a pickle.dump file, which torch.load cannot read (it expects torch.save's framing)."""
    try:
        if plain:
            with path.open("rb") as fh:
                return pickle.load(fh)
        return torch.load(source(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # the pickle may run any code, so it may raise anything
        raise UserError(
            f"{path}: could not be loaded even with --trust-checkpoints ({type(exc).__name__}: {first_line(exc)}); "
            "the classes it was pickled with may need to be importable"
        ) from exc


def _cause(exc: BaseException) -> str:
    """What went wrong in a torch.load error: torch wraps the unpickler's own message between generic
    advice and a documentation link (paragraphs split by blank lines); keep that message only."""
    parts = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
    if len(parts) >= 3 and parts[0].startswith("Weights only load failed"):
        return parts[-2].splitlines()[0][:200]
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
