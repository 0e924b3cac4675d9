"""Does curation help? The seven-row fine-tuning study on a weak digits model that still confuses pairs.

    python benchmarks/curation_study.py --seeds 10          # about 5 minutes on a busy 2-core machine

The demo model reaches 99% on digits, so no pair is confused and the question cannot be asked. Here
the small CNN is trained on digits at 16x16 with a small learning rate (1e-4, Adam, 8 epochs): it
stops around 90% with confused pairs; the pipeline analyses its 8 checkpoints (k=8, low flip
thresholds so that a handful of steps can flag uncertain prototypes), then ``i2x finetune --study``
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
from i2x.stages.analysis import AnalyzeConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the weak start")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the weak start")
    parser.add_argument("--finetune-epochs", default="1,1", help="E1,E2 of the fine-tuning stages")
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
                analyze_config=AnalyzeConfig(k=8, min_flips=1, noise_quantile=0.5))
        t2 = time.perf_counter()
        e1, e2 = (int(e) for e in args.finetune_epochs.split(","))
        api.finetune(root / "an", study=True, seeds=args.seeds, epochs=(e1, e2), progress=False)
        t3 = time.perf_counter()
    print(f"seconds: train {t1 - t0:.1f}, run (extract + analyze) {t2 - t1:.1f}, study {t3 - t2:.1f} "
          f"({args.seeds} seeds x 7 rows), total {t3 - t0:.1f}")


if __name__ == "__main__":
    main()
