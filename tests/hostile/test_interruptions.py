"""Crashes and concurrent runs: SIGKILL during extraction or analysis, then a rerun, gives exactly the
store an uninterrupted run gives; a killed analysis never leaves a summary.json that the report or
fine-tuning could read beside half-written arrays; a second process on the same output directory is
refused while the first holds it, and a killed holder does not leave the directory locked.

The runs that get killed are forked processes (a fresh interpreter would spend most of the test
importing torch). Every extraction and analysis that is compared runs in such a child with one
thread for torch and FAISS, so "bit for bit" compares like with like.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import pytest
import torch

from i2x import api
from i2x.stages.analyze.config import AnalyzeConfig
from i2x.cli import main
from i2x.stages.config import RunConfig
from i2x.errors import UserError
from i2x.io.lock import LOCK_NAME
from i2x.io.store import Store

from .digits_snapshots import train_on_digits

ROOT = Path(__file__).resolve().parents[2]
FORK = multiprocessing.get_context("fork")
CHILD_TIMEOUT = 300.0  # seconds; only reached if a child hangs
ANALYSIS = AnalyzeConfig(k=8, seed=3, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(three snapshots of a SmallCNN trained 3 epochs on 200 digits, the npz of those digits)."""
    return train_on_digits(tmp_path_factory.mktemp("trained"), n_test=60)


def run_config(trained: tuple[Path, Path], limit: int = 100) -> RunConfig:
    ckpts, npz = trained
    return RunConfig(checkpoints=str(ckpts), data=f"npz:{npz}", input_size=32, limit=limit, batch_size=16,
                     device="cpu")


# ---- forked children ------------------------------------------------------------------------------
def _single_threaded(work: Callable[[], object]) -> Callable[[], None]:
    def child() -> None:
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        work()
    return child


def start(work: Callable[[], object]) -> multiprocessing.Process:
    process = FORK.Process(target=_single_threaded(work), daemon=True)
    process.start()
    return process


def finish(work: Callable[[], object]) -> float:
    """Run ``work`` in a child to completion; returns its wall time (used only to spread the kill points)."""
    began = time.perf_counter()
    process = start(work)
    process.join(CHILD_TIMEOUT)
    assert process.exitcode == 0, f"child exited with {process.exitcode}"
    return time.perf_counter() - began


def kill_after(work: Callable[[], object], seconds: float) -> bool:
    """Start ``work`` in a child and SIGKILL it after ``seconds``; True if it was still running then."""
    process = start(work)
    process.join(seconds)
    running = process.is_alive()
    if running:
        os.kill(process.pid, signal.SIGKILL)
    process.join(CHILD_TIMEOUT)
    assert process.exitcode in (0, -signal.SIGKILL)
    return running


# ---- what is compared -------------------------------------------------------------------------------
def extraction(out: Path) -> dict[str, object]:
    store = Store.open(out)
    names = ["labels", "sample_index", "probs", "features", "done", "finite"] + [f"cam/{m}" for m in store.methods]
    return {"attrs": store.attrs, **{name: store.read(name) for name in names}}


def analysis(out: Path) -> dict[str, object]:
    """Every array of the analysis group, its attributes and summary.json without the timings."""
    store = Store.open(out)
    group = store.root["analysis"]
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("timings")
    return {"attrs": dict(group.attrs), "summary": summary,
            **{name: store.read(f"analysis/{name}") for name, _ in group.arrays()}}


def assert_same(got: dict[str, object], want: dict[str, object], context: str) -> None:
    assert got.keys() == want.keys(), context
    for name, value in want.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[name], value, err_msg=f"{context}: {name}")
        else:
            assert got[name] == value, f"{context}: {name}"


# ---- crash and resume ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_at_random_points_of_extraction_then_rerun_equals_an_uninterrupted_run(trained, tmp_path):
    config = run_config(trained)
    reference = tmp_path / "reference"
    seconds = finish(lambda: api.extract(config=config, out=reference, progress=False))
    want = extraction(reference)
    rng = np.random.default_rng(0)
    interrupted = 0
    for trial in range(10):
        out = tmp_path / f"run{trial}"
        extract = lambda: api.extract(config=config, out=out, progress=False)  # noqa: E731
        killed = kill_after(extract, rng.uniform(0.05, 1.0) * seconds)  # the first run dies somewhere
        interrupted += killed
        seconds *= 1.0 if killed else 0.8  # runs got faster than the reference: aim earlier
        kill_after(extract, rng.uniform(0.0, 0.6) * seconds)  # so may its resumption
        finish(extract)
        assert_same(extraction(out), want, f"trial {trial}")
        shutil.rmtree(out)
    assert interrupted >= 3, "too few kills landed while the extraction was running"


