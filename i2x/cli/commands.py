"""The ``i2x`` commands: per command, ``add_<name>`` declares its parser (options generated from its
config dataclass) and ``cmd_<name>`` builds the config, calls :mod:`i2x.api` and prints a few lines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from i2x.cli.options import add_options, config_from
from i2x.errors import UserError
from i2x.io.distributed import LaunchConfig
from i2x.io.location import as_path
from i2x.settings import name_list
from i2x.stages.analysis import AnalyzeConfig
from i2x.stages.benchmark import BenchmarkConfig
from i2x.stages.context import RunConfig
from i2x.stages.drift import DriftConfig
from i2x.stages.evidence import EvidenceConfig
from i2x.stages.faithfulness import FaithfulnessConfig
from i2x.stages.finetuning import FinetuneConfig
from i2x.stages.reliance import RelianceConfig
from i2x.stages.training import TrainConfig

Subparsers = Any  # argparse's private _SubParsersAction

#: RunConfig fields by option group, in the order ``--help`` lists them; the rest form "extraction".
MODEL = ("model", "num_classes")
DATA = ("data", "input_size", "channels", "mean", "std")
CHECKPOINTS = ("every", "first", "last", "names", "order", "keep_duplicates", "trust_checkpoints")


def command(sub: Subparsers, name: str, func: Callable[[argparse.Namespace], None],
            help_text: str) -> argparse.ArgumentParser:
    """A subcommand that runs ``func`` with the parsed options."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=func)
    return p


def add_trust_options(p: argparse.ArgumentParser, checkpoints: bool = True) -> None:
    """Trust options of the commands whose API takes them as arguments (an analysis folder is untrusted input)."""
    g = p.add_argument_group("trust")
    if checkpoints:
        g.add_argument("--trust-checkpoints", action="store_true",
                       help="allow checkpoints that need arbitrary pickled code to load (only for files you trust)")
        g.add_argument("--model", metavar="SPEC",
                       help="confirm the analysis's package.module:factory or file.py:factory model spec (the same "
                            "one) so it may be imported; its file must still match the sha256 recorded at extraction")
    g.add_argument("--trust-analysis", action="store_true",
                   help="import the model/data code the analysis names, and honour its --trust-checkpoints "
                        "(only for analysis folders you made or trust)")


