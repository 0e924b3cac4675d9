"""Cost of the attribution benchmark, per-method runtime ratios against GradCAM, and the planted-box study.

    python benchmarks/attribution.py DIR                    # i2x benchmark on DIR (demo-sized: 3 checkpoints, 256 samples)
    python benchmarks/attribution.py --planted-seeds 5      # leakage of GradCAM and DEA vs GradCAM faithfulness

The first prints, from one ``i2x benchmark`` run, each method's ms per image over GradCAM's (both
measured in the same run, at every checkpoint) and the benchmark's wall time per image and checkpoint.
The second trains a SmallCNN per seed on a planted two-class set whose evidence sits in a known box
(3-channel uniform texture; inside a 12x12 box crossing the cell borders class 1 is redder, class 0
bluer), checks the model uses the box (accuracy with the box cue removed), and prints GradCAM's
leakage outside the box and the ROAD MoRF / combined scores of DEA and GradCAM.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from i2x import api
from i2x.io.store import Store
from i2x.stages.context import open_context
from i2x.stages.config import RunConfig
from i2x.planted.synthetic import BOX, box_images


def runtime_table(result: dict) -> None:
    """Per method: ms per image (mean over checkpoints) and its ratio to GradCAM's."""
    per = {m: statistics.mean(r[m] for r in result["runtime_ms"].values()) for m in result["methods"]}
    base = per.get("gradcam")
    print(f"{'method':>10}  ms/image  ratio to gradcam")
    for m, v in per.items():
        print(f"{m:>10}  {v:8.3f}  {v / base:8.2f}" if base else f"{m:>10}  {v:8.3f}")
    n = result["n_samples"] * len(result["checkpoints"])
    print(f"benchmark: {result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU (all threads) for "
          f"{len(result['checkpoints'])} checkpoints x {result['n_samples']} samples = "
          f"{1000 * result['seconds'] / n:.1f} ms per image and checkpoint")


def planted(seeds: int, samples: int) -> None:
    rows = []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rng = np.random.default_rng(seed)
            y_train, y_test = rng.integers(0, 2, 600), rng.integers(0, 2, 200)
            np.savez(root / "d.npz", x_train=box_images(y_train, rng), y_train=y_train, x_test=box_images(y_test, rng),
                     y_test=y_test)
            masks = np.zeros((600, 32, 32), dtype=bool)
            masks[:, BOX[0], BOX[1]] = True
            np.savez(root / "roi.npz", masks=masks)
            data = f"npz:{root / 'd.npz'}"
            api.train(data=data, out=root / "ck", epochs=3, lr=3e-3, batch_size=32, seed=seed, progress=False,
                      input_size=32)
            api.extract(config=RunConfig(checkpoints=str(root / "ck"), data=data, input_size=32, limit=samples),
                        out=root / "an", progress=False)
            store = Store.open(root / "an")
            ctx = open_context(store, len(store.checkpoints) - 1, "cpu", 256, False)
            mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (ctx.data.mean, ctx.data.std))
            acc = []
            for with_box in (True, False):
                x = (torch.from_numpy(box_images(y_test, rng, with_box)).permute(0, 3, 1, 2) - mean) / std
                with torch.no_grad():
                    acc.append(float((ctx.model(x).argmax(1).numpy() == y_test).mean()))
            r = api.benchmark(root / "an", checkpoints=("final",), methods=("gradcam", "occlusion", "dea"),
                              samples=samples, detail_samples=min(64, samples), roi=f"{root / 'roi.npz'}:masks",
                              seed=seed, device="cpu", progress=False)
            final = r["results"][r["checkpoints"][-1]["name"]]
            rows.append((seed, *acc, final["gradcam"]["leakage"]["mean"], final["dea"]["leakage"]["mean"],
                         *(final[m][k]["mean"] for m in ("gradcam", "dea") for k in ("road_morf_pixel",
                                                                                     "road_combined_pixel"))))
    print("seed  acc  acc(no box)  leakage gradcam  leakage dea  MoRF gradcam  combined gradcam  MoRF dea  combined dea")
    for row in rows:
        print("  ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    cols = np.array([r[1:] for r in rows])
    print("mean  " + "  ".join(f"{v:.3f}" for v in cols.mean(0)))
    print("std   " + "  ".join(f"{v:.3f}" for v in cols.std(0)))
    better = sum(r[7] < r[5] for r in rows)
    print(f"DEA's ROAD MoRF is lower (more faithful) than GradCAM's on {better} of {len(rows)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="analysis directory to benchmark (after i2x extract or run)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--planted-seeds", type=int, default=0, help="run the planted-box study with this many seeds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.dir:
        runtime_table(api.benchmark(args.dir, samples=args.samples, device="cpu", progress=False))
    if args.planted_seeds:
        planted(args.planted_seeds, args.samples)


if __name__ == "__main__":
    main()
