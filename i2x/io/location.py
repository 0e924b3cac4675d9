"""Where files live: a local path, or a URL on object storage (``s3://``, ``gs://``, ...) reached through fsspec.

:func:`as_path` turns what the user typed into a :class:`pathlib.Path` (a plain path, or a ``file://`` URL) or
a :class:`RemotePath`, which offers the part of the ``pathlib`` interface i2x uses (``/``, ``name``,
``is_file``, ``iterdir``, ``open``, ``read_text``, ``write_bytes``, ...), so the walker, the store and the
analysis directory treat both alike.

Credentials and endpoints come from where the storage's own client looks (for S3: ``AWS_ACCESS_KEY_ID``,
``~/.aws/credentials``, ``AWS_ENDPOINT_URL``; fsspec's ``FSSPEC_S3_ENDPOINT_URL`` and config files); i2x never
reads, passes or records them: a URL names a bucket and a key, nothing else.

What object storage guarantees, and so what i2x relies on: one object is replaced whole by one PUT (a reader
sees the old or the new object, never half of one; S3 has read-after-write consistency), there are no
directories (a "folder" exists when some key starts with it), no symlinks and no rename (so a write is one PUT,
not write-beside-then-rename), and no lock a crashed process releases (see :mod:`i2x.io.lock`). The clients keep
HTTP sessions open on an event loop; :func:`close_clients` closes those a command opened before it returns.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, Callable, Coroutine, Iterator

from i2x.errors import UserError

log = logging.getLogger(__name__)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(target: Any) -> str | None:
    """The scheme of a URL (``s3``), or None for a local path (``file://`` URLs count as local)."""
    if isinstance(target, RemotePath):
        return target.protocol
    match = _URL.match(str(target)) if isinstance(target, str) else None
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_remote(target: Any) -> bool:
    """True for a URL on another file system than the local one (``s3://bucket/run``)."""
    return url_scheme(target) is not None


def as_path(target: "str | Path | RemotePath") -> "Path | RemotePath":
    """A local :class:`Path` for a path or ``file://`` URL, a :class:`RemotePath` for any other URL."""
    if isinstance(target, (Path, RemotePath)):
        return target
    text = str(target)
    if text.lower().startswith("file://"):
        return Path(text[len("file://"):])
    return RemotePath(text) if is_remote(text) else Path(text)


def modified_time(info: dict[str, Any]) -> float:
    """When an object was last written, in seconds since the epoch, from fsspec's ``info`` (each file system
    names it its own way); 0 when it gives none."""
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("created") or 0
    if isinstance(modified, datetime):
        return modified.timestamp()
    if isinstance(modified, str):
        return datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
    return float(modified)


class RemotePath:
    """A file or "folder" (a key prefix) on an fsspec file system, with the pathlib methods i2x uses."""

    def __init__(self, url: str, fs: Any = None, kind: str | None = None) -> None:
        if fs is None:
            try:
                import fsspec
                from fsspec.asyn import sync

                fs, path = fsspec.core.url_to_fs(url, use_listings_cache=False)  # other processes write too
            except ImportError as exc:  # the scheme's client (s3fs, gcsfs) is an optional dependency
                raise UserError(f"{url}: reading this URL needs the package {exc.name or 'for its scheme'}; "
                                "install it (for s3://: pip install 'i2x[s3]')") from None
            except ValueError as exc:
                raise UserError(f"{url}: not a URL i2x can open ({exc})") from None
            opened(fs, lambda coro: sync(fs.loop, _awaited, coro, timeout=CLOSE_SECONDS))
        else:
            path = url
        self.fs = fs
        self.path = path.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        self._kind = kind  # "file" or "directory" when a listing already said so (saves a request per entry)

    # ---- names -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: "RemotePath") -> bool:
        return self.url < other.url

    def __truediv__(self, name: str) -> "RemotePath":
        return RemotePath(f"{self.path}/{str(name).strip('/')}", self.fs)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.path.rsplit("/", 1)[0], self.fs) if "/" in self.path else self

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def resolve(self) -> "RemotePath":
        return self

    # ---- queries -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        return self._kind == "file" if self._kind else bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        return self._kind == "directory" if self._kind else bool(self.fs.isdir(self.path))

    def is_symlink(self) -> bool:
        """Object storage has no symbolic links."""
        return False

    def iterdir(self) -> Iterator["RemotePath"]:
        for entry in sorted(self.fs.ls(self.path, detail=True), key=lambda e: e["name"]):
            if entry["name"].rstrip("/") != self.path:
                yield RemotePath(entry["name"], self.fs, entry.get("type"))

    def stat(self) -> SimpleNamespace:
        """Size and modification time, as ``os.stat`` names them."""
        info = self.fs.info(self.path)
        return SimpleNamespace(st_size=int(info.get("size") or 0), st_mtime=modified_time(info))

    # ---- reading and writing -----------------------------------------------------------------
    def open(self, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path, mode)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """One PUT: readers see the old object or the new one whole."""
        self.fs.pipe_file(self.path, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a prefix exists once a key under it does."""

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.fs.exists(self.path):
            return
        self.fs.rm_file(self.path)

    def remove_tree(self) -> None:
        """Delete every key under this prefix."""
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def upload(self, local: Path) -> None:
        """Copy a local folder's files under this prefix (replacing what is there)."""
        self.remove_tree()
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            (self / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())


CLOSE_SECONDS = 10.0  # the longest a client's close may wait (it only closes sockets)
#: The object storage file systems this process opened (by id), each with how to run a coroutine on the event loop
#: that holds its connections: fsspec's own for a RemotePath, zarr's for a store (:func:`i2x.io.store._zarr_store`).
_OPENED: dict[int, tuple[Any, Callable[[Coroutine[Any, Any, Any]], Any]]] = {}


def opened(fs: Any, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
    """Record a file system whose connections :func:`close_clients` closes at the end of a command."""
    _OPENED.setdefault(id(fs), (fs, run))


def close_clients() -> None:
    """Close the HTTP sessions of the object storage clients this process opened (s3fs's aiobotocore client, entered
    at its first request). Left open, the garbage collector closes them at the interpreter's exit, where aiohttp
    prints "Unclosed client session" and "Unclosed connector". A file system used again opens a new session."""
    while _OPENED:
        _, (fs, run) = _OPENED.popitem()
        client = getattr(fs, "_s3creator", None)  # what s3fs's own close_session exits; None before any request
        if client is None:
            continue
        try:
            run(client.__aexit__(None, None, None))
        except Exception as exc:  # a cleanup must not replace the command's result, or its error
            log.debug("closing the object storage client of %s failed: %s", fs, exc)


async def _awaited(coro: Coroutine[Any, Any, Any]) -> Any:
    """``coro``'s result: fsspec's ``sync`` takes a coroutine function, not a coroutine."""
    return await coro


def command_path(out_dir: Any) -> str:
    """The analysis directory as a command on the page names it, shell-quoted: as given when relative (so the command
    pastes into the shell it was run from), relative to the working directory when inside it, else its name."""
    text = str(out_dir)
    if "://" not in text and os.path.isabs(text):
        try:
            text = str(Path(text).resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            text = Path(text).name
    return shlex.quote(text)


_RESUMES = "then rerun the command (extract and run resume at the first checkpoint not finished)"
_STORAGE_CLIENTS = ("s3fs", "gcsfs", "adlfs", "fsspec", "botocore", "aiobotocore", "aiohttp")


def storage_failure(exc: BaseException) -> str | None:
    """One line for a failure of the storage itself (a full disk; a folder that turned read-only while zarr writes
    into it; object storage without credentials, out of reach, refusing access or without the bucket), or None for
    any other exception. The storage's client, or zarr's event loop, raises these deep in its own code, as
    tracebacks."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on the device{where}: free space or choose another --out, {_RESUMES}"
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    kind = type(exc).__name__
    from_client = type(exc).__module__.split(".")[0] in _STORAGE_CLIENTS or \
        any(name.split(".")[0] in _STORAGE_CLIENTS for name in frames)
    if not from_client:
        return _refused(exc) if isinstance(exc, OSError) else None
    message = (str(exc).strip().splitlines() or [kind])[0][:200]
    if kind == "NoCredentialsError":
        return ("object storage: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE, ~/.aws/credentials) for the account that holds the bucket")
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError"):
        from urllib.parse import urlsplit

        endpoint = urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url", "")))
        where = f" {endpoint.scheme}://{endpoint.netloc}" if endpoint.netloc else ""
        return (f"object storage: cannot connect to the endpoint{where}; check AWS_ENDPOINT_URL (or the storage's "
                "endpoint setting) and the network")
    if isinstance(exc, FileNotFoundError) and "bucket" in message.lower():
        return f"object storage: {message}; create the bucket or fix the URL"
    if isinstance(exc, PermissionError) or kind == "ClientError":
        return (f"object storage refused the request ({message}); check the credentials and the bucket's "
                "permissions")
    return None


def _refused(exc: OSError) -> str | None:
    """One line for a local file the system refused (no permission, a read-only file system), naming its folder (a
    writer's temporary file is named beside the file it replaces); None for any other OSError."""
    import errno

    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    folder = os.path.dirname(os.fsdecode(exc.filename)) if exc.filename else None
    where = f"{folder}: " if folder else ""
    if exc.errno == errno.EROFS:
        return f"{where}the file system is read-only; choose another --out (or make it writable), {_RESUMES}"
    return (f"{where}permission denied; make {'it' if folder else 'the output directory'} writable for this user "
            f"(or choose another --out), {_RESUMES}")
