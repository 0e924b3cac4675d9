"""How often the reliance verdict finds a planted marker in a tiny vision transformer, and its false alarms.

    python benchmarks/planted_vit.py --seeds 5 --kinds corner_grey,corner_rgb

The ViT counterpart of ``benchmarks/planted.py``, with the same bar. For each kind (:mod:`i2x.planted.synthetic`'s
two-class textured 28x28 sets: an L marker spanning 5 cells of the 7x7 token grid across cell borders) and
seed: train :func:`tiny_vit` (torchvision ``VisionTransformer``, patch 4, 2 blocks, width 32; this file is its
model spec), check by input intervention that it uses the marker (the marked-class rate on the other class's
unmarked test images, as they are and with the marker painted on), run extract, analyze and reliance, and count a
detection when the verdict is "shortcut found" and a concept holding the marker ranks first. The clean twin of
each channel count is run per seed; a "shortcut found" there is a false alarm. ``--workdir`` keeps each run and
reuses it (only reliance runs again), to compare reliance versions on the same models.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models import VisionTransformer

from i2x import api
from i2x.planted import synthetic
from i2x.stages.config import RunConfig

# The CNN benchmark's reading of a run, shared (loaded by path: tests/ has a module named planted too).
_spec = importlib.util.spec_from_file_location("planted_benchmark", Path(__file__).with_name("planted.py"))
_planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_planted)  # type: ignore[union-attr]
outcome, run_place = _planted.outcome, _planted.run_place

DATA = str(Path(synthetic.__file__).resolve())
MODEL = f"{Path(__file__).resolve()}:tiny_vit"
EPOCHS = 4


def tiny_vit(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """A class-token ViT for 28x28 inputs: 4x4 patches (a 7x7 token grid), 2 blocks of width 32, 2 heads."""
    model = VisionTransformer(image_size=synthetic.SIZE, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=num_classes)
    model.conv_proj = nn.Conv2d(in_channels, 32, kernel_size=4, stride=4)
    return model


def planted_run(place: Path, factory: str, seed: int, model: str = MODEL) -> tuple[Path, dict, dict[str, float]]:
    """Train ``model`` on ``factory`` with marker seed ``seed`` (one thread, so the weights are the same on every
    machine), extract, analyze and run reliance; the analysis directory, its reliance.json and the seconds per
    step. A ``place`` that already holds the analysis is reused: only reliance runs again."""
    spec = f"{DATA}:{factory}"
    seconds: dict[str, float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with synthetic.planted_seed(seed):
            if not (place / "an" / "summary.json").is_file():
                start = time.perf_counter()
                api.train(data=spec, model=model, out=place / "ck", epochs=EPOCHS, seed=seed, progress=False)
                seconds["train"] = time.perf_counter() - start
                start = time.perf_counter()
                api.extract(config=RunConfig(checkpoints=str(place / "ck"), data=spec, model=model), out=place / "an",
                            progress=False)
                api.analyze(place / "an", progress=False)
                seconds["extract+analyze"] = time.perf_counter() - start
            start = time.perf_counter()
            api.reliance(place / "an", progress=False, trust_analysis=True)  # the data spec is our own file
            seconds["reliance"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return place / "an", json.loads((place / "an" / "reliance.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--kinds", default="corner_grey,corner_rgb")
    parser.add_argument("--twins", choices=("with", "skip", "only"), default="with",
                        help="run the clean twins too (default), skip them, or run only them")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep each run here and reuse it on the next call (only reliance runs again)")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    rows = []
    for kind in kinds if args.twins != "only" else []:
        hits = 0
        for seed in range(args.seeds):
            with run_place(args.workdir, f"marker_{kind}_{seed}") as tmp:
                out, result, seconds = planted_run(tmp, f"marker_{kind}", seed)
                info = outcome(out, result, f"marker_{kind}", seed)
            hit = info["found"] and info["first"]
            hits += hit
            use = info["uses_marker"]
            print(f"{kind} seed {seed}: {'detected' if hit else 'missed'}; marked-class rate on the other class "
                  f"{use['rate_clean']:.2f} -> {use['rate_marked']:.2f} with the marker ({use['images']} images); "
                  f"found={info['found']} top={info['top']} marker concepts={info['marker_concepts']}; "
                  f"{', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}", flush=True)
            if not hit:
                print(f"  {result['verdict']}", flush=True)
        rows.append((kind, hits))
    alarms: dict[str, int] = {}
    for channels in sorted({k.split("_")[1] for k in kinds}) if args.twins != "skip" else []:
        alarms[channels] = 0
        for seed in range(args.seeds):
            with run_place(args.workdir, f"clean_{channels}_{seed}") as tmp:
                _, result, seconds = planted_run(tmp, f"clean_{channels}", seed)
            alarms[channels] += result["shortcut_found"]
            print(f"clean {channels} seed {seed}: {result['verdict']} "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})", flush=True)
    print(f"{'kind':<14}{'detection rate':>16}{'false-alarm rate (clean twin)':>32}")
    for kind, hits in rows:
        ch = kind.split("_")[1]
        print(f"{kind:<14}{f'{hits}/{args.seeds}':>16}{f'{alarms[ch]}/{args.seeds}' if ch in alarms else '-':>32}")
    for ch, n in alarms.items():
        print(f"clean {ch}: false alarms {n}/{args.seeds}")


if __name__ == "__main__":
    main()
