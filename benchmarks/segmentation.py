"""Region targets on the synthetic shapes: leakage against the uniform map, and the benchmark's cost.

    python benchmarks/segmentation.py --seeds 3

Per seed (:func:`i2x.planted.synthetic.planted_seed` draws another shapes set): train ``small-segnet`` with
``i2x train --task segmentation``, check by input intervention that it segments the shapes (the share of a
class region's pixels predicted as the class, on the image and with the region erased by ROAD imputation),
extract every checkpoint on the test split, and run ``i2x benchmark`` with its defaults (first, mid and
final checkpoint, every row). Prints per seed and method the leakage of the final checkpoint's maps (mass
outside the class region) against the uniform map's (1 - |R| / HW) and their ratio, and the benchmark's
wall-clock and CPU seconds against the extraction's, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from i2x import api
from i2x.planted import shapes
from i2x.io.masks import region_rows
from i2x.io.models import build_model
from i2x.planted.synthetic import planted_seed
from i2x.metrics.road import impute

SPEC = f"{Path(shapes.__file__).resolve()}:shapes_data"
EPOCHS = 6


def segments(ckpt: Path) -> tuple[float, float]:
    """Share of the test rows' region pixels predicted as the row's class, on the images and with the regions erased."""
    rows = region_rows(shapes.shapes_data()).split("test")
    net = build_model("small-segnet", len(shapes.CLASSES), 3)
    net.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    net.eval()
    x, regions = rows.images[torch.as_tensor(rows.samples)], rows.regions(np.arange(len(rows)))
    classes = torch.as_tensor(rows.targets)[:, None, None]
    with torch.no_grad():
        kept = ((net(x).argmax(1) == classes) & regions).sum() / regions.sum()
        erased = ((net(impute(x, regions)).argmax(1) == classes) & regions).sum() / regions.sum()
    return float(kept), float(erased)


def run(seed: int, tmp: Path) -> None:
    with planted_seed(seed):
        api.train(data=SPEC, model="small-segnet", out=tmp / "ck", epochs=EPOCHS, lr=0.01, batch_size=16,
                  task="segmentation", seed=seed, progress=False)
        kept, erased = segments(tmp / "ck" / f"epoch_{EPOCHS}.pt")
        wall, cpu = time.perf_counter(), time.process_time()
        api.extract(checkpoints=str(tmp / "ck"), data=SPEC, model="small-segnet", split="test", out=tmp / "an",
                    progress=False)
        extract_wall, extract_cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        result = api.benchmark(tmp / "an", trust_analysis=True, progress=False)
        bench_wall, bench_cpu = time.perf_counter() - wall, time.process_time() - cpu
    final = result["checkpoints"][-1]["name"]
    uniform = result["uniform_leakage"][final]["mean"]
    print(f"seed {seed}: {result['n_samples']} rows; region pixels predicted as their class {kept:.2f} "
          f"(erased: {erased:.2f}); uniform-map leakage {uniform:.3f}")
    for method, s in result["results"][final].items():
        print(f"  {method:>10}: leakage {s['leakage']['mean']:.3f} (x{s['leakage']['mean'] / uniform:.2f} of uniform)"
              f"  deletion {s['deletion_morf']['mean']:.3f} vs random {result['random'][final]['morf']['mean']:.3f}"
              f"  robust {s['robust_spearman']['mean']:.3f}  {s['runtime_ms']['mean']:.2f} ms/row")
    print(f"  benchmark {bench_wall:.1f} s wall, {bench_cpu:.1f} s CPU; extraction {extract_wall:.1f} s wall, "
          f"{extract_cpu:.1f} s CPU (x{bench_cpu / max(extract_cpu, 1e-9):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            run(seed, Path(tmp))


if __name__ == "__main__":
    main()