def analysis_dir(p: argparse.ArgumentParser, after: str) -> None:
    p.add_argument("dir", metavar="DIR", help=f"analysis directory (after {after})")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The RunConfig options by group: model, data, checkpoints, extraction."""
    add_options(p, RunConfig, "model", only=MODEL)
    add_options(p, RunConfig, "data", only=DATA)
    add_options(p, RunConfig, "checkpoints", only=CHECKPOINTS)
    add_options(p, RunConfig, "extraction", skip=MODEL + DATA + CHECKPOINTS)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store made with other settings")


def run_config(args: argparse.Namespace) -> RunConfig:
    return config_from(args, RunConfig, checkpoints=args.ckpt_dir)


# ---- demo ----------------------------------------------------------------------------------------
def add_demo(sub: Subparsers) -> None:
    from i2x.api import DemoConfig

    p = command(sub, "demo", cmd_demo, "train the small CNN on digits, then run the whole pipeline on its checkpoints")
    add_options(p, DemoConfig)


def cmd_demo(args: argparse.Namespace) -> None:
    from i2x import api

    cfg = config_from(args, api.DemoConfig)
    api.demo(checkpoints=cfg.checkpoints, out=cfg.out, epochs=cfg.epochs, force=cfg.force)


# ---- train ---------------------------------------------------------------------------------------
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


# ---- extract -------------------------------------------------------------------------------------
def add_extract(sub: Subparsers) -> None:
    p = command(sub, "extract", cmd_extract,
                "replay checkpoints: probabilities, raw CAMs and final features into DIR/store.zarr")
    p.add_argument("ckpt_dir", metavar="CKPT_DIR", help="directory of training snapshots, or a URL (s3://bucket/run/)")
    p.add_argument("--out", required=True, metavar="DIR", help="analysis directory (store at DIR/store.zarr), or a URL (s3://...)")
    add_run_options(p)


def cmd_extract(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.extract(run_config(args), out=args.out, overwrite=args.overwrite)
    print(f"layer {result.layer} (grid {result.grid[0]}x{result.grid[1]}), {result.samples} samples, "
          f"{len(result.checkpoints)} checkpoints extracted, {len(result.skipped)} already done, "
          f"{result.seconds:.1f} s")
    if result.diverged:
        print(f"diverged (NaN/Inf weights, stored as NaN): {', '.join(result.diverged)}")
    print(f"store: {result.store_path}")


# ---- analyze -------------------------------------------------------------------------------------
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
    if not summary["uncertain"]:
        print("no uncertain prototype found (try --min-flips 1, --noise-quantile 0.5, or more checkpoints)")
    elif summary.get("uncertainty"):
        c = summary["uncertainty"]
        e, es = c["expected_flagged"], c["expected_significant"]
        print(f"uncertain: {c['flagged']} flagged (chance: {e['mean']} ± {e['sd']}), "
              f"{c['significant']} significant (chance: {es['mean']} ± {es['sd']})")
    for u in summary["uncertain"][:5]:
        a, b = u["classes"]
        verdict = "" if "significant" not in u else (f", q {u['q']:.3g}" if u["significant"] else ", not significant")
        print(f"  uncertain prototype {u['prototype']}: swings {names[a]} <-> {names[b]}, {u['flips']} flips, "
              f"score {u['score']:.3g}{verdict}{' (a top-confused pair)' if u['in_top_confused'] else ''}")


# ---- report --------------------------------------------------------------------------------------
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
    add_trust_options(p, checkpoints=False)


def cmd_compare(args: argparse.Namespace) -> None:
    from i2x import api
    from i2x.reporting.comparison import CompareConfig

    print(f"comparison: {api.compare(args.dir_a, args.dir_b, config_from(args, CompareConfig), args.trust_analysis)}")


# ---- finetune ------------------------------------------------------------------------------------
def add_finetune(sub: Subparsers) -> None:
    p = command(sub, "finetune", cmd_finetune,
                "curated -> full fine-tuning from the final checkpoint, driven by the uncertain prototypes, "
                "against full -> full")
    analysis_dir(p, "i2x run / analyze")
    add_options(p, FinetuneConfig)


def cmd_finetune(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.finetune(args.dir, config_from(args, FinetuneConfig))
    print(f"results: {result.dest / 'finetune.json'}")


# ---- faithfulness --------------------------------------------------------------------------------
def add_faithfulness(sub: Subparsers) -> None:
    p = command(sub, "faithfulness", cmd_faithfulness,
                "deletion and insertion tests of the CAMs against a random pixel order, per bucket (tp, fp, random)")
    analysis_dir(p, "i2x extract or run")
    add_options(p, FaithfulnessConfig)


def cmd_faithfulness(args: argparse.Namespace) -> None:
    from i2x import api
    from i2x.metrics.faithfulness import OOD_NOTE

    result = api.faithfulness(args.dir, config_from(args, FaithfulnessConfig))
    for method, per_bucket in result["methods"].items():
        for bucket, r in per_bucket.items():
            if not r.get("n"):
                print(f"{method:>10} {bucket:>6}: no samples")
                continue
            d, i = r["deletion_auc"], r["insertion_auc"]
            print(f"{method:>10} {bucket:>6} n={r['n']:>3}  deletion AUC {d['cam']['mean']:.3f} vs random "
                  f"{d['random']['mean']:.3f} ± {d['random']['std_draws']:.3f}   insertion AUC "
                  f"{i['cam']['mean']:.3f} vs random {i['random']['mean']:.3f} ± {i['random']['std_draws']:.3f}")
            for mode in r["random_beats_map"]:
                fill = result["baselines"][mode]
                print(f"  note: the random order beats {method} in {mode} ({fill} fill)"
                      + (f". {OOD_NOTE}" if fill in ("mean", "black") else ""))
    print(f"results: {as_path(args.dir) / 'faithfulness.json'}")


# ---- benchmark -----------------------------------------------------------------------------------
def add_benchmark(sub: Subparsers) -> None:
    p = command(sub, "benchmark", cmd_benchmark,
                "attribution benchmark over training: ROAD faithfulness, leakage, robustness, sanity and runtime of "
                "every method (plus occlusion and dual-evidence fusion) at chosen checkpoints")
    analysis_dir(p, "i2x extract or run")
    add_options(p, BenchmarkConfig)


def cmd_benchmark(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.benchmark(args.dir, config_from(args, BenchmarkConfig))
    final = result["results"][result["checkpoints"][-1]["name"]]
    if result.get("task") == "segmentation":
        print(f"checkpoint {result['checkpoints'][-1]['name']}: deletion inside the region (p after removal, lower "
              "is more faithful), leakage outside it, robustness (mean Spearman), runtime")
        for method, s in final.items():
            print(f"{method:>10}: deletion {s['deletion_morf']['mean']:.3f}  leakage {s['leakage']['mean']:.3f}  "
                  f"robust {s['robust_spearman']['mean']}  {s['runtime_ms']['mean']:.2f} ms/image")
        print(f"results: {Path(args.dir) / 'benchmark.json'} ({result['seconds']:.1f} s)")
        return
    print(f"checkpoint {result['checkpoints'][-1]['name']}: ROAD combined (pixel, higher is more faithful), "
          "robustness (mean Spearman), runtime")
    for method, s in final.items():
        robust = s["robust_spearman"]["mean"]
        print(f"{method:>10}: ROAD {s['road_combined_pixel']['mean']:+.3f}  robust "
              f"{'not defined' if robust is None else f'{robust:.3f}'}  {s['runtime_ms']['mean']:.2f} ms/image")
    for note in result["notes"]:
        print(f"  note: {note}")
    print(f"results: {as_path(args.dir) / 'benchmark.json'} ({result['seconds']:.1f} s)")


# ---- drift ---------------------------------------------------------------------------------------
def add_drift(sub: Subparsers) -> None:
    p = command(sub, "drift", cmd_drift, "how the CAMs move between two checkpoints or training phases, per method; "
                                         "with several DIRs, the runs side by side with rankings and bootstrap intervals")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="analysis directory (after i2x extract or run); several: "
                                                         "compare the runs (e.g. one per architecture)")
    add_options(p, DriftConfig)
    p.add_argument("--names", type=name_list, metavar="A,B",
                   help="several DIRs: one name per run (default: the directories' names)")
    p.add_argument("--out", metavar="FILE", help="several DIRs: the comparison JSON (default compare-drift.json in "
                                                 "the current directory), the HTML page next to it (.html)")


def _number(value: float | None, digits: int = 3) -> str:
    return "not defined" if value is None else f"{value:.{digits}f}"


def cmd_drift(args: argparse.Namespace) -> None:
    from i2x import api
    from i2x.reporting.drift_text import format_comparison, format_tau

    cfg = config_from(args, DriftConfig)
    if len(args.dirs) > 1:
        result = api.compare_drift(args.dirs, cfg, names=args.names, out=args.out)
        print(format_comparison(result))
        print(f"results: {result['paths']['json']}\nreport: {result['paths']['html']}")
        return
    if args.names or args.out:
        raise UserError("--names and --out compare several runs: give two or more analysis directories")
    result = api.drift(args.dirs[0], cfg)
    for method, r in result["methods"].items():
        overall = r["overall"]
        if not overall["iou"]["n"]:
            print(f"{method:>10}: n=0  not defined (no sample is classified correctly at both checkpoints)")
            continue
        print(f"{method:>10}: n={overall['iou']['n']}  IoU {_number(overall['iou']['mean'])}  shift "
              f"{_number(overall['shift_px']['mean'], 2)} px  Spearman {_number(overall['spearman']['mean'])}")
    for rev in result["stability"]["reversals"]:
        print(f"class stability ranking, {rev['methods'][0]} vs {rev['methods'][1]}: Kendall tau "
              f"{format_tau(rev)}, {len(rev['reversed_pairs'])} reversed pair(s)")
    print(f"results: {as_path(args.dirs[0]) / 'drift.json'}")


# ---- reliance ------------------------------------------------------------------------------------
def add_reliance(sub: Subparsers) -> None:
    p = command(sub, "reliance", cmd_reliance,
                "which prototypes the final model relies on: presence, purity, concentration, deletion and "
                "paste interventions against random baselines, per concept, and a shortcut verdict")
    analysis_dir(p, "i2x analyze")
    add_options(p, RelianceConfig)
    add_trust_options(p)


def cmd_reliance(args: argparse.Namespace) -> None:
    from i2x import api

    cfg = config_from(args, RelianceConfig)
    result = api.reliance(args.dir, cfg, trust_checkpoints=args.trust_checkpoints,
                          trust_analysis=args.trust_analysis, model=args.model)
    print(result["verdict"])
    for c in result["ranking"][:cfg.top]:
        p, t = result["concepts"][c], result["concepts"][c]["transplant"] or {}
        print(f"  concept {c} (prototypes {', '.join(map(str, p['members']))}): class {p['class_name']}, paste flips "
              f"{t.get('flip_rate', 0):.0%} vs {t.get('random_flip_rate', 0):.0%} random, lift {p['lift']:.2f}, "
              f"concentration {p['concentration']:.2f}")
    print(f"results: {as_path(args.dir) / 'reliance.json'}")


# ---- evidence ------------------------------------------------------------------------------------
def add_evidence(sub: Subparsers) -> None:
    p = command(sub, "evidence", cmd_evidence, "minimal evidence masks (Med-CAM) of chosen samples at chosen "
                                               "checkpoints, set against the CAMs")
    analysis_dir(p, "i2x extract or run")
    add_options(p, EvidenceConfig)


def cmd_evidence(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.evidence(args.dir, config_from(args, EvidenceConfig))
    for c in result["per_checkpoint"]:
        print(f"{c['checkpoint']['name']:>12}: {c['n']} masks, decision kept {c['kept']:.0%}, mean area "
              f"{c['area']['mean']:.3f}, robust {c['robust']['mean']:.2f}")
    print(f"results: {as_path(args.dir) / 'evidence.json'}")


# ---- run -----------------------------------------------------------------------------------------
def add_run(sub: Subparsers) -> None:
    p = command(sub, "run", cmd_run, "extract + analyze + report in one command")
    p.add_argument("ckpt_dir", metavar="CKPT_DIR", help="directory of training snapshots, or a URL (s3://bucket/run/)")
    p.add_argument("--out", required=True, metavar="DIR", help="analysis directory for the store, summary and report, or a URL (s3://...)")
    add_run_options(p)
    add_options(p, AnalyzeConfig, "analysis")
    p.add_argument("--no-reliance", action="store_true", help="skip the reliance study (shortcut ranking)")


def cmd_run(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.run(run_config(args), out=args.out, analyze_config=config_from(args, AnalyzeConfig),
                     overwrite=args.overwrite, with_reliance=not args.no_reliance)
    print_findings(result.summary)
    for stage, seconds in result.timings.items():
        print(f"  {stage:>10}: {seconds:.1f} s")
    print(f"report: {result.report_path}" if result.report_path else f"summary: {result.summary_path}")


# ---- launch --------------------------------------------------------------------------------------
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


# ---- doctor --------------------------------------------------------------------------------------
def add_doctor(sub: Subparsers) -> None:
    command(sub, "doctor", cmd_doctor, "print versions and GPU visibility, for bug reports")


def cmd_doctor(args: argparse.Namespace) -> None:
    from i2x import api

    for key, value in api.doctor().items():
        print(f"{key:>14}: {value}")


#: Every subcommand, in the order ``i2x --help`` lists them.
COMMANDS = (add_demo, add_train, add_extract, add_analyze, add_report, add_compare, add_finetune, add_faithfulness,
            add_benchmark, add_drift, add_reliance, add_evidence, add_run, add_launch, add_doctor)
