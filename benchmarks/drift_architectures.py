"""Semantic drift across architectures: the fine-tuning study of arXiv 2604.08513 on digits (a measurement).

    .venv/bin/python benchmarks/drift_architectures.py                 # resnet18, resnet18 (seed 1), densenet121
    .venv/bin/python benchmarks/drift_architectures.py --models torchvision:resnet18,torchvision:densenet121

Trains each architecture two-phase on the same digits (upsampled to 32x32; the first epoch with a
frozen backbone, then full fine-tuning; no downloaded weights), extracts GradCAM++, LayerCAM and
GradCAM on the same samples, and compares the runs with ``i2x drift A B ... --phase-split auto``:
the runs x methods table, the rankings, Kendall's tau and the reversals with bootstrap intervals.
The baseline measured in the same run is a second seed of the first architecture: whatever
separates two seeds of one architecture is noise, not an architecture effect. Then the same
comparison between the last two checkpoints of the full phase. Runs already trained in ``--work``
are reused. Measured on 2 shared cores at load average 10-15: 35 minutes in all (training resnet18
425-568 s each, densenet121 929 s; extraction under 70 s each); ``--seed-baseline -1 --models
torchvision:resnet18,torchvision:densenet121 --train 300`` is a quicker look.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from i2x import api
from i2x.reporting.drift_text import format_comparison
from i2x.stages.drift import DriftConfig


def _data(work: Path, n_train: int) -> str:
    """An npz of digits: ``n_train`` training images and 200 test images (seeded split)."""
    path = work / "digits.npz"
    if not path.is_file():
        digits = load_digits()
        x, y = (digits.images / 16).astype(np.float32), digits.target
        order = np.random.default_rng(0).permutation(len(y))
        train, test = order[:n_train], order[n_train:n_train + 200]
        np.savez(path, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    return f"npz:{path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="torchvision:resnet18,torchvision:densenet121")
    parser.add_argument("--seed-baseline", type=int, default=1, help="seed of the first model's second run (-1: none)")
    parser.add_argument("--train", type=int, default=600, help="training images (default 600)")
    parser.add_argument("--limit", type=int, default=300, help="analysed images of the training split (default 300)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--freeze-backbone-epochs", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "i2x-drift-architectures"),
                        help="runs, JSON and HTML go here (default: i2x-drift-architectures in the temp dir)")
    args = parser.parse_args()
    began = time.perf_counter()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = _data(work, args.train)
    models = [m for m in args.models.split(",") if m]
    runs = [(m.split(":")[-1], m, 0) for m in models]
    if args.seed_baseline >= 0:
        runs.insert(1, (f"{runs[0][0]}-seed{args.seed_baseline}", models[0], args.seed_baseline))
    dirs = []
    for name, model, seed in runs:
        ck, out = work / name / "ck", work / name / "an"
        start = time.perf_counter()
        if not (ck / f"epoch_{args.epochs}.pt").is_file():
            result = api.train(data=data, model=model, out=ck, epochs=args.epochs, seed=seed, lr=1e-3, batch_size=32,
                               freeze_backbone_epochs=args.freeze_backbone_epochs, input_size=args.input_size,
                               device="cpu", progress=False)
            accuracy = ", ".join(f"{h['test_accuracy']:.2f} ({h['phase']})" for h in result.history)
            print(f"{name}: trained in {time.perf_counter() - start:.0f} s, test accuracy per epoch {accuracy}",
                  flush=True)
        start = time.perf_counter()
        api.extract(checkpoints=str(ck), model=model, data=data, input_size=args.input_size, out=out,
                    limit=args.limit, device="cpu", progress=False)
        print(f"{name}: extracted in {time.perf_counter() - start:.0f} s", flush=True)
        dirs.append(out)
    names = [r[0] for r in runs]
    for title, cfg, stem in (
        ("phase to phase (end of the frozen-backbone phase -> final)",
         DriftConfig(phase_split="auto", bootstrap=args.bootstrap), "phase"),
        (f"checkpoint to checkpoint within the full phase (epoch_{args.epochs - 1}.pt -> final)",
         DriftConfig(from_=f"epoch_{args.epochs - 1}.pt", bootstrap=args.bootstrap), "full"),
    ):
        result = api.compare_drift(dirs, cfg, names=names, out=work / f"compare-{stem}.json")
        print(f"\n== {title} ==\n{format_comparison(result)}\npage: {result['paths']['html']}", flush=True)
    print(f"\ntotal {time.perf_counter() - began:.0f} s; load average at the end: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
