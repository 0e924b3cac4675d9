"""Local copies of files on object storage: a remote checkpoint is fetched whole once per process and the walker
(its step and weights digest), the sha256 a store records and the model load all read that copy.

Each copy is one GET through fsspec (``get_file``, streamed to a temporary folder, never held in memory) and is
named by the object's identity as the storage reports it (size, ETag, generation, modification time: whichever
the file system gives). Every :func:`fetch` asks the storage for that identity again (one metadata request, no
body): an object replaced since it was copied is fetched again, never served stale. The copies live in a folder
under the temporary directory (``TMPDIR``), removed when the process exits, and take at most ``I2X_COPIES_GB``
gigabytes (default 8; the least recently used are deleted beyond it, the one just fetched always kept). Local files
are never copied: the callers read them in place.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import io
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

from i2x.errors import UserError
from i2x.io.location import RemotePath, modified_time

#: Gigabytes of local disk the copies may take (default 8); beyond it the least recently used are deleted (and
#: fetched again if read again). The file just fetched is kept whatever its size.
BUDGET_ENV, DEFAULT_BUDGET_GB = "I2X_COPIES_GB", 8.0
#: What names an object's version in fsspec's ``info`` (S3: ETag, LastModified; GCS: generation, updated;
#: local and memory file systems: mtime, created), next to its size.
IDENTITY_KEYS = ("ETag", "etag", "generation", "VersionId", "md5Hash", "LastModified", "mtime", "updated", "created")


@dataclass
class _Copy:
    identity: tuple[Any, ...]
    local: Path
    size: int
    mtime: float


class FetchedFile(RemotePath):
    """A remote file read from its local copy: reads cost no request; it is still named by its URL (messages,
    records), and :attr:`local` is the copy (``torch.load`` memory-maps it, safetensors opens it)."""

    def __init__(self, source: RemotePath, local: Path, mtime: float) -> None:
        super().__init__(source.path, source.fs, "file")
        self.local, self._mtime = local, mtime

    def open(self, mode: str = "rb") -> IO[Any]:
        if mode != "rb":
            raise ValueError(f"{self}: fetched for reading only")
        return io.open(self.local, "rb")

    def read_bytes(self) -> bytes:
        return self.local.read_bytes()

    def stat(self) -> SimpleNamespace:
        return SimpleNamespace(st_size=self.local.stat().st_size, st_mtime=self._mtime)


class _Copies:
    """The copies this process holds, least recently used first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Copy] = OrderedDict()
        self.folder: Path | None = None
        self.lock = threading.Lock()
        self.count = 0

    def fetch(self, path: RemotePath) -> FetchedFile:
        info = path.fs.info(path.path)
        identity = (int(info.get("size") or 0), *(str(info.get(k)) for k in IDENTITY_KEYS if info.get(k) is not None))
        with self.lock:
            copy = self.entries.get(path.url)
            if copy is None or copy.identity != identity or not copy.local.is_file():
                self._drop(path.url)
                self._make_room(identity[0])
                copy = self._download(path, identity, modified_time(info))
                self.entries[path.url] = copy
            self.entries.move_to_end(path.url)
            return FetchedFile(path, copy.local, copy.mtime)

    def _download(self, path: RemotePath, identity: tuple[Any, ...], mtime: float) -> _Copy:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="i2x-copies-"))
        self.count += 1
        local = self.folder / f"{self.count}-{path.name}"
        partial = local.with_name(local.name + ".part")
        try:
            path.fs.get_file(path.path, str(partial))
            partial.replace(local)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise UserError(f"{path}: no space left to copy it into {self.folder}; free space there or point "
                                f"TMPDIR at a larger disk (a checkpoint on object storage is read from a local copy)"
                                ) from None
            raise
        finally:
            partial.unlink(missing_ok=True)
        return _Copy(identity, local, local.stat().st_size, mtime)

    def _drop(self, url: str) -> None:
        copy = self.entries.pop(url, None)
        if copy is not None:
            copy.local.unlink(missing_ok=True)  # an open handle or a memory map of it stays valid (POSIX)

    def _make_room(self, incoming: int) -> None:
        """Delete the least recently used copies until ``incoming`` more bytes fit in the budget (or none is left)."""
        limit = budget()
        while self.entries and sum(c.size for c in self.entries.values()) + incoming > limit:
            self._drop(next(iter(self.entries)))

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None


_COPIES = _Copies()
atexit.register(_COPIES.clear)


def fetch(path: RemotePath) -> FetchedFile:
    """The local copy of a remote file: fetched now if this process has none, or if the object changed since."""
    return path if isinstance(path, FetchedFile) else _COPIES.fetch(path)


def readable(path: Path | RemotePath) -> Path | FetchedFile:
    """A local file as it is; a remote one as its local copy."""
    return path if isinstance(path, Path) else fetch(path)


def budget() -> float:
    """The bytes of disk the copies may take, from ``I2X_COPIES_GB``."""
    text = os.environ.get(BUDGET_ENV, str(DEFAULT_BUDGET_GB))
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = -1.0
    if not gigabytes >= 0:
        raise UserError(f"{BUDGET_ENV}={text!r}: give the disk the copies of remote checkpoints may take as a "
                        "number of gigabytes (0 keeps only the one in use)")
    return gigabytes * (1 << 30)


def held() -> dict[str, Path]:
    """The copies held now, URL -> local file, least recently used first."""
    with _COPIES.lock:
        return {url: copy.local for url, copy in _COPIES.entries.items()}


def clear() -> None:
    """Delete every copy (done at exit)."""
    _COPIES.clear()


def file_sha256(path: Path | RemotePath) -> str:
    """The SHA-256 of a file's bytes, streamed (a remote file's from its local copy)."""
    digest = hashlib.sha256()
    with readable(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

