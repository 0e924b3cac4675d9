"""The study commands on an analysis directory: finetune, faithfulness, benchmark, drift, reliance, evidence
(``add_<name>`` declares the parser, ``cmd_<name>`` calls :mod:`i2x.api` and prints the findings)."""

from __future__ import annotations

import argparse
from pathlib import Path

from i2x.cli.common import Subparsers, add_trust_options, analysis_dir, command
from i2x.cli.options import add_options, config_from
from i2x.errors import UserError
from i2x.io.location import as_path
from i2x.settings import name_list
from i2x.stages.benchmark import BenchmarkConfig
from i2x.stages.drift import DriftConfig
from i2x.stages.evidence import EvidenceConfig
from i2x.stages.evidence.study import masks_line
from i2x.stages.faithfulness import FaithfulnessConfig
from i2x.stages.finetune.config import FinetuneConfig
from i2x.stages.reliance.config import RelianceConfig
from i2x.io.datasets import SEGMENTATION
from i2x.stages.revision.config import RevisionConfig


def add_finetune(sub: Subparsers) -> None:
    p = command(sub, "finetune", cmd_finetune,
                "curated -> full fine-tuning from the final checkpoint, driven by the uncertain prototypes, "
                "against full -> full")
    analysis_dir(p, "i2x run / analyze")
    add_options(p, FinetuneConfig)
    add_options(p, RevisionConfig, "revision of a shortcut (--fix METHOD or --measure, with --concept ID)")


def cmd_finetune(args: argparse.Namespace) -> None:
    from i2x import api

    if args.fix or args.measure or args.after or args.artefact_mask:  # the revision's own options
        api.revise(args.dir, config_from(args, RevisionConfig))
        dest = as_path(args.dest) if args.dest else as_path(args.dir) / "finetune"
        key = "measure" if args.measure else "revision"
        print(f"results: {dest / 'finetune.json'} (under {key!r})")
        return
    result = api.finetune(args.dir, config_from(args, FinetuneConfig))
    print(f"results: {result.dest / 'finetune.json'}")


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
    if result.get("task") == SEGMENTATION:
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
    regions = result.get("task") == SEGMENTATION
    if regions:
        print(f"segmentation run: all {result['n_counted']} rows counted (a row's map explains its class over its "
              f"region at every checkpoint); {result['n_correct_both']} with their class the region's top class at "
              "both checkpoints")
    for method, r in result["methods"].items():
        overall = r["overall"]
        if not overall["iou"]["n"]:
            why = "every counted row's map is all zero at one of the checkpoints" if r.get("n_empty") \
                else "no sample is classified correctly at both checkpoints"
            print(f"{method:>10}: n=0  not defined ({why})")
            continue
        empty = f" ({r['n_empty']} rows with an empty map left out)" if r.get("n_empty") else ""
        print(f"{method:>10}: n={overall['iou']['n']}  IoU {_number(overall['iou']['mean'])}  shift "
              f"{_number(overall['shift_px']['mean'], 2)} px  Spearman {_number(overall['spearman']['mean'])}{empty}")
    for rev in result["stability"]["reversals"]:
        print(f"class stability ranking, {rev['methods'][0]} vs {rev['methods'][1]}: Kendall tau "
              f"{format_tau(rev)}, {len(rev['reversed_pairs'])} reversed pair(s)")
    print(f"results: {as_path(args.dirs[0]) / 'drift.json'}")


def add_reliance(sub: Subparsers) -> None:
    p = command(sub, "reliance", cmd_reliance,
                "which prototypes the final model relies on: presence, purity, concentration, deletion and "
                "paste interventions against random baselines, per concept, and a shortcut verdict")
    analysis_dir(p, "i2x analyze")
    add_options(p, RelianceConfig)
    add_trust_options(p)


def cmd_reliance(args: argparse.Namespace) -> None:
    from i2x import api
    from i2x.stages.reliance.localise import localisation_lines
    from i2x.stages.reliance.verdict import ran_sentence

    cfg = config_from(args, RelianceConfig)
    result = api.reliance(args.dir, cfg, trust_checkpoints=args.trust_checkpoints,
                          trust_analysis=args.trust_analysis, model=args.model)
    print(result["verdict"])
    for c in result["ranking"][:cfg.top]:
        p, t = result["concepts"][c], result["concepts"][c]["transplant"] or {}
        protos = ", ".join(f"P{k}" for k in p["members"])
        print(f"  concept C{c} (prototypes {protos}): class {p['class_name']}, paste flips "
              f"{t.get('flip_rate', 0):.0%} vs {t.get('random_flip_rate', 0):.0%} random, lift {p['lift']:.2f}, "
              f"concentration {p['concentration']:.2f}")
    for line in localisation_lines(result):
        print(line)
    print(f"  tests run: {ran_sentence(result)}")
    print(f"results: {as_path(args.dir) / 'reliance.json'}")


def add_evidence(sub: Subparsers) -> None:
    p = command(sub, "evidence", cmd_evidence, "minimal evidence masks (Med-CAM) of chosen samples at chosen "
                                               "checkpoints, set against the CAMs")
    analysis_dir(p, "i2x extract or run")
    add_options(p, EvidenceConfig)


def cmd_evidence(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.evidence(args.dir, config_from(args, EvidenceConfig))
    for c in result["per_checkpoint"]:
        print(f"{c['checkpoint']['name']:>12}: {masks_line(c)}, robust {c['robust']['mean']:.2f}")
    print(f"results: {as_path(args.dir) / 'evidence.json'}")
