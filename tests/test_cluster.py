"""Past one machine: the torchrun line ``i2x launch`` writes (checked by torchrun's own parser), the SLURM script
of docs/ run dry with stand-ins for srun and scontrol, and two torchrun "nodes" on loopback rendezvousing and
writing disjoint chunk ranges of one store on S3 that equals a single-process store."""

from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.distributed.run import get_args_parser

from i2x import api
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.store import Store

from fixtures_s3 import make_bucket, s3, upload  # noqa: F401  (s3: pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
EXTRACTION = ["extract", "s3://bucket/run/ckpts", "--out", "s3://bucket/run/analysis", "--device", "cuda"]


def _torchrun(line: str):
    """The line split as a shell would, then parsed by torchrun's own argument parser."""
    words = shlex.split(line)
    assert words[0] == "torchrun"
    return get_args_parser().parse_args(words[1:])


def test_launch_prints_a_line_torchrun_parses_for_every_node(capsys):
    assert main(["launch", "--nnodes", "4", "--nproc-per-node", "8", "--rdzv-endpoint", "node001:29500",
                 "--rdzv-id", "4711", "--", *EXTRACTION]) == 0
    args = _torchrun(capsys.readouterr().out.strip())
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("4", "8", "c10d")
    assert (args.rdzv_endpoint, args.rdzv_id, args.module) == ("node001:29500", "4711", True)
    assert [args.training_script, *args.training_script_args] == ["i2x", *EXTRACTION]
    one = _torchrun(api.launch(["extract", "ck", "--out", "an"], nproc_per_node=2))
    assert one.standalone and one.nproc_per_node == "2" and one.training_script_args == ["extract", "ck", "--out", "an"]


def test_launch_refuses_what_cannot_run_across_nodes():
    with pytest.raises(UserError, match="--rdzv-endpoint HOST:PORT"):
        api.launch(EXTRACTION, nnodes=2)
    with pytest.raises(UserError, match="only `i2x extract` runs across processes"):
        api.launch(["analyze", "s3://bucket/run/analysis"], nnodes=2, rdzv_endpoint="node001:29500")
    with pytest.raises(UserError, match="needs --out"):
        api.launch(["extract", "ck"], nnodes=2, rdzv_endpoint="node001:29500")
    with pytest.raises(UserError, match="--rdzv-endpoint"):
        api.launch(EXTRACTION, nnodes=2, rdzv_endpoint="node001")  # no port
    with pytest.raises(UserError, match="--nnodes"):
        api.launch(EXTRACTION, nnodes=0)


def _stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_slurm_script_launches_the_torchrun_line_on_every_node(tmp_path):
    """docs/slurm.sbatch under a fake SLURM (3 nodes of 2 GPUs): srun and scontrol record what they are given."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "srun.calls"
    bin_dir.mkdir()
    _stand_in(bin_dir, "scontrol", 'printf "gpu017\\ngpu018\\ngpu019\\n"')
    _stand_in(bin_dir, "srun", f'printf "%s\\0" "$@" >> {calls}; printf "\\n" >> {calls}')
    _stand_in(bin_dir, "i2x", f'exec {shlex.quote(sys.executable)} -m i2x "$@"')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "SLURM_NNODES": "3",
           "SLURM_GPUS_PER_NODE": "a100:2", "SLURM_JOB_ID": "90210", "SLURM_JOB_NODELIST": "gpu[017-019]",
           "CKPTS": "s3://lab/run-7/ckpts", "OUT": "s3://lab/run-7/analysis"}
    done = subprocess.run(["bash", str(ROOT / "docs" / "slurm.sbatch")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    runs = [line.split("\0")[:-1] for line in calls.read_text().splitlines()]
    assert len(runs) == 4  # the extraction on every node, then analyze, reliance and report on one
    launch = runs[0]
    assert launch[:2] == ["--ntasks-per-node=1", "bash"] and launch[2] == "-c"
    args = _torchrun(launch[3])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_endpoint, args.rdzv_id) == ("3", "2", "gpu017:29500", "90210")
    assert args.training_script_args[:4] == ["extract", "s3://lab/run-7/ckpts", "--out", "s3://lab/run-7/analysis"]
    assert [r[-2:] for r in runs[1:]] == [["analyze", "s3://lab/run-7/analysis"], ["reliance", "s3://lab/run-7/analysis"],
                                          ["report", "s3://lab/run-7/analysis"]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two torchrun agents and two ranks importing torch, plus training: about a minute on 2 cores
def test_two_nodes_on_loopback_write_one_s3_store_equal_to_a_single_process(s3, tmp_path):
    ckpts = tmp_path / "ckpts"
    api.train(out=ckpts, epochs=2, progress=False)
    bucket = make_bucket(s3, "cluster")
    upload(s3, bucket, ckpts, "ckpts")
    options = ["--limit", "70", "--batch-size", "16", "--methods", "gradcam", "--device", "cpu"]
    single = tmp_path / "single"
    api.extract(checkpoints=str(ckpts), out=single, limit=70, batch_size=16, methods=("gradcam",), device="cpu",
                progress=False)
    line = api.launch(["extract", f"s3://{bucket}/ckpts", "--out", f"s3://{bucket}/an", *options], nnodes=2,
                      nproc_per_node=1, rdzv_endpoint=f"127.0.0.1:{_free_port()}", rdzv_id="loopback")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", I2X_DIST_TIMEOUT="120", PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "torch.distributed.run", *shlex.split(line)[1:]]
    nodes = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)[-4000:]
    a, b = Store.open(single), Store.open(f"s3://{bucket}/an")
    for name in ("labels", "sample_index", "probs", "features", "done", "finite", "cam/gradcam"):
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)
    assert b.done().all() and np.abs(b.read("cam/gradcam")).sum() > 0
