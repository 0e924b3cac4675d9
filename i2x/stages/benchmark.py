"""The attribution benchmark over training: faithfulness (ROAD), leakage, robustness, sanity and runtime
of every method at chosen checkpoints; writes ``DIR/benchmark.json``.

Methods: the registered CAM methods (recomputed, so their runtime is measured) plus ``occlusion``
(:mod:`i2x.attribution.occlusion`, mean-colour fill) and ``dea`` (:mod:`i2x.attribution.fusion`).
Every map is at the target layer's grid and explains the class the store's CAMs explain.
``samples`` store rows are drawn once (seeded) and used at every checkpoint; the metrics that need
many interventions (ROAD, robustness, randomisation) use the first ``detail_samples`` of them.

* Faithfulness: ROAD (noisy linear imputation) removal of the top (MoRF) or bottom (LeRF) fraction
  f = 1 - p/100 of the map, at pixel level (the map upsampled bilinearly) and at region level (whole
  cells); exactly round(f N) pixels or cells, ties broken at random (pytorch-grad-cam's threshold
  rule removes every tied pixel, i.e. all zero pixels of a sparse ReLU map at once). Scores:
  MoRF = mean over f of p(target) after removal (lower is more faithful), LeRF likewise (higher),
  combined = (LeRF - MoRF) / 2 (ROADCombined), the drop p(x) - p(after) at ``fractions``; random
  orders (``random_draws``, shared by methods and checkpoints) give the baseline and its spread.
* Leakage (with ``roi``): :mod:`i2x.metrics.leakage` on the maps upsampled to the input.
* Robustness: :mod:`i2x.metrics.robustness` between the map of x and of T(x); max-sensitivity.
* Sanity: cascading top-down randomisation of the final checkpoint's conv/linear layers (Spearman
  of each method's maps with the trained model's), and each checkpoint's maps against the first
  benchmarked checkpoint's.
* Runtime: milliseconds per image per method, measured here (DEA: GradCAM + occlusion + fusion).
"""

from __future__ import annotations

import copy
import csv
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from i2x.attribution import METHODS, Attributor, display_maps, get_methods
from i2x.attribution.fusion import dual_evidence
from i2x.attribution.occlusion import cell_of_pixel, occlusion
from i2x.errors import UserError
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import BENCHMARK, describe_checkpoint, checkpoint_index, usable_checkpoints, write_json, \
    clean_json
from i2x.metrics import leakage as lk
from i2x.metrics.faithfulness import pixel_order, random_order, value_at
from i2x.metrics.road import impute
from i2x.metrics.robustness import TRANSFORMS, max_sensitivity, pearson, spearman, top_k_iou
from i2x.metrics.stats import nan_mean_std as mean_std
from i2x.settings import device_option, option, validate
from i2x.stages.context import ModelAccess, open_context

#: Methods the benchmark adds to the registered CAM methods.
EXTRA_METHODS = ("occlusion", "dea")
LEVELS = ("pixel", "region")


def _names(value: Any) -> tuple[str, ...]:
    """``"a,b"`` or a sequence as a tuple of names."""
    return tuple(v for v in (value.split(",") if isinstance(value, str) else value) if v)


