"""The Python API: one function per CLI command, usable from a notebook or a script.

The CLI (:mod:`i2x.cli`) only parses options and calls these.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from i2x.io.workdir import load_summary
from i2x.stages.analysis import AnalyzeConfig, AnalyzeResult, analyze as _analyze
from i2x.stages.context import RunConfig, check_forward
from i2x.io.data import DataOptions, load_data
from i2x.errors import UserError
from i2x.stages.extraction import ExtractResult, extract as _extract
from i2x.stages.finetuning import FinetuneResult, finetune, format_table
from i2x.io.models import build_model
from i2x.stages.reliance import RelianceConfig, reliance
from i2x.stages.drift import compare_models, drift
from i2x.stages.faithfulness import faithfulness
from i2x.stages.benchmark import BenchmarkConfig, benchmark as _benchmark
from i2x.stages.training import TrainConfig, TrainResult, train as _train


def train(
    data: str = "digits",
    model: str = "small-cnn",
    out: str | Path = "checkpoints/run",
    epochs: int = 10,
    seed: int = 0,
    save_every: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    freeze_backbone_epochs: int = 0,
    device: str = "auto",
    progress: bool = True,
    **data_options: Any,
) -> TrainResult:
    """Train ``model`` on ``data`` with the reference trainer, one snapshot per epoch in ``out``."""
    dataset = load_data(data, DataOptions(**data_options))
    torch.manual_seed(seed)  # the initial weights follow --seed too
    net = build_model(model, num_classes=dataset.num_classes, in_channels=dataset.channels)
    check_forward(net, dataset.split("train"), model, data)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                      save_every=save_every, freeze_backbone_epochs=freeze_backbone_epochs, device=device,
                      progress=progress)
    return _train(net, dataset.split("train"), dataset.split("test"), out, cfg)


def extract(config: RunConfig | None = None, out: str | Path = "analyses/run", overwrite: bool = False,
            progress: bool = True, **options: Any) -> ExtractResult:
    """Extract probabilities, CAMs and features from every checkpoint into ``out/store.zarr``.

    Pass a :class:`RunConfig`, or its fields as keyword arguments (``checkpoints=``, ``model=``, ...).
    """
    config = config or RunConfig(**options)
    return _extract(config, out, overwrite=overwrite, progress=progress)


def report(out: str | Path, progress: bool = True, pngs: bool = True) -> Path:
    """Write ``out/report.html`` (self-contained, offline) and PNG exports of the main charts in ``out/report/``."""
    from i2x.reporting import build_report

    return build_report(out, progress=progress, pngs=pngs)


def analyze(out: str | Path, config: AnalyzeConfig | None = None, progress: bool = True,
            **options: Any) -> AnalyzeResult:
    """Analyse the store in ``out``: prototypes, groups, ridge mapping, structure; writes ``summary.json``.

    Pass an :class:`AnalyzeConfig`, or its fields as keyword arguments (``k=16``, ``method="layercam"``).
    """
    return _analyze(out, config or AnalyzeConfig(**options), progress=progress)


@dataclass
class RunResult:
    """What ``run`` produced: the store, the summary, the report and the time per stage."""

    store_path: Path
    summary: dict[str, Any]
    summary_path: Path
    report_path: Path | None
    timings: dict[str, float] = field(default_factory=dict)


def run(config: RunConfig | None = None, out: str | Path = "analyses/run", analyze_config: AnalyzeConfig | None = None,
        overwrite: bool = False, progress: bool = True, with_reliance: bool = True, **options: Any) -> RunResult:
    """Extract + analyze + reliance + report in one call; the CLI's ``i2x run``."""
    config = config or RunConfig(**options)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    ex = extract(config, out, overwrite=overwrite, progress=progress)
    timings["extract"] = time.perf_counter() - start
    start = time.perf_counter()
    an = analyze(out, analyze_config, progress=progress)
    timings["analyze"] = time.perf_counter() - start
    if with_reliance:
        start = time.perf_counter()
        reliance(out, progress=progress)
        timings["reliance"] = time.perf_counter() - start
        an.summary = load_summary(out)
    start = time.perf_counter()
    report_path = report(out, progress=progress)
    timings["report"] = time.perf_counter() - start
    return RunResult(ex.store_path, an.summary, an.summary_path or Path(out) / "summary.json", report_path, timings)


def demo(checkpoints: str | Path = "checkpoints/digits-demo", out: str | Path = "analyses/digits-demo",
         epochs: int = 10, force: bool = False) -> RunResult:
    """Train the small CNN on digits (unless its snapshots exist), then run the pipeline on them."""
    ckpt_dir = Path(checkpoints)
    timings: dict[str, float] = {}
    if force or not any(ckpt_dir.glob("epoch_*.pt")):
        print(f"training the small CNN on digits for {epochs} epochs into {ckpt_dir}/")
        start = time.perf_counter()
        result = train(out=ckpt_dir, epochs=epochs)
        timings["train"] = time.perf_counter() - start
        print(f"  test accuracy {result.test_accuracy:.4f} ({timings['train']:.1f} s)")
    else:
        print(f"using the existing snapshots in {ckpt_dir}/ (--force retrains)")
    result = run(RunConfig(checkpoints=str(ckpt_dir)), out=out, overwrite=force)
    timings.update(result.timings)
    print(" ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"summary: {result.summary_path}")
    if result.report_path:
        print(f"report: {result.report_path}")
    return result


def benchmark(out: str | Path, config: BenchmarkConfig | None = None, **options: Any) -> dict[str, Any]:
    """Benchmark every attribution method at chosen checkpoints (ROAD faithfulness, leakage, robustness,
    sanity, runtime); writes ``out/benchmark.json``. Pass a :class:`BenchmarkConfig` or its fields."""
    return _benchmark(out, config or BenchmarkConfig(**options))


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


__all__ = ["train", "extract", "analyze", "report", "run", "finetune", "format_table", "FinetuneResult",
           "faithfulness", "benchmark", "BenchmarkConfig", "drift", "compare_models", "reliance", "RelianceConfig", "demo", "doctor", "load_summary", "RunConfig", "AnalyzeConfig",
           "RunResult", "UserError"]
