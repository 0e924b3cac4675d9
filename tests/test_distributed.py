"""Scale-out: a 2-rank torchrun extraction equals a single-process one, and a failing rank stops every rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from i2x import api
from i2x.io.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = ["-m", "i2x", "extract", "--limit", "150", "--batch-size", "32"]
#: Generous per-launch limit: a hang fails the test instead of blocking the suite.
LAUNCH_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpts")
    api.train(out=out, epochs=2, progress=False)
    return out


def _env(**extra: str) -> dict[str, str]:
    """One thread per process (as torchrun sets), collectives time out after 60 s, i2x importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", I2X_DIST_TIMEOUT="60", PYTHONPATH=str(ROOT), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S)


def _arrays(out: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(Store.location(out)), mode="r")
    names = [name for name, _ in root.arrays()] + [f"cam/{name}" for name, _ in root["cam"].arrays()]
    return {name: root[name][...] for name in names}


@pytest.fixture(scope="module")
def single(ckpt_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    proc = _run([*EXTRACT, str(ckpt_dir), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow  # ~7 Python processes importing torch, plus training: about a minute on 2 cores
def test_torchrun_two_ranks_equal_a_single_process_bit_for_bit(ckpt_dir, single, tmp_path):
    out = tmp_path / "two"
    proc = _run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                 f"--master_port={_free_port()}", *EXTRACT, str(ckpt_dir), "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    a, b = _arrays(out), _arrays(single)
    assert sorted(a) == sorted(b) == sorted(
        ["labels", "sample_index", "fingerprint", "probs", "features", "done", "finite", "cam/gradcam",
         "cam/gradcampp", "cam/layercam"])
    for name in a:
        # Every batch holds the same 32 samples in both runs, so the arithmetic is identical: exact equality.
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert a["probs"].shape == (2, 150, 10) and np.all(a["probs"].sum(axis=2) > 0.999)
    assert a["done"].tolist() == [1, 1]
    assert np.abs(a["cam/gradcam"]).sum() > 0 and np.abs(a["features"]).sum() > 0
    assert Store.open(out).attrs == Store.open(single).attrs


def _launch_ranks(args: list[str], world: int = 2) -> list[subprocess.CompletedProcess]:
    """Start ``world`` ranks by hand (as a cluster scheduler would, with no torchrun agent to kill the rest)."""
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=port))
        for r in range(world)
    ]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=LAUNCH_TIMEOUT_S)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


@pytest.mark.slow
def test_a_user_error_on_one_rank_stops_every_rank(ckpt_dir, single, tmp_path):
    # The store in `single` was made with --limit 150: rank 0 refuses to reuse it for --limit 100, and
    # rank 1, waiting for the store, must stop with an error of its own rather than wait at a barrier.
    args = ["-m", "i2x", "extract", str(ckpt_dir), "--out", str(single), "--limit", "100", "--batch-size", "32"]
    rank0, rank1 = _launch_ranks(args)
    assert rank0.returncode == 2 and "different config" in rank0.stderr, rank0.stderr
    assert rank1.returncode == 2, rank1.stderr
    assert "rank(s) 0 failed while loading the data, the model and the checkpoints" in rank1.stderr, rank1.stderr
    assert "Traceback" not in rank0.stderr + rank1.stderr
    assert Store.open(single).done().all()  # the existing store is untouched


SESSION_PROBE = """
import torch, torch.distributed as td
from i2x.io.distributed import session
from i2x.errors import UserError
with session(torch.device("cpu")) as d:
    print("joined", td.is_initialized(), d.rank, d.world)
    try:
        with d.together("testing"):
            if d.rank == 1:
                raise ValueError("boom")
    except (UserError, ValueError) as exc:
        print(type(exc).__name__, exc)
    with d.together("carrying on"):
        pass
    print("failed", d.failed_ranks(d.rank == 0))
print("left", td.is_initialized())
"""


def test_together_raises_on_every_rank_and_session_leaves_the_group():
    rank0, rank1 = _launch_ranks(["-c", SESSION_PROBE])
    assert rank0.returncode == 0 and rank1.returncode == 0, rank0.stderr + rank1.stderr
    assert rank0.stdout.splitlines() == [
        "joined True 0 2",
        "UserError rank 0: stopped because rank(s) 1 failed while testing; see that rank's error",
        "failed [0]",
        "left False",
    ]
    assert rank1.stdout.splitlines() == ["joined True 1 2", "ValueError boom", "failed [0]", "left False"]
