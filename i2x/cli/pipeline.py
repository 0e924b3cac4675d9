"""The pipeline commands: demo, train, extract, analyze, report, compare, run, launch, doctor. Per command,
``add_<name>`` declares its parser (options generated from its config dataclass) and ``cmd_<name>`` builds the
config, calls :mod:`i2x.api` and prints a few lines."""

from __future__ import annotations

import argparse
from pathlib import Path

from i2x.cli.common import (DATA, MODEL, Subparsers, add_run_options, add_trust_options, analysis_dir, command,
                            run_config)
from i2x.cli.options import add_options, config_from
from i2x.io.distributed import LaunchConfig
from i2x.io.location import command_path
from i2x.stages.analyze.config import AnalyzeConfig
from i2x.stages.analyze.uncertainty import summary_sentence
from i2x.stages.config import RunConfig
from i2x.stages.training import TrainConfig


def add_demo(sub: Subparsers) -> None:
    from i2x.api import DemoConfig

    p = command(sub, "demo", cmd_demo, "train the small CNN on digits, then run the whole pipeline on its checkpoints")
    add_options(p, DemoConfig)


def cmd_demo(args: argparse.Namespace) -> None:
    from i2x import api

    from i2x.io.store import Store

    cfg = config_from(args, api.DemoConfig)
    result = api.demo(checkpoints=cfg.checkpoints, out=cfg.out, epochs=cfg.epochs, force=cfg.force)
    for line in verdict_lines(result.summary, Store.open(cfg.out).checkpoints, cfg.out):
        print(line)


def add_train(sub: Subparsers) -> None:
    p = command(sub, "train", cmd_train, "reference trainer: train a model and save one snapshot per epoch")
    add_options(p, RunConfig, "data", only=DATA)
    add_options(p, RunConfig, "model", only=MODEL)
    p.add_argument("--out", required=True, help="directory for the snapshots (epoch_<E>.pt)")
    add_options(p, TrainConfig)


def cmd_train(args: argparse.Namespace) -> None:
    from i2x import api

    cfg = config_from(args, TrainConfig)
    result = api.train(data=args.data, model=args.model, out=args.out, config=cfg, input_size=args.input_size,
                       channels=args.channels, mean=args.mean, std=args.std, num_classes=args.num_classes)
    print(f"trained {cfg.epochs} epochs in {result.seconds:.1f} s; final test accuracy {result.test_accuracy:.4f}")
    print(f"{len(result.checkpoints)} checkpoints in {Path(args.out)}/")


def add_extract(sub: Subparsers) -> None:
    p = command(sub, "extract", cmd_extract,
                "replay checkpoints: probabilities, raw CAMs and final features into DIR/store.zarr")
    p.add_argument("ckpt_dir", metavar="CKPT_DIR", help="directory of training snapshots, or a URL (s3://bucket/run/)")
    p.add_argument("--out", required=True, metavar="DIR", help="analysis directory (store at DIR/store.zarr), or a URL (s3://...)")
    add_run_options(p)