@dataclass
class BenchmarkConfig(ModelAccess):
    """Settings of ``i2x benchmark``."""

    checkpoints: tuple[str, ...] = option(("first", "mid", "final"), "checkpoints to benchmark: first, mid, final or "
                                          "names, comma-separated", parse=_names, metavar="A,B")
    every: int | None = option(None, "benchmark every N-th usable checkpoint (and the final one) instead", low=1,
                               metavar="N")
    methods: tuple[str, ...] | None = option(None, "methods: CAM methods, occlusion, dea (default: the stored CAM "
                                             "methods plus occlusion and dea)", parse=_names, metavar="A,B")
    samples: int = option(256, "samples drawn at random from the store (maps, runtime, leakage, checkpoint "
                               "similarity)", low=1)
    detail_samples: int = option(32, "of those, samples for ROAD faithfulness, robustness and randomisation", low=1)
    percentiles: tuple[float, ...] = option((10, 30, 50, 70, 90),
                                            "ROAD percentiles p: remove the fraction 1 - p/100 of the map",
                                            parse=lambda s: tuple(float(v) for v in s.split(",")), low=0, high=100,
                                            low_open=True, metavar="P,Q")
    fractions: tuple[float, ...] = option((0.2, 0.5), "report the MoRF confidence drop at these removed fractions",
                                          parse=lambda s: tuple(float(v) for v in s.split(",")), low=0, high=1,
                                          metavar="F,G")
    noise: float = option(0.01, "std of ROAD's imputation noise", low=0)
    random_draws: int = option(3, "random removal orders for the faithfulness baseline", low=1)
    roi: str | None = option(None, "region of interest for leakage: FILE.npz:KEY (masks [N, H, W] by data set "
                                   "index) or FILE.csv (index,x0,y0,x1,y1 boxes in input pixels, x1/y1 exclusive)",
                             metavar="SPEC")
    pointing_tolerance: float = option(lk.POINTING_TOLERANCE, "pointing-game tolerance in input pixels", low=0)
    top_share: float = option(0.2, "share of cells in the top-k IoU of the robustness test", low=0, high=1,
                              low_open=True)
    sensitivity_samples: int = option(10, "draws of max-sensitivity (captum's default)", low=1)
    sensitivity_radius: float = option(0.02, "max-sensitivity radius, uniform noise in normalised input units",
                                       low=0)
    seed: int = option(0, "seed of the sample, random orders and noise")
    batch_size: int = option(512, "images per forward batch", low=1)
    device: str = device_option()
    progress: bool = option(True, "show progress", cli=False)


