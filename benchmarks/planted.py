"""How often the analysis finds planted answers, over seeds (a measurement, not a pass/fail test).

    .venv/bin/python benchmarks/planted.py --seeds 5

For each seed: train the small CNN on digits with a planted marker (tests/planted.py), run the
pipeline, and report (a) shortcut: whether the marker's prototype (found by its enrichment at the
marker cells) is shared for, or the top-beta prototype of, the marked class; (b) conflict: whether
the uncertain-prototype detector names the planted class pair for the pattern's prototype.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_analysis_planted import conflict_found, shortcut_found  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--kinds", default="shortcut,conflict")
    args = parser.parse_args()
    for kind in args.kinds.split(","):
        probe = shortcut_found if kind == "shortcut" else conflict_found
        hits = 0
        for seed in range(args.seeds):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                found, info = probe(Path(tmp), seed)
            hits += found
            print(f"{kind} seed {seed}: {'found' if found else 'missed'} {info} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
        print(f"{kind}: found in {hits} of {args.seeds} seeds", flush=True)


if __name__ == "__main__":
    main()
