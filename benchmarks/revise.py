"""Revision of the planted hard case: does each fix remove the shortcut, against its controls (a measurement).

    python benchmarks/revise.py --seeds 5

On ``planted:corner-L`` (a bright L on 90% of one class's training images, none elsewhere; :mod:`i2x.planted.artefact`)
train the small CNN, check by painting the L onto the other class's test images that it uses it, run the pipeline
(reliance included), and revise the final checkpoint against reliance.json's lead concept with every fix and control
(``i2x finetune DIR --concept ID --fix all``): the fixes use the concept's mask (no annotation); the measures use the
true L (``--artefact-mask``). On the clean twin ``planted:corner-L-clean`` the same revision of its lead concept
(augment and its controls; the L's mask where the concept's footprints share no pixel) shows how much revising a
concept that is no shortcut moves accuracy. Prints the table
(method x gap, clean and attacked accuracy, flip rate, CAM share, time per run), the concept's paste test before and
after each revision, and the verdicts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from i2x import api
from i2x.planted import PLANTED, artefact
from i2x.planted.synthetic import marker_effect
from i2x.stages.context import open_context
from i2x.io.store import Store

EPOCHS = 6


def pipeline(work: Path, name: str) -> Path:
    """Train the small CNN on ``planted:NAME`` and run the pipeline with reliance (reused when already there)."""
    out = work / name / "an"
    if not (out / "reliance.json").is_file():
        api.train(data=f"planted:{name}", out=work / name / "ck", epochs=EPOCHS, seed=0, progress=False, overwrite=True)
        api.run(checkpoints=str(work / name / "ck"), data=f"planted:{name}", out=out, progress=False, overwrite=True)
    return out


def uses_artefact(out: Path, name: str) -> dict[str, float]:
    """Painting the L onto the other classes' test images: the share called the marked class before and after."""
    ctx = open_context(Store.open(out))
    return marker_effect(ctx.model.cpu(), PLANTED[name](), artefact.PLACE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fix-epochs", type=int, default=3)
    parser.add_argument("--fix", default="all", choices=("augment", "rrclarc", "rrr", "exclude", "all"))
    parser.add_argument("--sets", default="corner-L,corner-L-clean",
                        help="planted sets; one whose name ends in -clean is revised with augment and its controls")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the trained runs here (reused)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="i2x-revise-"))
    rows = {}
    for name in args.sets.split(","):
        clean = name.endswith("-clean")
        fix = "augment" if clean else args.fix
        out = pipeline(work, name)
        reliance = json.loads((out / "reliance.json").read_text())
        lead = reliance["ranking"][0]
        print(f"\n== planted:{name}: {reliance['verdict'].split('.')[0]}; revising concept {lead}")
        truth = work / "artefact_mask.npy"
        np.save(truth, artefact.artefact_mask())
        if not clean:
            print(f"painting the L on the other classes' test images: {uses_artefact(out, name)}")
        start = time.perf_counter()
        rows[name] = api.revise(out, fix=fix, concept=lead, seeds=args.seeds, fix_epochs=args.fix_epochs,
                                artefact_mask=str(truth), progress=False)
        print(f"({time.perf_counter() - start:.0f} s in all)")
    for name, record in rows.items():
        if name.endswith("-clean"):
            for method, st in record["methods"].items():
                change = st["clean_accuracy"]["mean"] - record["before"]["clean_accuracy"]
                print(f"{name}, {method}: clean accuracy {100 * st['clean_accuracy']['mean']:.1f}% "
                      f"(change {100 * change:+.1f} pts from the final checkpoint)")
    print(f"runs kept in {work}")


if __name__ == "__main__":
    main()
