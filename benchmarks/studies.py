"""Each study's time over the extraction time of the same run, old code against new, in one run.

    python benchmarks/studies.py --old 8cdcfa3 --workdir /tmp/studies

Two runs: the demo (the small CNN on digits, 10 checkpoints) and a 28x28 two-class planted run
(``planted:marker-corner-grey``, 12 checkpoints). Each run's checkpoints are trained once (kept in
``--workdir``); then, for the old code (checked out with ``git worktree add`` at ``--old``) and this
checkout in turn, the stages run as ``i2x`` subprocesses (PYTHONPATH set to that code): extract,
analyze, reliance and report (together ``i2x run``), then ``i2x benchmark`` and ``i2x evidence`` at
their defaults (on the old code too with ``--old-studies``). Prints each stage's seconds and its ratio to the extraction of the same code on the same
run, whether the two codes' verdicts agree, and the load average (the machine may be shared: compare
ratios, not seconds). ``--studies`` limits the studies timed after the run (``--studies none`` for
only the run's stages).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
I2X = [sys.executable, "-m", "i2x.cli"]
RUNS = {"demo": ("digits", 10), "planted": ("planted:marker-corner-grey", 12)}
RUN_STAGES = ("extract", "analyze", "reliance", "report")


def _i2x(src: Path, *args: str) -> float:
    """Seconds one ``i2x`` command takes with the code at ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run([*I2X, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=src)
    return time.perf_counter() - start


def _stages(src: Path, data: str, checkpoints: Path, out: Path, studies: list[str]) -> dict[str, float]:
    """Seconds of each stage of one run (fresh analysis directory ``out``)."""
    shutil.rmtree(out, ignore_errors=True)
    seconds = {"extract": _i2x(src, "extract", str(checkpoints), "--data", data, "--out", str(out)),
               "analyze": _i2x(src, "analyze", str(out)),
               "reliance": _i2x(src, "reliance", str(out), "--trust-analysis"),
               "report": _i2x(src, "report", str(out))}
    seconds["run"] = sum(seconds[s] for s in RUN_STAGES)
    for study in studies:
        seconds[study] = _i2x(src, study, str(out), "--trust-analysis")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="commit of the old code")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/i2x-studies"))
    parser.add_argument("--runs", default="demo,planted")
    parser.add_argument("--studies", default="benchmark,evidence", help="studies timed after the run, or none")
    parser.add_argument("--old-studies", action="store_true", help="time the studies on the old code too")
    args = parser.parse_args()
    studies = [] if args.studies == "none" else args.studies.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    old = args.workdir / "old-code"
    if not old.exists():
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(old), args.old], check=True,
                       capture_output=True)
    for name in args.runs.split(","):
        data, epochs = RUNS[name]
        checkpoints = args.workdir / f"{name}-ck"
        if not checkpoints.exists():
            _i2x(HERE, "train", "--data", data, "--epochs", str(epochs), "--out", str(checkpoints))
        times = {}
        for code, src in (("old", old), ("new", HERE)):
            times[code] = _stages(src, data, checkpoints, args.workdir / f"{name}-{code}",
                                  studies if code == "new" or args.old_studies else [])
            verdict = json.loads((args.workdir / f"{name}-{code}" / "reliance.json").read_text())["verdict"]
            print(f"{name} {code}: " + ", ".join(f"{s} {t:.1f} s ({t / times[code]['extract']:.2f}x extract)"
                                                 for s, t in times[code].items()), flush=True)
            print(f"  verdict: {verdict}", flush=True)
        print(f"{name}: reliance new/old {times['new']['reliance'] / times['old']['reliance']:.2f}, run new/old "
              f"{times['new']['run'] / times['old']['run']:.2f}; load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
