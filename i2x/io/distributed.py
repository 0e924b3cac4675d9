"""torch.distributed glue for ``torchrun``: which rank this process is, and failing together.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`session` joins the process group
(gloo on CPU, nccl on CUDA) for the duration of a block and destroys it at exit; without it,
everything is a single process with rank 0 of 1.

A rank that fails must not leave the others waiting at the next collective: work between two
synchronisation points runs inside :meth:`Dist.together`, whose exit is a vote, so an error on one
rank raises on every rank. Collectives also time out after ``I2X_DIST_TIMEOUT`` seconds (default
1800), the backstop for a rank that dies without voting (killed, out of memory).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from i2x.errors import UserError

TIMEOUT_ENV = "I2X_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Dist:
    """The rank of this process among ``world`` processes (and the device collectives run on)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def failed_ranks(self, failed: bool) -> list[int]:
        """Every rank says whether it failed; returns the ranks that did (a collective: all ranks must call it)."""
        if self.world == 1:
            return [0] if failed else []
        flags = torch.zeros(self.world, dtype=torch.int32, device=self.device)
        flags[self.rank] = int(failed)
        dist.all_reduce(flags)
        return torch.nonzero(flags).flatten().tolist()

    @contextmanager
    def together(self, what: str) -> Iterator[None]:
        """Run a block on every rank and vote at its end: if it raised on any rank, it raises on all.

        The failing rank re-raises its own error; the others raise a UserError naming that rank.
        The vote is a synchronisation point, so it also serves as a barrier.
        """
        try:
            yield
        except BaseException:
            self.failed_ranks(True)
            raise
        failed = self.failed_ranks(False)
        if failed:
            raise UserError(f"rank {self.rank}: stopped because rank(s) {', '.join(map(str, failed))} failed "
                            f"while {what}; see that rank's error")


def _timeout() -> timedelta:
    """The collective timeout from ``I2X_DIST_TIMEOUT`` (seconds)."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise UserError(f"{TIMEOUT_ENV}={text!r}: give the collective timeout as a positive number of seconds")
    return timedelta(seconds=seconds)


@contextmanager
def session(device: torch.device) -> Iterator[Dist]:
    """Join the process group torchrun set up (if any) for the block, and destroy it at exit.

    A group that already exists (the caller made it) is used and left alone.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Dist()
        return
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_timeout(),
                                device_id=device if device.type == "cuda" else None)
    try:
        yield Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)
    finally:
        if created:
            dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun with CUDA, each rank takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(torch.cuda.device_count(), 1))
    return device
