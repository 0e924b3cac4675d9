"""An exclusive lock on an output directory, so two runs never interleave writes into one store."""

from __future__ import annotations

import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from i2x.errors import UserError

LOCK_NAME = ".i2x.lock"


@contextmanager
def locked(out_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``out_dir/.i2x.lock`` for the duration; a second holder gets a UserError at once (so a reader such
    as ``report`` never sees a half-written analysis; it says another process is writing instead).

    The lock is an ``flock``: the kernel releases it when the process dies, so a crash never
    leaves a stale lock behind.
    """
    if not enabled:
        yield
        return
    out = Path(out_dir)
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
        os.close(fd)
