"""Each study's time over the extraction time of the same run, old code against new, in one run.

    python benchmarks/studies.py --old dbe681c --workdir /tmp/studies [--runs demo,planted] [--studies none]
                                 [--demo-wall]

Two runs: the demo (the small CNN on digits, 10 checkpoints) and a 28x28 two-class planted run with a shortcut the
model uses (``planted:L-carriers``, the small CNN with 12 snapshots over 60 steps, steps 0-5, 8, 12, 18, 27, 40, 60:
:func:`i2x.planted.localisation.train_with_snapshots`, so reliance traces its onset too). Each run's checkpoints are
trained once (kept in ``--workdir``). Then, for the old code (checked out with ``git worktree add`` at ``--old``)
and this checkout in turn, one Python process per code version (PYTHONPATH set to that code) imports the CLI once
and times, in process, each command as ``i2x.cli.main`` runs it: extract, analyze, reliance and report (together
``i2x run``), then ``i2x benchmark`` and ``i2x evidence`` at their defaults. Start-up (imports) is paid once before
the clock starts, so the ratios are the stages' own; ``--demo-wall`` also times ``i2x demo --force`` as a user's
shell sees it (imports and training included). Prints each stage's seconds and its ratio to the extraction of the
same code on the same run, whether the two codes' verdicts and concept tables agree, and the load average (the
machine may be shared: compare ratios, not seconds)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
RUNS = {"demo": "digits", "planted": "planted:L-carriers"}
RUN_STAGES = ("extract", "analyze", "reliance", "report")
VOLATILE = {"seconds", "timings", "tests_run", "config"}  # what may differ between two codes' equal results


def _timed_stages(data: str, checkpoints: str, out: str, studies: list[str]) -> dict[str, float]:
    """In this process: seconds of each ``i2x`` command of one run (a fresh analysis directory ``out``)."""
    import shutil

    from i2x.cli import build_parser, main as i2x

    build_parser()  # imports every command's modules (torch included) before any clock starts
    shutil.rmtree(out, ignore_errors=True)
    commands = {"extract": ["extract", checkpoints, "--data", data, "--out", out],
                "analyze": ["analyze", out], "reliance": ["reliance", out, "--trust-analysis"],
                "report": ["report", out]}
    commands.update({study: [study, out, "--trust-analysis"] for study in studies})
    seconds = {}
    for stage, argv in commands.items():
        start = time.perf_counter()
        code = i2x(argv)
        seconds[stage] = time.perf_counter() - start
        if code:
            raise SystemExit(f"i2x {' '.join(argv)} exited {code}")
    return seconds


def _child(src: Path, data: str, checkpoints: Path, out: Path, studies: list[str]) -> dict[str, float]:
    """Run :func:`_timed_stages` in a Python process that imports the code at ``src``."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from studies import _timed_stages; "
            "print(json.dumps(_timed_stages(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])))")
    done = subprocess.run([sys.executable, "-c", code, str(HERE / "benchmarks"), data, str(checkpoints), str(out),
                           *studies], env={**os.environ, "PYTHONPATH": str(src)}, cwd=src, check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seconds = json.loads(done.stdout.strip().splitlines()[-1])
    seconds["run"] = sum(seconds[s] for s in RUN_STAGES)
    return seconds


def _stable(value: Any) -> Any:
    """``value`` without the entries that may differ between two codes' equal results (timings, settings)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _agreement(old: Path, new: Path) -> str:
    """Whether two analysis directories' reliance results agree: verdict, ranking, concept table, footprints."""
    a, b = (json.loads((d / "reliance.json").read_text()) for d in (old, new))
    parts = []
    for key in ("verdict", "ranking", "concepts", "prototypes", "localisation"):
        if key in a and key in b:
            parts.append(f"{key} {'equal' if _stable(a[key]) == _stable(b[key]) else 'DIFFER'}")
    return ", ".join(parts)


def _demo_wall(src: Path, workdir: Path) -> float:
    """Seconds of ``i2x demo --force`` as a shell runs it (start-up, training and the whole run)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "i2x.cli", "demo", "--force",
                    "--checkpoints-dir", str(workdir / "demo-wall-ck"), "--out", str(workdir / "demo-wall")],
                   env={**os.environ, "PYTHONPATH": str(src)}, cwd=src, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _train(name: str, checkpoints: Path) -> None:
    """The run's checkpoints, with this checkout's code: ``i2x train`` for the demo, snapshots for the planted run."""
    if name == "demo":
        subprocess.run([sys.executable, "-m", "i2x.cli", "train", "--data", RUNS[name], "--epochs", "10",
                        "--out", str(checkpoints)], cwd=HERE, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return
    from i2x.planted import PLANTED, localisation

    localisation.train_with_snapshots(PLANTED["L-carriers"](), checkpoints, steps=60, seed=0, dense=5, lr=3e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="commit of the old code")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/i2x-studies"))
    parser.add_argument("--runs", default="demo,planted")
    parser.add_argument("--studies", default="benchmark,evidence", help="studies timed after the run, or none")
    parser.add_argument("--demo-wall", action="store_true", help="time `i2x demo --force` too, for each code")
    args = parser.parse_args()
    studies = [] if args.studies == "none" else args.studies.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    old = args.workdir / "old-code"
    if not old.exists():
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(old), args.old], check=True,
                       capture_output=True)
    codes = (("old", old), ("new", HERE))
    for name in args.runs.split(","):
        data, checkpoints = RUNS[name], args.workdir / f"{name}-ck"
        if not checkpoints.exists():
            _train(name, checkpoints)
        times = {code: _child(src, data, checkpoints, args.workdir / f"{name}-{code}", studies) for code, src in codes}
        for code in times:
            print(f"{name} {code}: " + ", ".join(f"{s} {t:.1f} s ({t / times[code]['extract']:.2f}x)"
                                                 for s, t in times[code].items()), flush=True)
        print(f"{name}: reliance new/old {times['new']['reliance'] / times['old']['reliance']:.2f}, run new/old "
              f"{times['new']['run'] / times['old']['run']:.2f}; "
              f"{_agreement(args.workdir / f'{name}-old', args.workdir / f'{name}-new')}; "
              f"load average {os.getloadavg()}", flush=True)
    if args.demo_wall:
        print("i2x demo --force, wall: " + ", ".join(f"{code} {_demo_wall(src, args.workdir):.1f} s"
                                                     for code, src in codes), flush=True)


if __name__ == "__main__":
    main()