def cmd_extract(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.extract(config=run_config(args), out=args.out, overwrite=args.overwrite)
    for note in result.notes:
        print(note)
    print(f"layer {result.layer} (grid {result.grid[0]}x{result.grid[1]}), {result.samples} samples, "
          f"{len(result.checkpoints)} checkpoints extracted, {len(result.skipped)} already done, "
          f"{result.seconds:.1f} s")
    if result.diverged:
        print(f"diverged (NaN/Inf weights, stored as NaN): {', '.join(result.diverged)}")
    print(f"store: {result.store_path}")


def add_analyze(sub: Subparsers) -> None:
    p = command(sub, "analyze", cmd_analyze,
                "prototypes, confidence groups, ridge mapping and structure from DIR/store.zarr")
    p.add_argument("dir", metavar="DIR", help="analysis directory holding store.zarr (from i2x extract)")
    add_options(p, AnalyzeConfig, "analysis")


def cmd_analyze(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.analyze(args.dir, config_from(args, AnalyzeConfig))
    print_findings(result.summary)
    print(f"summary: {result.summary_path}")


def print_findings(summary: dict) -> None:
    """A few lines on what the analysis found."""
    acc = [a for a in summary["accuracy"] if a is not None]
    print(f"{summary['k']} prototypes at layer {summary['layer']}; accuracy {acc[0]:.3f} -> {acc[-1]:.3f} "
          f"over {len(summary['checkpoints'])} checkpoints")
    if summary.get("diverged"):
        print(f"diverged checkpoints (NaN/Inf weights, left out of every step): {', '.join(summary['diverged'])}")
    groups = summary.get("groups", {})
    if groups.get("fit_samples", summary["n_samples"]) < summary["n_samples"]:
        print(f"confidence groups: HDBSCAN fitted on {groups['fit_samples']:,} of {summary['n_samples']:,} samples "
              "per step, the others labelled by approximate_predict (--max-group-samples 0 fits on all)")
    names = summary["classes"]
    print(f"uncertain: {summary_sentence(summary)}")
    if not summary["uncertain"]:
        print("no uncertain prototype found (try --min-flips 1, --noise-quantile 0.5, or more checkpoints)")
    for u in summary["uncertain"][:5]:
        a, b = u["classes"]
        verdict = "" if "significant" not in u else (f", q {u['q']:.3g}" if u["significant"] else ", not significant")
        print(f"  uncertain prototype {u['prototype']}: swings {names[a]} <-> {names[b]}, {u['flips']} flips, "
              f"score {u['score']:.3g}{verdict}{' (a top-confused pair)' if u['in_top_confused'] else ''}")


def add_report(sub: Subparsers) -> None:
    p = command(sub, "report", cmd_report,
                "write DIR/report.html (self-contained, opens offline) and PNG charts in DIR/report/")
    analysis_dir(p, "i2x analyze")
    p.add_argument("--no-png", action="store_true", help="skip the PNG exports of the charts (faster)")
    add_trust_options(p, checkpoints=False)


def cmd_report(args: argparse.Namespace) -> None:
    from i2x import api

    print(f"report: {api.report(args.dir, pngs=not args.no_png, trust_analysis=args.trust_analysis)}")


def add_compare(sub: Subparsers) -> None:
    from i2x.reporting.comparison import CompareConfig

    p = command(sub, "compare", cmd_compare, "two analysis directories side by side in one self-contained page: "
                                             "verdicts, suspect concepts, paired prototypes, shared samples")
    p.add_argument("dir_a", metavar="DIR_A", help="first analysis directory (A, after i2x run / analyze)")
    p.add_argument("dir_b", metavar="DIR_B", help="second analysis directory (B)")
    add_options(p, CompareConfig)
    add_trust_options(p)


def cmd_compare(args: argparse.Namespace) -> None:
    from i2x import api
    from i2x.reporting.comparison import CompareConfig

    page = api.compare(args.dir_a, args.dir_b, config_from(args, CompareConfig), args.trust_analysis,
                       args.trust_checkpoints, args.model)
    print(f"comparison: {page}")


def add_run(sub: Subparsers) -> None:
    p = command(sub, "run", cmd_run, "extract + analyze + report in one command")
    p.add_argument("ckpt_dir", metavar="CKPT_DIR", help="directory of training snapshots, or a URL (s3://bucket/run/)")
    p.add_argument("--out", required=True, metavar="DIR", help="analysis directory for the store, summary and report, or a URL (s3://...)")
    add_run_options(p)
    add_options(p, AnalyzeConfig, "analysis")
    p.add_argument("--no-reliance", action="store_true", help="skip the reliance study (shortcut ranking)")


def cmd_run(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.run(config=run_config(args), out=args.out, analyze_config=config_from(args, AnalyzeConfig),
                     overwrite=args.overwrite, with_reliance=not args.no_reliance)
    for note in result.notes:
        print(note)
    print_findings(result.summary)
    for stage, seconds in result.timings.items():
        print(f"  {stage:>10}: {seconds:.1f} s")
    print(f"report: {result.report_path}" if result.report_path else f"summary: {result.summary_path}")
    from i2x.io.store import Store

    for line in verdict_lines(result.summary, Store.open(args.out).checkpoints, args.out):
        print(line)


def verdict_lines(summary: dict, checkpoints: list[dict], out: str) -> list[str]:
    """What the report's verdict card says, as the run's last lines: the shortcut, the uncertain prototypes against
    chance, the accuracy on the analysed split and, where the trainer recorded it, on the test split."""
    entry = summary.get("reliance")
    found = entry and ("shortcut suspected" if entry.get("shortcut_found") else "no shortcut stands out")
    shortcut = f"{found}: {entry['verdict']}" if entry else f"not run: i2x reliance {command_path(out)}"
    acc = [(c["name"], a) for c, a in zip(checkpoints, summary["accuracy"]) if a is not None]
    name, final = acc[-1] if acc else ("", None)
    analysed = (f"{summary['split']} split {final:.1%} at {name} ({summary['n_samples']} samples analysed)"
                if final is not None else "no usable checkpoint")
    recorded = next((c.get("metrics", {}).get("test_accuracy") for c in checkpoints if c["name"] == name), None)
    other = ("" if summary["split"] == "test" else f"; test split {recorded:.1%} (the trainer's record)"
             if isinstance(recorded, (int, float)) else "; test split not measured (analyse it with --split test)")
    return ["verdict:", f"  shortcut: {shortcut}", f"  uncertain: {summary_sentence(summary)}",
            f"  accuracy: {analysed}{other}"]


def add_launch(sub: Subparsers) -> None:
    p = command(sub, "launch", cmd_launch, "print the torchrun command that runs `i2x extract` across nodes and "
                "GPUs (a cluster script runs it on every node; see docs/slurm.sbatch)")
    add_options(p, LaunchConfig)
    p.add_argument("extraction", nargs=argparse.REMAINDER, metavar="-- extract CKPT_DIR --out DIR ...",
                   help="the i2x extract command to run on every rank")


def cmd_launch(args: argparse.Namespace) -> None:
    from i2x import api

    argv = args.extraction[1:] if args.extraction[:1] == ["--"] else args.extraction
    print(api.launch(argv, config_from(args, LaunchConfig)))


def add_doctor(sub: Subparsers) -> None:
    command(sub, "doctor", cmd_doctor, "print versions and GPU visibility, for bug reports")


def cmd_doctor(args: argparse.Namespace) -> None:
    from i2x import api

    for key, value in api.doctor().items():
        print(f"{key:>14}: {value}")
