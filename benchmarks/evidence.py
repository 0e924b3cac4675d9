"""Minimal evidence speed: masks optimised as one batch versus one image at a time, and the default run's time.

Trains the small CNN on digits at 28x28 (``--epochs``), extracts ``--n`` training samples, then at the
final checkpoint times

* batched: ``i2x evidence`` on all ``--n`` samples at once (the stage: model rebuild, masks, CAM IoU);
* single: the same optimiser on one image at a time, for the first ``--single`` samples
  (seconds per mask are the same per image, so a subset is enough);
* default: ``i2x evidence`` with its defaults (first, middle and final checkpoint; the report's
  gallery and error samples) on the same analysis directory, or on ``--demo DIR`` (an ``i2x demo`` analysis).

Both timings run under the same ``--threads`` (default 2, the two cores of the target machine)::

    python benchmarks/evidence.py --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from i2x import api
from i2x.attribution.minimal_evidence import MinimalEvidence
from i2x.io.store import Store
from i2x.io.workdir import checkpoint_index
from i2x.stages.context import open_context
from i2x.stages.evidence import EvidenceConfig, evidence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="masks in the batched run (default 256)")
    ap.add_argument("--single", type=int, default=8, help="images timed one at a time (default 8)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the model explained (default 3)")
    ap.add_argument("--iterations", type=int, default=EvidenceConfig.iterations, help="optimisation steps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--demo", help="time the default run on this analysis directory instead of the one built here")
    ap.add_argument("--workdir", help="keep the checkpoints and store here (default: a temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="i2x-evidence-bench-"))
    out = root / "an"
    if not (out / "store.zarr").is_dir():
        api.train(out=root / "ck", epochs=args.epochs, input_size=28, progress=False)
        api.extract(checkpoints=str(root / "ck"), input_size=28, out=out, limit=args.n, device="cpu", progress=False)
    rows = ",".join(str(i) for i in range(args.n))

    start = time.perf_counter()
    batched = evidence(out, samples=rows, max_samples=args.n, checkpoints="final", iterations=args.iterations,
                       device="cpu", progress=False)
    t_batched = time.perf_counter() - start
    final = batched["per_checkpoint"][0]

    store = Store.open(out)
    ctx = open_context(store, checkpoint_index(store, "final"), "cpu", 1, False)
    mean = torch.tensor(ctx.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(ctx.data.std).view(1, -1, 1, 1)
    optimiser = MinimalEvidence([store.attrs["layer"]], iterations=args.iterations)
    start = time.perf_counter()
    for i in range(args.single):
        optimiser.explain(ctx.model, ctx.dataset[i][0][None], -mean / std, mean, std)
    t_single = (time.perf_counter() - start) / args.single

    start = time.perf_counter()
    default = evidence(args.demo or out, device="cpu", progress=False)
    t_default = time.perf_counter() - start
    masks = sum(c["n"] for c in default["per_checkpoint"])

    per_batched = t_batched / args.n
    print(f"threads {args.threads}, {args.iterations} iterations, 28x28 digits, final checkpoint")
    print(f"{'run':<34}{'masks':>7}{'seconds':>10}{'s/mask':>9}")
    print(f"{'batched (stage, one batch)':<34}{args.n:>7}{t_batched:>10.1f}{per_batched:>9.3f}")
    print(f"{'one image at a time':<34}{args.single:>7}{t_single * args.single:>10.1f}{t_single:>9.3f}")
    print(f"speed-up batched vs single: {t_single / per_batched:.1f}x")
    print(f"batched masks: decision kept {final['kept']:.1%}, mean area {final['area']['mean']:.3f}")
    print(f"default run ({'--demo ' + args.demo if args.demo else 'this store'}): {masks} masks over "
          f"{len(default['per_checkpoint'])} checkpoints in {t_default:.1f} s; decision kept "
          f"{np.mean([c['kept'] for c in default['per_checkpoint']]):.1%}")


if __name__ == "__main__":
    main()
