"""The Python API: one function per CLI command, usable from a notebook or a script.

The CLI (:mod:`i2x.cli`) only parses options and calls these.
"""

from __future__ import annotations

import platform
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import i2x.stages.analyze
import i2x.stages.benchmark
import i2x.stages.extract
import i2x.stages.training
from i2x.errors import UserError
from i2x.io.data import DataOptions, load_data
from i2x.io.distributed import LaunchConfig, torchrun_command
from i2x.io.location import RemotePath
from i2x.io.segnets import check_pixel_logits
from i2x.io.workdir import SUMMARY, AnalysisDir, refuse_foreign_file
from i2x.settings import option, validate, validate_values
from i2x.stages.analyze import AnalyzeConfig, AnalyzeResult
from i2x.stages.benchmark import BenchmarkConfig
from i2x.stages.config import RunConfig
from i2x.stages.context import fresh_model
from i2x.stages.drift.runs import compare_models
from i2x.stages.extract import ExtractResult
from i2x.stages.film import prepare_film
from i2x.stages.training import TrainConfig, TrainResult

# The studies whose stage function is the API function itself, re-exported unchanged (listed in i2x.API).
from i2x.io.workdir import load_summary  # noqa: F401
from i2x.stages.drift import DriftConfig, drift  # noqa: F401
from i2x.stages.evidence import EvidenceConfig, evidence  # noqa: F401
from i2x.stages.faithfulness import FaithfulnessConfig, faithfulness  # noqa: F401
from i2x.stages.finetune import FinetuneConfig, FinetuneResult, finetune, format_table  # noqa: F401
from i2x.stages.reliance import RelianceConfig, reliance  # noqa: F401
from i2x.stages.revision import RevisionConfig, revise  # noqa: F401
from i2x.io.datasets import SEGMENTATION

#: Keyword arguments of :func:`train` that describe the data and model, not the training (RunConfig fields).
SHARED_OPTIONS = ("input_size", "channels", "mean", "std", "num_classes")


def train(data: str = "digits", model: str = "small-cnn", out: str | Path = "checkpoints/run",
          config: TrainConfig | None = None, progress: bool = True, **options: Any) -> TrainResult:
    """Train ``model`` on ``data`` with the reference trainer, one snapshot per epoch in ``out``
    (a non-empty ``out`` is refused unless ``overwrite``, which deletes its ``epoch_*.pt`` first).

    Pass a :class:`TrainConfig` or its fields as keyword arguments (``epochs=3``, ``lr=1e-2``); the data
    and model options ``input_size``, ``channels``, ``mean``, ``std`` and ``num_classes`` are keyword
    arguments too (checked like :class:`RunConfig`'s).
    """
    shared = {k: options.pop(k) for k in SHARED_OPTIONS if k in options}
    cfg = replace(config or TrainConfig(**options), progress=progress)
    validate(cfg)
    validate_values(RunConfig, **shared)
    num_classes = shared.pop("num_classes", None)
    dataset = load_data(data, DataOptions(**shared))
    if dataset.task != cfg.task:
        raise UserError(f"--task {cfg.task}: --data {data} is a {dataset.task} set; pass --task {dataset.task}")
    torch.manual_seed(cfg.seed)  # the initial weights follow --seed too
    net = fresh_model(model, data, dataset, num_classes, dataset.split("train"))
    if cfg.task == SEGMENTATION:
        check_pixel_logits(net, dataset.split("train"), model)
    return i2x.stages.training.train(net, dataset.split("train"), dataset.split("test"), out, cfg)


def extract(out: str | Path = "analyses/run", config: RunConfig | None = None, overwrite: bool = False,
            progress: bool = True, **options: Any) -> ExtractResult:
    """Extract probabilities, CAMs and features from every checkpoint into ``out/store.zarr``.

    Pass a :class:`RunConfig`, or its fields as keyword arguments (``checkpoints=``, ``model=``, ...).
    """
    return i2x.stages.extract.extract(config or RunConfig(**options), out, overwrite=overwrite, progress=progress)


def report(out: str | Path, progress: bool = True, pngs: bool = True, trust_analysis: bool = False) -> Path:
    """Write ``out/report.html`` (self-contained, offline) and PNG exports of the main charts in ``out/report/``;
    ``trust_analysis`` lets the pictures come from a data spec that imports a Python file."""
    from i2x.reporting import build_report

    prepare_film(out, trust_analysis=trust_analysis)  # the one model run the page needs, done before it is built
    return build_report(out, progress=progress, pngs=pngs, trust_analysis=trust_analysis)