@pytest.mark.slow
def test_sigkill_at_random_points_of_analysis_then_rerun_equals_an_uninterrupted_run(trained, tmp_path):
    out = tmp_path / "an"
    finish(lambda: api.extract(config=run_config(trained), out=out, progress=False))
    analyze = lambda: api.analyze(out, ANALYSIS, progress=False)  # noqa: E731
    seconds = finish(analyze)
    want = analysis(out)
    finish(analyze)  # seeded FAISS k-means, HDBSCAN and Ridge: a second analysis is the same bit for bit
    assert_same(analysis(out), want, "a second uninterrupted analysis")
    rng = np.random.default_rng(1)
    cut_short = 0
    for trial in range(10):
        if not kill_after(analyze, rng.uniform(0.0, 1.0) * seconds):
            seconds *= 0.8  # runs got faster than the reference: aim earlier
        if (out / "summary.json").is_file():  # killed before it began clearing, or after it finished
            assert_same(analysis(out), want, f"trial {trial}: a summary beside other arrays")
        else:
            cut_short += 1
            with pytest.raises(UserError, match="no summary.json; run `i2x analyze"):
                api.report(out, progress=False, pngs=False)
        finish(analyze)
        assert_same(analysis(out), want, f"trial {trial}")
    assert cut_short >= 1, "no kill landed while the analysis was writing"


def test_a_killed_analysis_leaves_no_summary_to_read_and_a_rerun_restores_it(trained, tmp_path):
    """Deterministic version of the loop above: the child is stopped for good in the middle of the ridge
    fits (prototypes and intensity rewritten, groups and β not yet), then killed."""
    out = tmp_path / "an"
    finish(lambda: api.extract(config=run_config(trained, limit=60), out=out, progress=False))
    analyze = lambda: api.analyze(out, ANALYSIS, progress=False)  # noqa: E731
    finish(analyze)
    want = analysis(out)
    reached = FORK.Event()

    def analyze_until_the_ridge_fits() -> None:
        from i2x.analysis import RidgeMapping

        def stall(*args, **kwargs):
            reached.set()
            time.sleep(CHILD_TIMEOUT)
        RidgeMapping.fit = stall  # only in this child
        analyze()

    child = start(analyze_until_the_ridge_fits)
    assert reached.wait(CHILD_TIMEOUT)
    os.kill(child.pid, signal.SIGKILL)
    child.join(CHILD_TIMEOUT)

    assert not (out / "summary.json").exists()
    assert not Store.open(out).has("analysis/beta")  # the old analysis was cleared, the new one is half-written
    for stage in (lambda: api.report(out, progress=False, pngs=False), lambda: api.finetune(out)):
        with pytest.raises(UserError, match=f"{out}: no summary.json; run `i2x analyze {out}` first"):
            stage()
    finish(analyze)
    assert_same(analysis(out), want, "after the rerun")

    # a summary cut short (by a crash of a writer that does not rename, or by hand) is a user error too
    summary = out / "summary.json"
    summary.write_text(summary.read_text()[:100])
    with pytest.raises(UserError, match=r"summary.json: not valid JSON \(.*\); rerun `i2x analyze"):
        api.report(out, progress=False, pngs=False)


# ---- concurrent runs ----------------------------------------------------------------------------------
def wait_for_lock(out: Path, pid: int, alive: Callable[[], bool]) -> None:
    """Wait until process ``pid`` holds the directory's lock (it writes its pid into the lock file)."""
    deadline = time.time() + CHILD_TIMEOUT
    while time.time() < deadline and alive():
        lock = out / LOCK_NAME
        if lock.is_file() and lock.read_text() == str(pid):
            return
        time.sleep(0.005)
    raise AssertionError("the first process never took the lock")


def test_a_second_process_on_the_same_directory_is_refused(trained, tmp_path, capsys):
    ckpts, npz = trained
    out = tmp_path / "an"
    command = ["extract", str(ckpts), "--out", str(out), "--data", f"npz:{npz}", "--input-size", "32",
               "--batch-size", "8"]
    first = subprocess.Popen([sys.executable, "-m", "i2x", *command], env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lock(out, first.pid, lambda: first.poll() is None)
        first.send_signal(signal.SIGSTOP)  # hold it there, lock taken, while the second process tries
        assert first.poll() is None, "the first process finished before it could be held"
        message = (f"i2x: error: {out}: another i2x process is writing to this directory (lock {out / LOCK_NAME}); "
                   "wait for it to finish or choose another --out")
        for second in (command, ["analyze", str(out)]):
            assert main(second) == 2
            assert capsys.readouterr().err.strip().splitlines()[-1] == message
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=CHILD_TIMEOUT)
    assert first.returncode == 0, stderr
    assert Store.open(out).done().all()
    assert main(command) == 0 and "3 already done" in capsys.readouterr().out


def test_a_killed_holder_does_not_leave_the_directory_locked(trained, tmp_path):
    config = run_config(trained)
    out = tmp_path / "an"
    child = start(lambda: api.extract(config=config, out=out, progress=False))
    wait_for_lock(out, child.pid, child.is_alive)
    os.kill(child.pid, signal.SIGKILL)
    child.join(CHILD_TIMEOUT)

    finish(lambda: api.extract(config=config, out=out, progress=False))  # takes the lock and resumes
    assert Store.open(out).done().all()
