"""An exclusive lock on an output directory, so two runs never interleave writes into one store.

A local directory is locked with ``flock``. On object storage (``--out s3://...``) the lock is an object
created with a conditional PUT (``If-None-Match: *``: the PUT fails when the key exists, which AWS S3 honours
since 2024, and moto too); it holds the host and pid of its holder and is deleted on exit. Unlike flock,
nothing releases it when the process is killed: a later run on the same host takes over a lock whose process
is gone, and from another host the error names the lock object to delete. A store that ignores the condition
(some S3 look-alikes) gives no lock: run one i2x process per ``--out`` there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from i2x.errors import UserError
from i2x.io.location import RemotePath, as_path

log = logging.getLogger(__name__)

LOCK_NAME = ".i2x.lock"


@contextmanager
def locked(out_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``out_dir/.i2x.lock`` for the duration; a second holder gets a UserError at once (so a reader such
    as ``report`` never sees a half-written analysis; it says another process is writing instead).

    The lock is an ``flock``: the kernel releases it when the process dies, so a crash never
    leaves a stale lock behind. A directory the lock created is removed again when nothing but the lock was
    written into it (a command that failed early leaves no empty folder behind).
    """
    if not enabled:
        yield
        return
    out = as_path(out_dir)
    if isinstance(out, RemotePath):
        with _remote_lock(out):
            yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    try:  # O_NOFOLLOW: a planted symlink must not make i2x truncate the file it points to
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise UserError(f"{path}: is a symlink; i2x does not write through symlinks. Remove it and rerun") from None
        raise UserError(f"{path}: cannot create the lock file ({exc.strerror}); choose a writable --out") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a hard link would make the pid overwrite another file
        os.close(fd)
        raise UserError(f"{path}: is not a plain file of its own (a hard link or a device); remove it and rerun")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{out}: another i2x process is writing to this directory (lock {out / LOCK_NAME}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        if created and os.listdir(out) == [LOCK_NAME]:  # still holding the lock: no one else is writing there
            path.unlink()
            out.rmdir()
        os.close(fd)


@contextmanager
def _remote_lock(out: RemotePath) -> Iterator[None]:
    """The lock object ``out/.i2x.lock``, created only if absent (a conditional PUT), deleted at exit."""
    lock = out / LOCK_NAME
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    created = _create(lock, holder)
    if created is None:
        log.warning("%s: not locked: this storage's client (%s) cannot create an object only if it is absent, so two "
                    "i2x runs on this --out would not be stopped; run one at a time", out, out.protocol)
        yield
        return
    if not created:
        other = _holder(lock)
        if other.get("host") != holder["host"] or _alive(other.get("pid")):
            raise UserError(
                f"{out}: another i2x process is writing to this directory (lock {lock}, held by pid {other.get('pid')} on "
                f"{other.get('host')} since {other.get('since')}); wait for it to finish or choose another --out. If that "
                "run was killed, delete the lock object and rerun")
        log.warning("%s: taking over the lock of pid %s, which is no longer running", lock, other.get("pid"))
        lock.unlink(missing_ok=True)
        if not _create(lock, holder):
            raise UserError(f"{out}: another i2x process took the lock {lock} first; wait for it or choose another --out")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _create(lock: RemotePath, holder: dict) -> bool | None:
    """Write the lock object unless it exists; False when it does, None when the client cannot make the condition."""
    try:
        lock.fs.pipe_file(lock.path, json.dumps(holder).encode(), mode="create")
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):  # a client without the mode argument
        return None
    except OSError as exc:
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            return False
        raise
    return True


def _holder(lock: RemotePath) -> dict:
    try:
        record = json.loads(lock.read_bytes())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _alive(pid: object) -> bool:
    """Whether a process of this host with ``pid`` runs (True when unsure)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
