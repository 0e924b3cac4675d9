"""Does curation help? The seven-row fine-tuning study on a weak digits model that still confuses pairs.

    python benchmarks/curation_study.py --seeds 10          # about 1 minute on a shared 2-core machine

The demo model reaches 99% on digits, so no pair is confused and the question cannot be asked. Here
the small CNN is trained on digits at 16x16 with a small learning rate (5e-5, Adam, 10 epochs): it
stops around 89% with confused pairs; the pipeline analyses its 10 checkpoints (k=8, low flip
thresholds so that a handful of steps can flag uncertain prototypes), picks the most confused pair
that has an uncertain prototype (curation rule with --min-share 0.3, so the pair's classes are not
left out whole and the controls differ from the curated set), then ``i2x finetune --study``
runs full->full, curated->curated, curated->full, full and curated (stage 1 only) and the two
controls (random-full, cartography-full) over the same seeds, and prints the table with the paired
differences against full->full and curated->full against the controls. Prints the seconds per part.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from i2x import api
from i2x.stages.analyze.config import AnalyzeConfig


def confused_uncertain_pair(summary: dict) -> tuple[tuple[int, int], bool]:
    """The most confused class pair that has an uncertain prototype, and whether one of them is significant."""
    flagged: dict[tuple[int, int], bool] = {}
    for u in summary["uncertain"]:
        key = tuple(sorted(u["classes"]))
        flagged[key] = flagged.get(key, False) or bool(u.get("significant", True))
    for p in summary["top_confused_pairs"]:
        key = tuple(sorted(p["classes"]))
        if key in flagged:
            return key, flagged[key]
    raise SystemExit(f"no uncertain prototype on a top confused pair: {summary['top_confused_pairs']}; "
                     f"uncertain pairs {sorted(flagged)}; try other --epochs/--lr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the weak start")
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of the weak start")
    parser.add_argument("--finetune-epochs", default="1,1", help="E1,E2 of the fine-tuning stages")
    parser.add_argument("--min-share", type=float, default=0.3, help="the curation rule's --min-share")
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny convolutions: one thread is as fast on a shared machine
    print(f"load average {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        t0 = time.perf_counter()
        api.train(data="digits", out=root / "ck", epochs=args.epochs, lr=args.lr, input_size=16, progress=False,
                  overwrite=True)
        t1 = time.perf_counter()
        api.run(checkpoints=str(root / "ck"), data="digits", input_size=16, methods=("gradcam",), out=root / "an",
                progress=False, overwrite=True, with_reliance=False,
                analyze_config=AnalyzeConfig(k=8, min_flips=1, noise_quantile=0.5, top_confused=10))
        t2 = time.perf_counter()
        e1, e2 = (int(e) for e in args.finetune_epochs.split(","))
        pair, significant = confused_uncertain_pair(api.load_summary(root / "an"))
        print(f"curating the pair {pair[0]}<->{pair[1]}: the most confused pair (on the analysed training split) "
              f"with an uncertain prototype ({'significant' if significant else 'none significant: --all-uncertain'})")
        api.finetune(root / "an", study=True, seeds=args.seeds, epochs=(e1, e2), min_share=args.min_share,
                     pairs=[pair], all_uncertain=not significant, progress=False)
        t3 = time.perf_counter()
    print(f"seconds: train {t1 - t0:.1f}, run (extract + analyze) {t2 - t1:.1f}, study {t3 - t2:.1f} "
          f"({args.seeds} seeds x 7 rows), total {t3 - t0:.1f}")


if __name__ == "__main__":
    main()