def mark_report(out: str | Path) -> dict[str, list[str]]:
    """Mark the sections of ``out/report.html`` whose inputs changed since it was built (a study run after it) and
    put a banner on the page naming ``i2x report``; returns section id -> changed files (empty: the page is current)."""
    from i2x.reporting.freshness import mark_out_of_date

    return mark_out_of_date(out)


def compare(dir_a: str | Path, dir_b: str | Path, config: Any = None, trust_analysis: bool = False,
            trust_checkpoints: bool = False, model: str | None = None, **options: Any) -> Path:
    """Two analysis directories side by side in one self-contained page (``i2x compare A B --out FILE``); pass a
    :class:`i2x.reporting.comparison.CompareConfig` or its fields (``out=``, ``names=``, ``match=``, ``top=``).
    A's shortcut suspect, if any, is pasted into B's held-out images and judged by B's final model
    (:func:`i2x.stages.reliance.transfer.suspect_in_other_run`; ``model`` and the trust flags are for rebuilding B's
    model, as in :func:`i2x.stages.context.open_context`), so the page can say whether B uses it."""
    from i2x.reporting.comparison import CompareConfig, write_comparison
    from i2x.stages.reliance.transfer import suspect_in_other_run

    cfg = config or CompareConfig(**options)
    try:
        transfer = suspect_in_other_run(dir_a, dir_b, trust_checkpoints, trust_analysis, model=model)
    except UserError as exc:
        transfer = {"status": f"B's model could not be rebuilt to test it: {exc}"}
    return write_comparison(dir_a, dir_b, cfg, trust_analysis=trust_analysis, transfer=transfer)


def analyze(out: str | Path, config: AnalyzeConfig | None = None, progress: bool = True,
            **options: Any) -> AnalyzeResult:
    """Analyse the store in ``out``: prototypes, groups, ridge mapping, structure; writes ``summary.json``.

    Pass an :class:`AnalyzeConfig`, or its fields as keyword arguments (``k=16``, ``method="layercam"``).
    """
    return i2x.stages.analyze.analyze(out, config or AnalyzeConfig(**options), progress=progress)


@dataclass
class RunResult:
    """What ``run`` produced: the store, the summary, the report and the time per stage."""

    store_path: Path | RemotePath
    summary: dict[str, Any]
    summary_path: Path | RemotePath
    report_path: Path | RemotePath | None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # the extraction's lines on preprocessing and sample


def run(out: str | Path = "analyses/run", config: RunConfig | None = None, analyze_config: AnalyzeConfig | None = None,
        overwrite: bool = False, progress: bool = True, with_reliance: bool = True, **options: Any) -> RunResult:
    """Extract + analyze + reliance + report in one call; the CLI's ``i2x run``.

    Both configs are checked before anything runs, so a bad analysis option never costs an extraction. The later stages trust what
    this call named: its model and data specs, and ``trust_checkpoints``.
    """
    config = config or RunConfig(**options)
    analyze_config = analyze_config or AnalyzeConfig()
    validate(config)
    validate(analyze_config)
    out = AnalysisDir.at(out)  # opened once, handed to every stage
    timings: dict[str, float] = {}
    start = time.perf_counter()
    ex = extract(out, config, overwrite=overwrite, progress=progress)
    timings["extract"] = time.perf_counter() - start
    start = time.perf_counter()
    an = analyze(out, analyze_config, progress=progress)
    timings["analyze"] = time.perf_counter() - start
    if with_reliance:
        start = time.perf_counter()
        reliance(out, progress=progress, trust_checkpoints=config.trust_checkpoints, trust_analysis=True)
        timings["reliance"] = time.perf_counter() - start
        an.summary = out.summary()
    start = time.perf_counter()
    report_path = report(out, progress=progress, trust_analysis=True)
    timings["report"] = time.perf_counter() - start
    return RunResult(ex.store_path, an.summary, an.summary_path or out / SUMMARY, report_path, timings,
                     ex.notes)


