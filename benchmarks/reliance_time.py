"""Time the reliance stage against a baseline version of i2x, on the same analysis, in the same run.

    python benchmarks/reliance_time.py analyses/digits-demo --baseline-src /path/to/old/checkout --repeats 3

Each timing runs ``i2x.stages.reliance.reliance`` in a fresh subprocess on a private copy of the
analysis directory (the study writes reliance.json and summary.json), alternating the baseline and
this checkout so that load on the machine hits both alike; prints the median wall-clock and CPU
seconds and their ratios (CPU time is the steadier figure on a shared machine; run it with
OMP_NUM_THREADS=1 so that both count the same work).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TIMER = ("import sys, time\nfrom i2x.stages.reliance import reliance\nstart, cpu = time.perf_counter(), time.process_time()\n"
         "reliance(sys.argv[1], progress=False)\nprint(time.perf_counter() - start, time.process_time() - cpu)")


def _time(src: Path, analysis: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "an"
        shutil.copytree(analysis, copy)
        env = {**os.environ, "PYTHONPATH": str(src)}
        out = subprocess.run([sys.executable, "-c", TIMER, str(copy)], env=env, check=True, capture_output=True,
                             text=True, cwd=tmp)
        wall, cpu = out.stdout.strip().splitlines()[-1].split()
        return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("analysis", type=Path, help="analysis directory (e.g. after `i2x demo`)")
    parser.add_argument("--baseline-src", type=Path, required=True, help="directory holding the baseline's i2x/")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"baseline": [], "current": []}
    for _ in range(args.repeats):
        for name, src in (("baseline", args.baseline_src), ("current", HERE)):
            times[name].append(_time(src.resolve(), args.analysis))
            print(f"{name}: {times[name][-1][0]:.2f} s wall, {times[name][-1][1]:.2f} s CPU", flush=True)
    for i, what in enumerate(("wall", "CPU")):
        base = statistics.median(t[i] for t in times["baseline"])
        cur = statistics.median(t[i] for t in times["current"])
        print(f"reliance median {what}: baseline {base:.2f} s, current {cur:.2f} s, ratio {cur / base:.2f}")


if __name__ == "__main__":
    main()
