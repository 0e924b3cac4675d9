"""torch.distributed glue for ``torchrun``: which rank this process is, and failing together.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`session` joins the process group
(gloo on CPU, nccl on CUDA) for the duration of a block and destroys it at exit; without it,
everything is a single process with rank 0 of 1.

A rank that fails must not leave the others waiting at the next collective: work between two
synchronisation points runs inside :meth:`Dist.together`, whose exit is a vote, so an error on one
rank raises on every rank. Collectives also time out after ``I2X_DIST_TIMEOUT`` seconds (default
1800), the backstop for a rank that dies without voting (killed, out of memory).

Across nodes, :func:`torchrun_command` writes the launch line a cluster script runs on every node
(``i2x launch``; ``docs/slurm.sbatch``): c10d rendezvous at the first node, so node ranks are assigned by
torchrun and the same line serves every node; the store must be where every node can write (``s3://...``
or a shared file system).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from i2x.errors import UserError
from i2x.settings import option, validate

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


def _check_endpoint(value: str | None) -> None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9._\[\]:-]+:\d{1,5}", value):
        raise ValueError("give HOST:PORT, e.g. node001:29500")


@dataclass
class LaunchConfig:
    """Settings of ``i2x launch``: the shape of a torchrun job across nodes."""

    nnodes: int = option(1, "nodes (machines) of the job", low=1)
    nproc_per_node: int = option(1, "processes per node: one per GPU, or per core on CPU", low=1)
    rdzv_endpoint: str | None = option(None, "HOST:PORT of the rendezvous, on the first node, reachable from every "
                                       "node (needed with --nnodes above 1)", metavar="HOST:PORT", check=_check_endpoint)
    rdzv_id: str = option("i2x", "the job id every node gives, e.g. $SLURM_JOB_ID", metavar="ID")


def torchrun_command(config: LaunchConfig, argv: Sequence[str]) -> list[str]:
    """The torchrun command line that runs ``i2x <argv>`` (an ``extract``) as ``nnodes * nproc_per_node`` ranks."""
    validate(config)
    argv = list(argv)
    if not argv or argv[0] != "extract":
        raise UserError("i2x launch: give the extraction after the options (i2x launch --nnodes 2 ... -- extract "
                        "CKPT_DIR --out DIR ...); only `i2x extract` runs across processes, the later stages run on one node")
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        raise UserError("i2x launch: the extraction needs --out, on storage every node writes to (s3://... or a "
                        "shared file system)")
    if config.nnodes == 1 and config.rdzv_endpoint is None:
        shape = ["--standalone", f"--nproc-per-node={config.nproc_per_node}"]
    elif config.rdzv_endpoint is None:
        raise UserError(f"--nnodes {config.nnodes}: give --rdzv-endpoint HOST:PORT (the first node), which every node "
                        "must reach")
    else:
        shape = [f"--nnodes={config.nnodes}", f"--nproc-per-node={config.nproc_per_node}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={config.rdzv_endpoint}", f"--rdzv-id={config.rdzv_id}"]
    return ["torchrun", *shape, "-m", "i2x", *argv]