def compare_drift(out_dirs: list[str | Path], config: DriftConfig | None = None, names: list[str] | None = None,
                  out: str | Path | None = None, page: bool = True, **options: Any) -> dict[str, Any]:
    """Several runs' drift side by side (:func:`i2x.stages.drift.runs.compare_models`); the CLI's ``i2x drift A B ...``.

    Writes the JSON to ``out`` (default ``compare-drift.json`` in the current directory) and, with ``page``,
    a self-contained HTML page next to it (same name, ``.html``); their paths are in ``result["paths"]``.
    """
    from i2x.reporting.comparison import write_drift_comparison

    out = Path(out or "compare-drift.json")
    if out.suffix == ".html":
        raise UserError(f"--out {out}: name the JSON file (e.g. {out.with_suffix('.json')}); the page goes next to it")
    for path in (out, out.with_suffix(".html")) if page else (out,):
        refuse_foreign_file(path)
    result = compare_models(out_dirs, config, names=names, out=out, **options)
    html = write_drift_comparison(result, out.with_suffix(".html"), out) if page else None
    result["paths"] = {"json": str(out), "html": str(html) if html else None}
    return result


@dataclass
class DemoConfig:
    """Settings of ``i2x demo``."""

    checkpoints: str = option("checkpoints/digits-demo", "where the demo's snapshots go", flag="--checkpoints-dir")
    out: str = option("analyses/digits-demo", "where the demo's analysis goes")
    epochs: int = option(10, "training epochs, one snapshot each", low=1)
    force: bool = option(False, "retrain and reanalyse even if results exist")


def demo(checkpoints: str | Path = "checkpoints/digits-demo", out: str | Path = "analyses/digits-demo",
         epochs: int = 10, force: bool = False) -> RunResult:
    """Train the small CNN on digits (unless its snapshots exist), then run the pipeline on them."""
    validate(DemoConfig(str(checkpoints), str(out), epochs, force))
    ckpt_dir = Path(checkpoints)
    timings: dict[str, float] = {}
    if force or not any(ckpt_dir.glob("epoch_*.pt")):
        print(f"training the small CNN on digits for {epochs} epochs into {ckpt_dir}/")
        start = time.perf_counter()
        result = train(out=ckpt_dir, epochs=epochs, overwrite=force)
        timings["train"] = time.perf_counter() - start
        print(f"  test accuracy {result.test_accuracy:.4f} ({timings['train']:.1f} s)")
    else:
        print(f"using the existing snapshots in {ckpt_dir}/ (--force retrains)")
    result = run(out, RunConfig(checkpoints=str(ckpt_dir)), overwrite=force)
    timings.update(result.timings)
    print(" ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"summary: {result.summary_path}")
    if result.report_path:
        print(f"report: {result.report_path}")
    return result


def benchmark(out: str | Path, config: BenchmarkConfig | None = None, **options: Any) -> dict[str, Any]:
    """Benchmark every attribution method at chosen checkpoints (ROAD faithfulness, leakage, robustness,
    sanity, runtime); writes ``out/benchmark.json``. Pass a :class:`BenchmarkConfig` or its fields."""
    return i2x.stages.benchmark.benchmark(out, config or BenchmarkConfig(**options))


def launch(argv: list[str], config: LaunchConfig | None = None, **options: Any) -> str:
    """The torchrun command line that runs the extraction ``argv`` (``["extract", CKPT_DIR, "--out", DIR, ...]``) on
    ``nnodes`` nodes of ``nproc_per_node`` processes each; the CLI's ``i2x launch`` (a cluster script runs it on
    every node, see docs/slurm.sbatch)."""
    return shlex.join(torchrun_command(config or LaunchConfig(**options), argv))


def doctor() -> dict[str, str]:
    """Versions and accelerator visibility: what to paste into a bug report."""
    from i2x.version import __version__

    info: dict[str, str] = {"i2x": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for module in ("torch", "torchvision", "numpy", "sklearn", "hdbscan", "zarr", "altair", "vl_convert"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "installed")
        except ImportError as exc:
            info[module] = f"not importable ({exc})"
    try:
        import faiss

        info["faiss"] = f"{faiss.__version__} (GPUs visible: {faiss.get_num_gpus()})"
    except ImportError as exc:
        info["faiss"] = f"not importable ({exc})"
    import torch

    info["cuda"] = (f"available, {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}"
                    if torch.cuda.is_available() else "not available (CPU only)")
    return info
