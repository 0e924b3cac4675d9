"""What testing the uncertain prototypes' significance adds to the demo's analysis (goal: under 2x).

    .venv/bin/python benchmarks/significance_cost.py                 # baseline: the commit before the test
    .venv/bin/python benchmarks/significance_cost.py --repeats 5 --baseline-ref <commit>

Builds the demo's store once into WORK (the small CNN trained on digits for 10 epochs, as
`i2x demo`; only GradCAM is extracted, the one map the analysis reads), then times `analyze` on
it, each run a fresh process, interleaved: (a) the baseline code (``git archive`` of
``--baseline-ref``, which has no significance stage), (b) this checkout with the defaults
(``--null-runs 20``), (c) this checkout with ``--null-runs 0`` (standard errors only). Prints each
run's seconds inside the analyze call (imports excluded), the medians and the ratios b/a and c/a.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REF = "bc51880"  # the commit this work started from: analysis without the significance stage

TIMED = """
import json, sys, time
from i2x.stages.analyze import analyze
from i2x.stages.analyze.config import AnalyzeConfig
cfg = AnalyzeConfig(**json.loads(sys.argv[2]))
start = time.perf_counter()
result = analyze(sys.argv[1], cfg, progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "timings": result.timings}))
"""


def build_store(work: Path) -> Path:
    """The demo's checkpoints and a GradCAM store of them (built once, reused)."""
    out = work / "an"
    if (out / "store.zarr").exists():
        return out
    from i2x import api
    from i2x.stages.config import RunConfig

    if not any((work / "ck").glob("epoch_*.pt")):
        api.train(out=work / "ck", epochs=10, progress=False)
    api.extract(config=RunConfig(checkpoints=str(work / "ck"), methods=("gradcam",)), out=out, overwrite=True, progress=False)
    return out


def baseline_tree(work: Path, ref: str) -> Path:
    """The package at ``ref``, unpacked into WORK/baseline-REF."""
    dest = work / f"baseline-{ref}"
    if not (dest / "i2x").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "i2x"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def timed(code_root: Path, store: Path, config: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    done = subprocess.run([sys.executable, "-c", TIMED, str(store.resolve()), json.dumps(config)], env=env, check=True,
                          capture_output=True, text=True, cwd=code_root)  # cwd: `-c` puts it first on sys.path
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "i2x-significance-cost"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = build_store(work)
    base = baseline_tree(work, args.baseline_ref)
    print(f"store {store}; baseline {args.baseline_ref}; load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: dict[str, list[float]] = {"baseline": [], "significance": [], "standard errors only": []}
    for repeat in range(args.repeats):
        for name, root, config in (("baseline", base, {}), ("significance", ROOT, {}),
                                   ("standard errors only", ROOT, {"null_runs": 0})):
            result = timed(root, store, config)
            runs[name].append(result["seconds"])
            stage = result["timings"].get("significance")
            print(f"repeat {repeat} {name:>20}: {result['seconds']:6.2f} s"
                  + (f" (significance stage {stage:.2f} s)" if stage is not None else ""), flush=True)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    for name, value in medians.items():
        print(f"median {name:>20}: {value:6.2f} s   ratio to baseline {value / medians['baseline']:.2f}x")
    print(f"goal: significance / baseline < 2x -> {medians['significance'] / medians['baseline']:.2f}x; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
