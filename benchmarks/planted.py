"""How often the reliance verdict finds a planted shortcut, and how often it cries wolf (a measurement).

    python benchmarks/planted.py --seeds 5 --kinds corner_grey,centre_grey,corner_rgb,centre_rgb

For each kind (:mod:`i2x.planted.synthetic`: an L or bar marker spanning 3 grid cells across cell
borders, at a corner or in the centre, on grey or 3-channel textured two-class images) and seed:
train the small CNN, check by input intervention that it uses the marker, run the pipeline, and
count a detection when the verdict is "shortcut found" and the top concept holds the marker (at
least 20% of the marker's grid cells in the marked images). A stricter reading is printed beside it:
at least half of the top concept's footprint (what its paste test pastes and the report tints) lies
on marker pixels in the marked images of its gallery. The clean twin of each channel count (same
images, no marker) is trained and analysed per seed; a false alarm is a "shortcut found" verdict on
it. Prints the rates per kind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from i2x import api
from i2x.planted import synthetic
from i2x.io.store import Store
from i2x.stages.context import build_context
from i2x.stages.config import RunConfig
from i2x.io.workdir import unpack_mask

SPEC = str(Path(synthetic.__file__).resolve())
EPOCHS = 4
#: the top concept names the marker when at least this share of its footprint lies on marker pixels
ON_MARKER = 0.5


def planted_run(tmp: Path, factory: str, seed: int) -> tuple[Path, dict]:
    """Train on ``factory`` with marker seed ``seed``, run extract, analyze and reliance (no report); the analysis
    directory and its reliance.json. A directory that already holds the analysis (``--workdir``) is reused:
    only reliance runs again."""
    spec = f"{SPEC}:{factory}"
    with synthetic.planted_seed(seed):
        if not (tmp / "analysed").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            api.train(data=spec, out=tmp / "ck", epochs=EPOCHS, seed=seed, progress=False)
            api.extract(config=RunConfig(checkpoints=str(tmp / "ck"), data=spec), out=tmp / "an", progress=False)
            api.analyze(tmp / "an", progress=False)
            (tmp / "analysed").touch()
        api.reliance(tmp / "an", progress=False, trust_analysis=True)  # the data spec is our own file
    return tmp / "an", json.loads((tmp / "an" / "reliance.json").read_text())


def outcome(out: Path, result: dict, factory: str, seed: int) -> dict:
    """Whether the model uses the marker (input intervention), the verdict, the marker concepts (by the grid cells
    they hold), and where the top concept's footprint lies: its share on marker pixels in the marked images of its
    gallery (the footprints the report tints and the paste test pastes)."""
    place = factory.split("_")[1]
    with synthetic.planted_seed(seed):
        ctx = build_context(RunConfig.from_dict(Store.open(out).config))
        ctx.load(ctx.checkpoint("final"))
        effect = synthetic.marker_effect(ctx.model, ctx.data, place)
        marked = ctx.data.extra["marked"]["train"]
    store = Store.open(out)
    index = store.read("sample_index")
    shares = synthetic.marker_shares(store.read("analysis/assign"), index,
                                     [c["members"] for c in result["concepts"]], marked,
                                     synthetic.marker_cells(place, store.grid))
    holders = [int(c) for c in (-shares).argsort() if shares[c] >= synthetic.MARKER_HOLD]
    top = result["ranking"][0]
    row = result["concepts"][top]
    pixels = synthetic.marker_pixels(place)
    on = [(fp & pixels).sum() / max(fp.sum(), 1) for g, bits in zip(row["gallery"], row["footprints"])
          if index[g] in set(marked.tolist()) for fp in [unpack_mask(bits, pixels.shape)]]
    on_marker = float(np.mean(on)) if on else 0.0
    return {"uses_marker": effect, "found": result["shortcut_found"], "marker_concepts": holders,
            "top": top, "top_share": round(float(shares[top]), 2), "top_on_marker": round(on_marker, 2),
            "first": top in holders, "first_on_pixels": on_marker >= ON_MARKER}


@contextmanager
def run_place(workdir: Path | None, name: str) -> Iterator[Path]:
    """The directory of one run: ``workdir/name`` (kept) or a temporary one."""
    if workdir is not None:
        yield workdir / name
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--kinds", default=",".join(synthetic.KINDS))
    parser.add_argument("--twins", choices=("with", "skip", "only"), default="with",
                        help="run the clean twins too (default), skip them, or run only them (to split the work)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep each run's checkpoints and analysis here and reuse them on the next call (only "
                             "reliance runs again); default: a temporary directory per run")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    rows = []
    for kind in kinds if args.twins != "only" else []:
        hits = on_pixels = 0
        for seed in range(args.seeds):
            start = time.perf_counter()
            with run_place(args.workdir, f"marker_{kind}_{seed}") as tmp:
                out, result = planted_run(tmp, f"marker_{kind}", seed)
                info = outcome(out, result, f"marker_{kind}", seed)
            hit = info["found"] and info["first"]
            hits += hit
            on_pixels += info["found"] and info["first_on_pixels"]
            print(f"{kind} seed {seed}: {'detected' if hit else 'missed'} {info} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
        rows.append((kind, hits, on_pixels))
    alarms: dict[str, int] = {}
    for channels in sorted({k.split("_")[1] for k in kinds}) if args.twins != "skip" else []:
        alarms[channels] = 0
        for seed in range(args.seeds):
            with run_place(args.workdir, f"clean_{channels}_{seed}") as tmp:
                _, result = planted_run(tmp, f"clean_{channels}", seed)
            alarms[channels] += result["shortcut_found"]
            print(f"clean {channels} seed {seed}: {result['verdict']}", flush=True)
    print(f"{'kind':<14}{'detection rate':>16}{'(footprint on marker)':>23}{'false-alarm rate (clean twin)':>32}")
    for kind, hits, on_pixels in rows:
        ch = kind.split("_")[1]
        print(f"{kind:<14}{f'{hits}/{args.seeds}':>16}{f'{on_pixels}/{args.seeds}':>23}"
              f"{f'{alarms[ch]}/{args.seeds}' if ch in alarms else '-':>32}")
    for ch, n in alarms.items():
        print(f"clean {ch}: false alarms {n}/{args.seeds}")


if __name__ == "__main__":
    main()