# ---- checkpoints, samples, regions of interest -------------------------------------------------
def select_checkpoints(store: Store, names: tuple[str, ...], every: int | None) -> list[int]:
    """Store indices of the checkpoints to benchmark, in training order, without repeats."""
    usable = usable_checkpoints(store)
    if every is not None:
        chosen = list(usable[::every]) + [usable[-1]]
    else:
        chosen = [int(usable[len(usable) // 2]) if n == "mid" else checkpoint_index(store, n) for n in names]
    if not chosen:
        raise UserError("--checkpoints: name at least one checkpoint (first, mid, final or a name)")
    return sorted({int(t) for t in chosen})


def load_roi(spec: str, index: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean ROI masks [len(index), H, W] for the data set indices ``index`` from an npz key or a CSV of boxes."""
    h, w = size
    if ".npz:" in spec:
        path, key = spec.rsplit(":", 1)
        if not Path(path).is_file():
            raise UserError(f"--roi {spec}: no file {path}")
        with np.load(path) as z:
            if key not in z:
                raise UserError(f"--roi {spec}: {path} has no key {key!r}; keys: {', '.join(z.files)}")
            masks = np.asarray(z[key])
        if masks.ndim != 3 or len(masks) <= int(index.max()):
            raise UserError(f"--roi {spec}: need masks [N, H, W] covering data set index {int(index.max())}, "
                            f"got shape {masks.shape}")
        chosen = torch.from_numpy(masks[index].astype(np.float32))[:, None]
        return F.interpolate(chosen, size=size, mode="nearest")[:, 0].numpy() > 0.5
    if spec.endswith(".csv"):
        if not Path(spec).is_file():
            raise UserError(f"--roi {spec}: no such file")
        out = np.zeros((len(index), h, w), dtype=bool)
        where = {int(i): k for k, i in enumerate(index)}
        with open(spec, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    i, x0, y0, x1, y1 = (int(float(row[k])) for k in ("index", "x0", "y0", "x1", "y1"))
                except (KeyError, ValueError):
                    raise UserError(f"--roi {spec}: each row needs numeric index,x0,y0,x1,y1") from None
                if i in where:
                    out[where[i], max(y0, 0):y1, max(x0, 0):x1] = True
        return out
    raise UserError(f"--roi {spec}: give FILE.npz:KEY or FILE.csv")


# ---- maps ------------------------------------------------------------------------------------------
class Explainer:
    """Maps [B, h, w] of every method for a model at one checkpoint, with the time each method took."""

    def __init__(self, model: nn.Module, layer: str, grid: tuple[int, int], methods: list[str], batch_size: int):
        self.model, self.layer, self.grid, self.methods, self.batch_size = model, layer, grid, methods, batch_size
        self.cams = [m for m in methods if m in METHODS]
        if "dea" in methods and "gradcam" not in self.cams:
            self.cams.append("gradcam")

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, torch.Tensor],
                                                                             dict[str, float]]:
        maps: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        for name in self.cams:  # one pass per method, so each is timed alone
            start = time.perf_counter()
            with Attributor(self.model, self.layer, get_methods([name])) as attributor:
                parts = [attributor.attribute(images[i:i + self.batch_size], targets[i:i + self.batch_size])
                         .cams[name].float().cpu() for i in range(0, len(images), self.batch_size)]
            maps[name], seconds[name] = torch.cat(parts), time.perf_counter() - start
        if "occlusion" in self.methods or "dea" in self.methods:
            start = time.perf_counter()
            maps["occlusion"] = occlusion(self.model, images, targets, self.grid, batch_size=self.batch_size)
            seconds["occlusion"] = time.perf_counter() - start
        if "dea" in self.methods:
            start = time.perf_counter()
            maps["dea"] = dual_evidence(maps["gradcam"], maps["occlusion"])
            seconds["dea"] = time.perf_counter() - start + seconds["gradcam"] + seconds["occlusion"]
        return {m: maps[m] for m in self.methods}, {m: seconds[m] for m in self.methods}

    def maps(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The maps alone, untimed."""
        return self(images, targets)[0]


# ---- faithfulness --------------------------------------------------------------------------------
class RoadRemoval:
    """ROAD removal of the top (MoRF) or bottom (LeRF) fractions of an order, at pixel or region level."""

    def __init__(self, size: tuple[int, int], grid: tuple[int, int], removed: np.ndarray, noise: float, seed: int):
        self.size, self.grid, self.removed, self.noise = size, grid, removed, noise
        self.footprint = cell_of_pixel(size, grid).reshape(-1)
        self.generator = torch.Generator().manual_seed(seed)

    def masks(self, order: torch.Tensor, level: str, lerf: bool) -> torch.Tensor:
        """Removal masks [F, B, H, W] from an order [B, N] (N pixels or cells, most relevant first)."""
        n = order.shape[1]
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand_as(order))
        if lerf:
            rank = n - 1 - rank
        counts = torch.as_tensor(np.round(self.removed * n).astype(np.int64))
        gone = rank[None] < counts[:, None, None]  # [F, B, N]
        if level == "region":
            gone = gone[..., self.footprint]
        return gone.view(len(counts), order.shape[0], *self.size)

    def images(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Imputed images [F * B, C, H, W], fraction-major."""
        f, b = masks.shape[:2]
        return impute(images.repeat(f, 1, 1, 1), masks.reshape(f * b, *self.size), self.noise, self.generator)


def _probs(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    reps = x.shape[0] // target.shape[0]
    target = target.repeat(reps).to(x.device)
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).softmax(1).gather(1, target[i:i + batch_size, None])[:, 0]
                          for i in range(0, x.shape[0], batch_size)]).double().cpu()


def _road_summary(before: np.ndarray, after: dict[str, np.ndarray], removed: np.ndarray,
                  fractions: tuple[float, ...]) -> dict[str, Any]:
    """ROAD scores of one method: after[order] is p(target) [F, B] after removal."""
    grid = np.concatenate([[0.0], removed])
    morf_curve = np.concatenate([before[None], after["morf"]])  # [F+1, B]
    out: dict[str, Any] = {"morf": mean_std(after["morf"].mean(0)), "lerf": mean_std(after["lerf"].mean(0)),
           "combined": mean_std((after["lerf"] - after["morf"]).mean(0) / 2),
           "curves": {o: after[o].mean(1) for o in after}}
    for f in fractions:
        out[f"drop_{f:g}"] = mean_std(before - value_at(morf_curve.T, f, grid))
    return out


# ---- the stage -------------------------------------------------------------------------------------
def _notes(result: dict[str, Any]) -> list[str]:
    """Plain-language findings: where the random order removes evidence faster than a map."""
    notes = []
    for name, per_method in result["results"].items():
        for m, s in per_method.items():
            for level in LEVELS:
                if not s.get(f"beats_random_{level}", True):
                    notes.append(f"{name}: a random {level} order removes evidence at least as fast as {m}'s map "
                                 f"(ROAD MoRF {s[f'road_morf_{level}']['mean']:.3f} vs random "
                                 f"{result['random'][name][level]['morf']['mean']:.3f}).")
    return notes


def _check(cfg: BenchmarkConfig, store: Store) -> list[str]:
    validate(cfg)
    methods = list(cfg.methods) if cfg.methods else [m for m in store.methods if m in METHODS] + list(EXTRA_METHODS)
    unknown = [m for m in methods if m not in METHODS and m not in EXTRA_METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {','.join(unknown) or '(none)'}: choose among "
                        f"{', '.join([*METHODS, *EXTRA_METHODS])}")
    return methods


def _similarity(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {m: mean_std(spearman(a[m], b[m])) for m in a}


def _randomisation(model: nn.Module, explainer: Explainer, images: torch.Tensor, targets: torch.Tensor,
                   original: dict[str, torch.Tensor], seed: int) -> list[dict[str, Any]]:
    """Cascading top-down randomisation: after each further conv/linear layer is re-initialised, the
    Spearman correlation of every method's maps with the trained model's."""
    model = copy.deepcopy(model).eval()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]
    steps = []
    random_explainer = Explainer(model, explainer.layer, explainer.grid, explainer.methods, explainer.batch_size)
    for i, (name, module) in enumerate(layers):
        torch.manual_seed(seed + i)
        module.reset_parameters()
        steps.append({"layer": name, "spearman": _similarity(random_explainer.maps(images, targets), original)})
    return steps


def benchmark(out_dir: str | Path, config: BenchmarkConfig | None = None, **options: Any) -> dict[str, Any]:
    """Benchmark every method at the chosen checkpoints; writes ``DIR/benchmark.json`` and returns it."""
    cfg = config or BenchmarkConfig(**options)
    start = time.perf_counter()
    with locked(out_dir):  # no other i2x process rewrites the store while the benchmark reads it
        store = Store.open(out_dir)
        if store.attrs.get("task") == "segmentation":  # region targets: i2x.stages.region_benchmark
            from i2x.stages.region_benchmark import benchmark_regions

            validate(cfg)
            return benchmark_regions(store, cfg, out_dir)
        methods = _check(cfg, store)
        ts = select_checkpoints(store, cfg.checkpoints, cfg.every)
        labels = store.read("labels")
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(len(labels), size=min(cfg.samples, len(labels)), replace=False))
        detail = np.sort(rng.choice(len(rows), size=min(cfg.detail_samples, len(rows)), replace=False))  # positions
        grid, layer = store.grid, store.attrs["layer"]
        removed = np.sort(1 - np.asarray(cfg.percentiles, dtype=np.float64) / 100)
        result: dict[str, Any] = {
            "settings": {**asdict(cfg), "methods": methods}, "methods": methods, "n_samples": int(rows.size),
            "n_detail": int(detail.size), "rows": rows, "removed_fractions": removed, "grid": list(grid),
            "class_names": store.class_names, "transforms": {k: v[1] for k, v in TRANSFORMS.items()},
            "checkpoints": [], "results": {}, "curves": {}, "random": {}, "runtime_ms": {}, "roi": cfg.roi,
        }
        first_maps: dict[str, torch.Tensor] | None = None
        random_images: dict[str, list[torch.Tensor]] = {}
        for t in ts:
            ctx = open_context(store, t, cfg.device, cfg.batch_size, cfg.trust_checkpoints, cfg.trust_analysis,
                               cfg.model)
            name = store.checkpoints[t]["name"]
            images = torch.stack([ctx.dataset[int(i)][0] for i in rows]).to(ctx.device)
            targets = torch.as_tensor(labels[rows] if store.config.get("target", "true") == "true"
                                      else store.read("probs")[t][rows].argmax(1))
            explainer = Explainer(ctx.model, layer, grid, methods, cfg.batch_size)
            maps, seconds = explainer(images, targets)
            result["checkpoints"].append(describe_checkpoint(store, t))
            result["runtime_ms"][name] = {m: 1000 * s / len(rows) for m, s in seconds.items()}
            scores: dict[str, dict[str, Any]] = {m: {} for m in methods}
            size = tuple(images.shape[-2:])

            # Faithfulness: ROAD MoRF/LeRF at pixel and region level, random orders as the baseline.
            x, y = images[detail], targets[detail]
            before = _probs(ctx.model, x, y, cfg.batch_size).numpy()
            road = RoadRemoval(size, grid, removed, cfg.noise, cfg.seed)
            order_gen = torch.Generator().manual_seed(cfg.seed)
            for level in LEVELS:
                if level not in random_images:  # the random removals do not depend on the model: impute once
                    n = size[0] * size[1] if level == "pixel" else grid[0] * grid[1]
                    random_images[level] = [road.images(x, road.masks(random_order(len(detail), 1, n, order_gen),
                                                                      level, False)) for _ in range(cfg.random_draws)]
                draws = np.stack([_probs(ctx.model, r, y, cfg.batch_size).view(len(removed), -1).numpy()
                                  for r in random_images[level]])  # [draws, F, B]
                result["random"].setdefault(name, {})[level] = {
                    "morf": {"mean": float(draws.mean()), "std_draws": float(draws.mean(axis=(1, 2)).std())},
                    "curve": draws.mean(axis=(0, 2)),
                }
                for m in methods:
                    cell_map = maps[m][detail]
                    saliency = display_maps(cell_map, size) if level == "pixel" else cell_map
                    order = pixel_order(saliency, torch.Generator().manual_seed(cfg.seed))
                    after = {o: _probs(ctx.model, road.images(x, road.masks(order, level, o == "lerf")), y,
                                       cfg.batch_size).view(len(removed), -1).numpy() for o in ("morf", "lerf")}
                    summary = _road_summary(before, after, removed, cfg.fractions)
                    result["curves"].setdefault(name, {}).setdefault(m, {})[level] = summary.pop("curves")
                    scores[m].update({f"road_{k}_{level}": v for k, v in summary.items()})
                    scores[m][f"beats_random_{level}"] = bool(summary["morf"]["mean"] < draws.mean())

            # Leakage against the region of interest.
            if cfg.roi:
                roi = load_roi(cfg.roi, store.read("sample_index")[rows], size)
                for m in methods:
                    up = F.interpolate(maps[m][:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
                    scores[m].update({
                        "leakage": mean_std(lk.leakage(up, roi)), "relevance_mass": mean_std(lk.relevance_mass(up, roi)),
                        "relevance_rank": mean_std(lk.relevance_rank(up, roi)),
                        "pointing_game": mean_std(lk.pointing_game(up, roi, cfg.pointing_tolerance)),
                        "energy_pointing_game": mean_std(lk.energy_pointing_game(up, roi)),
                    })

            # Robustness: the map of x against the map of T(x).
            noise_gen = torch.Generator().manual_seed(cfg.seed)
            per_transform: dict[str, list[np.ndarray]] = {m: [] for m in methods}
            for tname, (transform, _) in TRANSFORMS.items():
                moved = explainer.maps(transform(x, noise_gen), y)
                for m in methods:
                    a, b = maps[m][detail], moved[m].flip(-1) if tname == "flip" else moved[m]
                    rho = spearman(a, b)
                    per_transform[m].append(rho)
                    scores[m][f"{tname}_pearson"] = mean_std(pearson(a, b))
                    scores[m][f"{tname}_spearman"] = mean_std(rho)
                    scores[m][f"{tname}_iou"] = mean_std(top_k_iou(a, b, cfg.top_share))
            for m in methods:
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a sample whose every map is constant: NaN
                    scores[m]["robust_spearman"] = mean_std(np.nanmean(np.stack(per_transform[m]), axis=0))
            sensitivity = max_sensitivity(lambda z: explainer.maps(z, y), x, cfg.sensitivity_radius,
                                          cfg.sensitivity_samples, torch.Generator().manual_seed(cfg.seed))
            for m in methods:
                scores[m]["max_sensitivity"] = mean_std(sensitivity[m])

            # Sanity: similarity to the first benchmarked checkpoint; randomisation at the last one.
            if first_maps is None:
                first_maps = maps
            for m, s in _similarity(maps, first_maps).items():
                scores[m]["similarity_to_first"] = s
            if t == ts[-1]:
                result["randomisation"] = {"checkpoint": name, "steps": _randomisation(
                    ctx.model, explainer, x, y, {m: maps[m][detail] for m in methods}, cfg.seed)}
                for m in methods:
                    scores[m]["randomised_similarity"] = result["randomisation"]["steps"][-1]["spearman"][m]
            for m in methods:
                scores[m]["runtime_ms"] = {"mean": result["runtime_ms"][name][m], "std": None, "n": int(rows.size)}
            result["results"][name] = scores
        result["notes"] = _notes(result)
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["ms_per_image"] = 1000 * result["seconds"] / (rows.size * len(ts))
        write_json(Path(out_dir) / BENCHMARK, result)
        return clean_json(result)
