"""Minimal evidence speed: masks optimised as one batch versus one image at a time, and the default run's time.

Trains the small CNN on digits at 28x28 (``--epochs``), extracts ``--n`` training samples, then at the
final checkpoint times, in this one run and under the same ``--threads`` (default 2, the two cores of
the target machine):

* batched: the optimiser on all ``--n`` images as one batch, and the ``i2x evidence`` stage on the same
  samples (model rebuild, masks, CAM IoU, store writes);
* single: the same optimiser on one image at a time, for the first ``--single`` images (seconds per
  mask are the same per image, so a subset is enough);
* both for each of ``--precisions`` (default: ``auto``, bfloat16 passes where the CPU has native bf16,
  and ``float32``);
* default: ``i2x evidence`` with its defaults (first, middle and final checkpoint; the report's
  gallery and error samples) on the analysis built here, or on ``--demo DIR`` (an ``i2x demo`` analysis).

Wall-clock and process CPU seconds are printed with the load average: on a shared machine the wall
clock of a multi-threaded run depends on the other jobs::

    python benchmarks/evidence.py --threads 2 --demo analyses/digits-demo
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from i2x import api
from i2x.attribution.frozen import autocast_dtype
from i2x.attribution.minimal_evidence import MinimalEvidence
from i2x.metrics.evidence import fill_of
from i2x.io.store import Store
from i2x.io.workdir import checkpoint_index
from i2x.stages.context import open_context
from i2x.stages.evidence import EvidenceConfig, evidence


class Clock:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="masks in the batched run (default 256)")
    ap.add_argument("--single", type=int, default=16, help="images timed one at a time (default 16)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the model explained (default 3)")
    ap.add_argument("--iterations", type=int, default=EvidenceConfig.iterations, help="optimisation steps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--precisions", default="auto,float32",
                    help="optimiser precisions timed, batched and one at a time (default auto,float32)")
    ap.add_argument("--demo", help="time the default run on this analysis directory instead of the one built here")
    ap.add_argument("--workdir", help="keep the checkpoints and store here (default: a temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="i2x-evidence-bench-"))
    out = root / "an"
    if not (out / "store.zarr").is_dir():
        api.train(out=root / "ck", epochs=args.epochs, input_size=28, progress=False)
        api.extract(checkpoints=str(root / "ck"), input_size=28, out=out, limit=args.n, device="cpu", progress=False)
    load_before = os.getloadavg()

    store = Store.open(out)
    ctx = open_context(store, checkpoint_index(store, "final"), "cpu", args.n, False)
    mean = torch.tensor(ctx.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(ctx.data.std).view(1, -1, 1, 1)
    images = torch.stack([ctx.dataset[i][0] for i in range(args.n)])
    timed: dict[str, tuple[Clock, Clock]] = {}
    for precision in args.precisions.split(","):
        optimiser = MinimalEvidence([store.attrs["layer"]], iterations=args.iterations, precision=precision)
        warm = MinimalEvidence([store.attrs["layer"]], iterations=2, precision=precision)  # first-call costs untimed
        for part in (images, images[:1]):
            warm.explain(ctx.model, part, fill_of("border", part, mean, std), std)
        with Clock() as batched:
            masks = optimiser.explain(ctx.model, images, fill_of("border", images, mean, std), std)
        with Clock() as single:
            for i in range(args.single):
                one = images[i:i + 1]
                optimiser.explain(ctx.model, one, fill_of("border", one, mean, std), std)
        resolved = str(autocast_dtype(precision, torch.device("cpu")) or torch.float32)[6:]
        timed[f"{precision} ({resolved})"] = batched, single
        print(f"precision {precision} ({resolved}): batched masks keep the decision for "
              f"{masks.kept.float().mean():.1%} at mean area {masks.area.mean():.3f}")
    with Clock() as stage:
        evidence(out, samples=",".join(str(i) for i in range(args.n)), max_samples=args.n, checkpoints="final",
                 iterations=args.iterations, device="cpu", progress=False)
    with Clock() as default:
        result = evidence(args.demo or out, device="cpu", progress=False)
    load_after = os.getloadavg()

    print(f"torch threads {args.threads}, {args.iterations} iterations, 28x28 digits, final checkpoint; "
          f"load average (1, 5, 15 min) before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}")
    print(f"{'run':<48}{'masks':>7}{'wall s':>9}{'wall s/mask':>13}{'cpu s/mask':>12}")
    rows = [(f"optimiser {name}, {how}", n, clock) for name, (batched, single) in timed.items()
            for how, n, clock in (("one batch", args.n, batched), ("one image at a time", args.single, single))]
    rows.append(("i2x evidence stage, one batch", args.n, stage))
    for name, n, clock in rows:
        print(f"{name:<48}{n:>7}{clock.wall:>9.1f}{clock.wall / n:>13.3f}{clock.cpu / n:>12.3f}")
    for name, (batched, single) in timed.items():
        print(f"speed-up of batching, {name}: wall {single.wall / args.single / (batched.wall / args.n):.1f}x, "
              f"cpu {single.cpu / args.single / (batched.cpu / args.n):.1f}x")
    best_single = min(single.wall for _, single in timed.values()) / args.single
    first_batched = next(iter(timed.values()))[0]
    print(f"conservative (wall): the first precision's batch, and the stage, against the fastest one image at a time "
          f"of any precision: optimiser {best_single / (first_batched.wall / args.n):.1f}x, "
          f"stage {best_single / (stage.wall / args.n):.1f}x")
    n_default = sum(c["n"] for c in result["per_checkpoint"])
    kept = ", ".join(f"{c['kept']:.0%}" for c in result["per_checkpoint"])
    areas = ", ".join(f"{c['area']['mean']:.3f}" for c in result["per_checkpoint"])
    print(f"default run ({'--demo ' + args.demo if args.demo else 'this store'}): {n_default} masks over "
          f"{len(result['per_checkpoint'])} checkpoints in {default.wall:.1f} s wall ({default.cpu:.1f} s cpu); "
          f"decision kept {kept} at mean area {areas}")
    print(f"stage's own time for the default run: {result['seconds']:.1f} s; mean kept over its checkpoints "
          f"{np.mean([c['kept'] for c in result['per_checkpoint']]):.1%}")


if __name__ == "__main__":
    main()
