"""The attribution benchmark over training: faithfulness (ROAD), leakage, robustness, sanity and runtime
of every method at chosen checkpoints; writes ``DIR/benchmark.json``.

Methods: the registered CAM methods (recomputed, so their runtime is measured) plus ``occlusion``
and ``dea`` (:mod:`i2x.stages.benchmark.maps`). Every map is at the target layer's grid and explains
the class the store's CAMs explain (:class:`~i2x.stages.benchmark.maps.ClassTarget`).
``samples`` store rows are drawn once (seeded) and used at every checkpoint; the metrics that need
many interventions (ROAD, robustness, randomisation) use the first ``detail_samples`` of them.

* Faithfulness: :mod:`i2x.stages.benchmark.faithfulness` (ROAD MoRF / LeRF, pixels and cells, random baseline).
* Leakage (with ``roi``): :mod:`i2x.metrics.leakage` on the maps upsampled bilinearly to the input.
* Robustness: :mod:`i2x.stages.benchmark.robustness`.
* Sanity: :mod:`i2x.stages.benchmark.sanity` (randomisation at the last checkpoint, similarity to the first).
* Runtime: milliseconds per image per method, measured here (DEA: GradCAM + occlusion + fusion).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from i2x.errors import UserError
from i2x.io.samples.roi import read_roi
from i2x.io.workdir import BENCHMARK, AnalysisDir, clean_json, describe_checkpoint, select_checkpoints
from i2x.metrics import leakage as lk
from i2x.metrics.robustness import TRANSFORMS
from i2x.metrics.stats import nan_mean_std
from i2x.settings import validate
from i2x.stages.benchmark.faithfulness import LEVELS, RoadBenchmark
from i2x.stages.benchmark.inputs import BenchmarkConfig, resolve_methods
from i2x.stages.benchmark.maps import ClassTarget, Explainer
from i2x.stages.benchmark.regions import benchmark_regions
from i2x.stages.benchmark.robustness import robustness_scores
from i2x.stages.benchmark.sanity import randomisation, similarity
from i2x.stages.context import open_context

__all__ = ["BenchmarkConfig", "benchmark"]


def leakage_scores(maps: dict[str, torch.Tensor], roi: np.ndarray, tolerance: float) -> dict[str, dict[str, Any]]:
    """Per method, the leakage metrics of maps [B, h, w] against ROI masks [B, H, W]."""
    out = {}
    for m, cell_maps in maps.items():
        up = F.interpolate(cell_maps[:, None], size=roi.shape[-2:], mode="bilinear", align_corners=False)[:, 0].numpy()
        out[m] = {"leakage": nan_mean_std(lk.leakage(up, roi)),
                  "relevance_mass": nan_mean_std(lk.relevance_mass(up, roi)),
                  "relevance_rank": nan_mean_std(lk.relevance_rank(up, roi)),
                  "pointing_game": nan_mean_std(lk.pointing_game(up, roi, tolerance)),
                  "energy_pointing_game": nan_mean_std(lk.energy_pointing_game(up, roi))}
    return out


def _notes(result: dict[str, Any]) -> list[str]:
    """Plain-language findings: where the random order removes evidence faster than a map."""
    notes = []
    if len(result["checkpoints"]) == 1:
        notes.append(f"Spearman to the first checkpoint: not measured, only {result['checkpoints'][0]['name']} was "
                     "benchmarked (a checkpoint compared with itself scores 1.000); name two with --checkpoints.")
    for name, per_method in result["results"].items():
        for m, s in per_method.items():
            for level in LEVELS:
                if not s.get(f"beats_random_{level}", True):
                    notes.append(f"{name}: a random {level} order removes evidence at least as fast as {m}'s map "
                                 f"(ROAD MoRF {s[f'road_morf_{level}']['mean']:.3f} vs random "
                                 f"{result['random'][name][level]['morf']['mean']:.3f}).")
    return notes


def benchmark(out_dir: str | Path | AnalysisDir, config: BenchmarkConfig | None = None, **options: Any) -> dict[str, Any]:
    """Benchmark every method at the chosen checkpoints; writes ``DIR/benchmark.json`` and returns it."""
    cfg = config or BenchmarkConfig(**options)
    start, cpu_start = time.perf_counter(), time.process_time()
    validate(cfg)
    out = AnalysisDir.at(out_dir)
    with out.locked():  # no other i2x process rewrites the store while the benchmark reads it
        store = out.store()
        if store.segmentation:  # region targets: i2x.stages.benchmark.regions
            if cfg.roi:
                raise UserError(f"--roi {cfg.roi}: a segmentation run is benchmarked on its masks' regions (each row "
                                "explains its class over its region); leave --roi out")
            return benchmark_regions(store, cfg, out)
        methods = resolve_methods(cfg, store)
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
        road: RoadBenchmark | None = None
        for t in ts:
            ctx = open_context(store, t, cfg.device, cfg.batch_size, cfg.trust_checkpoints, cfg.trust_analysis,
                               cfg.model)
            name = store.checkpoints[t]["name"]
            images = torch.stack([ctx.dataset[int(i)][0] for i in rows]).to(ctx.device)
            target = ClassTarget(torch.as_tensor(labels[rows] if store.config.get("target", "true") == "true"
                                                 else store.read("probs")[t][rows].argmax(1)))
            explainer = Explainer(ctx.model, layer, grid, methods, cfg.batch_size, images[:2])
            maps, seconds = explainer.timed(images, target)
            result["checkpoints"].append(describe_checkpoint(store, t))
            result["runtime_ms"][name] = {m: 1000 * s / len(rows) for m, s in seconds.items()}
            scores: dict[str, dict[str, Any]] = {m: {} for m in methods}
            x, y = images[detail], target.select(detail)
            detail_maps = {m: maps[m][detail] for m in methods}

            road = road or RoadBenchmark(x, grid, removed, cfg.fractions, cfg.noise, cfg.random_draws, cfg.seed,
                                         cfg.batch_size)
            road_scores, result["random"][name], result["curves"][name] = road(explainer.scorer, y, detail_maps)
            for part in (road_scores,
                         leakage_scores(maps, read_roi(cfg.roi, store.read("sample_index")[rows], tuple(x.shape[-2:])),
                                        cfg.pointing_tolerance) if cfg.roi else {},
                         robustness_scores(explainer, x, y, detail_maps, cfg.top_share, cfg.sensitivity_radius,
                                           cfg.sensitivity_samples, cfg.seed)):
                for m, s in part.items():
                    scores[m].update(s)

            if first_maps is None:  # the first checkpoint is not compared with itself (1.000 by construction)
                first_maps = maps
            else:
                for m, s in similarity(maps, first_maps).items():
                    scores[m]["similarity_to_first"] = s
            if t == ts[-1]:
                result["randomisation"] = {"checkpoint": name, "steps": randomisation(
                    ctx.model, explainer, x, y, detail_maps, cfg.seed)}
                for m in methods:
                    scores[m]["randomised_similarity"] = result["randomisation"]["steps"][-1]["spearman"][m]
            for m in methods:
                scores[m]["runtime_ms"] = {"mean": result["runtime_ms"][name][m], "std": None, "n": int(rows.size)}
            result["results"][name] = scores
        result["notes"] = _notes(result)
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["cpu_seconds"] = round(time.process_time() - cpu_start, 3)  # all threads: wall time on a shared machine
        result["ms_per_image"] = 1000 * result["seconds"] / (rows.size * len(ts))
        out.write(BENCHMARK, result)
        return clean_json(result)
