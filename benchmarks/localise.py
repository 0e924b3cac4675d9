"""How well reliance localises a planted artefact, retrieves its carriers and dates its onset (a measurement).

    python benchmarks/localise.py --seeds 3 --kinds corner-L,corner-L-3class,corner-L-clean [--workdir DIR]

Per kind (:mod:`i2x.planted.localisation`: a small bright L on 90% of one class) and seed: trains the small CNN for 60
Adam steps (lr 3e-4) with snapshots at steps 0-6, 9, 14, 21, 32, 48 and 60
(:func:`~i2x.planted.localisation.train_with_snapshots`), runs extract, analyze and reliance, then prints the verdict,
the lead concept's masks against the true L (share of mask pixels on or within 2 px of it, share of it covered;
for the concept mask and averaged over the carriers' sample masks), the carrier scores' AUROC and AP on both splits,
and the onset checkpoint against the truth: the first checkpoint where painting the L on the other classes' test
images turns more than half as many into the marked class as at the end (of all of them, and of those not
already called marked). ``--workdir`` keeps each run and reruns only reliance on a second call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation

from i2x import api
from i2x.io.store import Store
from i2x.planted import PLANTED, synthetic
from i2x.planted import localisation as artefacts
from i2x.stages.config import RunConfig
from i2x.stages.context import build_context
from i2x.stages.reliance.masks import concept_mask, sample_masks

STEPS, LR = 60, 3e-4


def run(tmp: Path, kind: str, seed: int) -> dict:
    """Train (unless kept), extract, analyze and run reliance; reliance.json."""
    spec = f"planted:{kind}"
    with synthetic.planted_seed(seed):
        if not (tmp / "analysed").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            artefacts.train_with_snapshots(PLANTED[kind](), tmp / "ck", steps=STEPS, seed=seed, lr=LR)
            api.extract(config=RunConfig(checkpoints=str(tmp / "ck"), data=spec), out=tmp / "an", progress=False)
            api.analyze(tmp / "an", progress=False)
            (tmp / "analysed").touch()
        api.reliance(tmp / "an", progress=False, trust_analysis=True)
    return json.loads((tmp / "an" / "reliance.json").read_text())


def on_and_cover(mask: np.ndarray, artefact: np.ndarray) -> tuple[float, float]:
    """Share of the mask's pixels on or within 2 px of the artefact, and share of the artefact it covers."""
    near = binary_dilation(artefact, structure=np.ones((3, 3), bool), iterations=2)
    return float((mask & near).sum() / max(mask.sum(), 1)), float((mask & artefact).sum() / artefact.sum())


def truth_onset(tmp: Path, kind: str, seed: int) -> tuple[list[str], int | None, int | None]:
    """Checkpoint names and the true onsets: the first checkpoint whose painted rate (all other-class images; those
    not already called marked) exceeds half its final value."""
    with synthetic.planted_seed(seed):
        ctx = build_context(RunConfig.from_dict(Store.open(tmp / "an").config))
        effects = []
        for c in ctx.checkpoints:
            ctx.load(c)
            effects.append(artefacts.artefact_effect(ctx.model, ctx.data))
    first = [next((i for i, e in enumerate(effects) if e[key] > effects[-1][key] / 2), None)
             for key in ("rate_marked", "flip_rate")]
    return [c.name for c in ctx.checkpoints], first[0], first[1]


def outcome(tmp: Path, kind: str, seed: int, result: dict) -> dict:
    """The figures of one run (see the module docstring)."""
    out, loc = tmp / "an", result["localisation"]
    lead = loc["suspects"][0]
    artefact = artefacts.artefact_mask()
    with synthetic.planted_seed(seed):
        carriers = artefacts.carriers(PLANTED[kind](), "train")
    rows, masks = sample_masks(out, lead)
    carrying = np.isin(Store.open(out).read("sample_index")[rows], carriers)
    per_sample = np.array([on_and_cover(m, artefact) for m in masks[carrying]]) if carrying.any() else np.zeros((1, 2))
    names, rate_onset, flip_onset = truth_onset(tmp, kind, seed)
    over = loc.get("over_training") or {}
    found = over.get("onset")
    return {"found": result["shortcut_found"], "lead": lead,
            "mask": [round(v, 2) for v in on_and_cover(concept_mask(out, lead), artefact)],
            "samples": per_sample.mean(axis=0).round(2).tolist(),
            "truth": (loc.get("truth") or {}).get(str(lead)),
            "onset": found, "onset_index": None if found is None else names.index(found),
            "truth_onset_index": {"rate": rate_onset, "flip": flip_onset}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--kinds", default="corner-L,corner-L-3class,corner-L-clean")
    parser.add_argument("--workdir", type=Path, default=None, help="keep each run here and reuse it (only reliance "
                                                                      "runs again)")
    args = parser.parse_args()
    for kind in args.kinds.split(","):
        for seed in range(args.seeds):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:
                tmp = (args.workdir / f"{kind}_{seed}") if args.workdir else Path(scratch)
                result = run(tmp, kind, seed)
                info = outcome(tmp, kind, seed, result)
            print(f"{kind} seed {seed}: {json.dumps(info)} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
