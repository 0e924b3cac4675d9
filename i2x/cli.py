"""The ``i2x`` command line: a thin layer that parses options and calls :mod:`i2x.api`.

User errors (:class:`i2x.errors.UserError`) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from i2x.version import __version__
from i2x.errors import UserError

DESCRIPTION = """\
i2x explains how an image classifier's reasoning forms during training.

Point it at a directory of training checkpoints: it replays them, extracts CAMs
(GradCAM, GradCAM++, LayerCAM) and features into a Zarr store, finds prototypes,
maps prototype-intensity changes to confidence changes, and writes a report.

  i2x demo                                         everything, on data that ships with the install
  i2x run CKPT_DIR --model M --data D --out DIR    extract + analyze + report
  i2x finetune DIR                                 curated -> full fine-tuning from the analysis
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Options naming the data set and its preprocessing."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", metavar="SPEC",
                   help="data set: digits (default, ships with scikit-learn), imagefolder:PATH, npz:PATH, "
                        "mnist:ROOT, fashionmnist:ROOT, cifar10:ROOT or path/to/file.py:factory")
    g.add_argument("--input-size", type=int, metavar="PX", help="resize images to PX x PX (default per data set)")
    g.add_argument("--channels", type=int, metavar="C", help="number of input channels (default per data set)")
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="normalisation mean per channel")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="normalisation std per channel")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options naming the model architecture."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="small-cnn", metavar="SPEC",
                   help="architecture: small-cnn (default), torchvision:NAME (e.g. torchvision:resnet18, built "
                        "without downloaded weights), package.module:factory or path/to/file.py:factory")
    g.add_argument("--num-classes", type=int, metavar="M", help="output classes (default: the data's class count)")


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """Options choosing and loading checkpoints."""
    g = p.add_argument_group("checkpoints")
    g.add_argument("--every", type=int, metavar="N", help="use every N-th checkpoint (the final one is always kept)")
    g.add_argument("--first", type=int, metavar="N", help="use only the first N checkpoints")
    g.add_argument("--last", type=int, metavar="N", help="use only the last N checkpoints")
    g.add_argument("--checkpoints", dest="names", type=_names, metavar="A,B,...",
                   help="use exactly these checkpoints (names as listed in the directory)")
    g.add_argument("--trust-checkpoints", action="store_true",
                   help="allow checkpoints that need arbitrary pickled code to load (only for files you trust)")


def add_extract_options(p: argparse.ArgumentParser) -> None:
    """Options of the extraction stage."""
    g = p.add_argument_group("extraction")
    g.add_argument("--layer", metavar="NAME",
                   help="target layer by dotted name (e.g. layer4, features.7); default: the last module whose "
                        "output is a 4-D map with at least 3x3 cells")
    g.add_argument("--methods", type=_names, default=("gradcam", "gradcampp", "layercam"), metavar="A,B",
                   help="CAM methods: gradcam, gradcampp, layercam (default: all three)")
    g.add_argument("--target", choices=("true", "predicted"), default="true",
                   help="class each CAM explains: the true label (default; comparable across checkpoints) or the "
                        "predicted class")
    g.add_argument("--split", default="train", help="data split to analyse (default: train)")
    g.add_argument("--limit", type=int, metavar="N", help="analyse only the first N samples of the split")
    g.add_argument("--batch-size", type=int, default=256, metavar="B", help="samples per batch (default 256)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    g.add_argument("--overwrite", action="store_true", help="replace an existing store made with other settings")


def _run_config(args: argparse.Namespace) -> "RunConfig":
    from i2x.stages.context import RunConfig

    return RunConfig(
        checkpoints=args.ckpt_dir, model=args.model, data=args.data, split=args.split, layer=args.layer,
        methods=tuple(args.methods), target=args.target, batch_size=args.batch_size, device=args.device,
        input_size=args.input_size, channels=args.channels, mean=args.mean, std=args.std,
        num_classes=args.num_classes, limit=args.limit, every=args.every, first=args.first, last=args.last,
        names=args.names, trust_checkpoints=args.trust_checkpoints,
    )


# ---- subcommands -----------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.train(
        data=args.data, model=args.model, out=args.out, epochs=args.epochs, seed=args.seed,
        save_every=args.save_every, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
        freeze_backbone_epochs=args.freeze_backbone_epochs, device=args.device,
        input_size=args.input_size, channels=args.channels, mean=args.mean, std=args.std,
    )
    print(f"trained {args.epochs} epochs in {result.seconds:.1f} s; final test accuracy {result.test_accuracy:.4f}")
    print(f"{len(result.checkpoints)} checkpoints in {Path(args.out)}/")


def cmd_extract(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.extract(_run_config(args), out=args.out, overwrite=args.overwrite)
    print(f"layer {result.layer} (grid {result.grid[0]}x{result.grid[1]}), {result.samples} samples, "
          f"{len(result.checkpoints)} checkpoints extracted, {len(result.skipped)} already done, "
          f"{result.seconds:.1f} s")
    if result.diverged:
        print(f"diverged (NaN/Inf weights, stored as NaN): {', '.join(result.diverged)}")
    print(f"store: {result.store_path}")


def add_analyze_options(p: argparse.ArgumentParser) -> None:
    """Options of the analysis stage (DESIGN D5-D9)."""
    g = p.add_argument_group("analysis")
    g.add_argument("--k", default="32", help="number of prototypes, or 'auto' to pick from --k-candidates by "
                                              "silhouette score on a subsample (default 32)")
    g.add_argument("--k-candidates", type=lambda s: tuple(int(v) for v in s.split(",")), default=(8, 16, 32, 64),
                   metavar="K1,K2", help="candidates for --k auto (default 8,16,32,64)")
    g.add_argument("--pca-dim", type=int, default=32, help="PCA components before k-means (default 32, or d if smaller)")
    g.add_argument("--method", default="gradcam", help="CAM method whose maps give prototype intensity (default gradcam)")
    g.add_argument("--seed", type=int, default=0, help="seed of the k-means and the vector subsample (default 0)")
    g.add_argument("--max-fit-vectors", type=int, default=200_000, metavar="N",
                   help="k-means and PCA fit on a seeded sample of at most N location vectors (default 200000)")
    g.add_argument("--max-points-per-centroid", type=int, default=256, metavar="N",
                   help="FAISS k-means subsamples to N points per centroid (default 256, FAISS's own default)")
    g.add_argument("--min-cluster-size", type=int, metavar="N",
                   help="HDBSCAN min_cluster_size (default max(10, n/100))")
    g.add_argument("--max-group-samples", type=int, default=20_000, metavar="N",
                   help="HDBSCAN fits each step on a seeded sample of at most N samples and labels the others with "
                        "hdbscan.approximate_predict; its cost grows faster than n (default 20000; 0: fit on all)")
    g.add_argument("--jobs", type=int, metavar="N",
                   help="processes that run HDBSCAN's steps in parallel (default: every core from 10000 samples on)")
    g.add_argument("--alpha", type=float, help="ridge penalty (default: RidgeCV over 1e-3..1e3)")
    g.add_argument("--shared-presence", type=float, default=0.9,
                   help="shared: present in at least this share of a class's samples (default 0.9)")
    g.add_argument("--specialized-presence", type=float, default=0.9,
                   help="specialized: present in at least this share of one group's class samples (default 0.9)")
    g.add_argument("--specialized-max-overall", type=float, default=0.5,
                   help="specialized: present in fewer than this share of all the class's samples (default 0.5)")
    g.add_argument("--noise-quantile", type=float, default=0.75,
                   help="uncertain: |beta| must exceed this quantile of all |beta| (default 0.75)")
    g.add_argument("--min-flips", type=int, default=2, help="uncertain: flips between the same two classes (default 2)")
    g.add_argument("--top-confused", type=int, default=3,
                   help="how many most-confused class pairs count as 'top confused' (default 3)")


def _analyze_config(args: argparse.Namespace) -> "AnalyzeConfig":
    from i2x.stages.analysis import AnalyzeConfig

    if args.k != "auto" and not str(args.k).isdigit():
        raise UserError(f"--k {args.k}: give a positive integer or 'auto'")
    if args.max_group_samples < 0:
        raise UserError(f"--max-group-samples {args.max_group_samples}: give a positive number, or 0 to fit on all samples")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give at least 1")
    return AnalyzeConfig(
        k=args.k if args.k == "auto" else int(args.k), pca_dim=args.pca_dim, method=args.method, seed=args.seed,
        max_fit_vectors=args.max_fit_vectors, max_points_per_centroid=args.max_points_per_centroid,
        k_candidates=args.k_candidates, min_cluster_size=args.min_cluster_size, alpha=args.alpha,
        shared_presence=args.shared_presence, specialized_presence=args.specialized_presence,
        specialized_max_overall=args.specialized_max_overall, noise_quantile=args.noise_quantile,
        min_flips=args.min_flips, top_confused=args.top_confused, jobs=args.jobs,
        max_group_samples=args.max_group_samples or None, device=getattr(args, "device", "auto"),
    )


def cmd_analyze(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.analyze(args.dir, _analyze_config(args))
    _print_findings(result.summary)
    print(f"summary: {result.summary_path}")


def _print_findings(summary: dict) -> None:
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
    for u in summary["uncertain"][:5]:
        a, b = u["classes"]
        print(f"  uncertain prototype {u['prototype']}: swings {names[a]} <-> {names[b]}, {u['flips']} flips, "
              f"score {u['score']:.3g}{' (a top-confused pair)' if u['in_top_confused'] else ''}")


def cmd_run(args: argparse.Namespace) -> None:
    from i2x import api

    result = api.run(_run_config(args), out=args.out, analyze_config=_analyze_config(args), overwrite=args.overwrite,
                     with_reliance=not args.no_reliance)
    _print_findings(result.summary)
    for stage, seconds in result.timings.items():
        print(f"  {stage:>10}: {seconds:.1f} s")
    print(f"report: {result.report_path}" if result.report_path else f"summary: {result.summary_path}")


def cmd_report(args: argparse.Namespace) -> None:
    from i2x import api

    path = api.report(args.dir, pngs=not args.no_png)
    print(f"report: {path}")


def _pairs(text: str) -> "str | list[tuple[str, str]]":
    if text in ("top", "all"):
        return text
    pairs = [tuple(p.split(",")) for p in text.replace(":", ",").split(";") if p]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected 'top', 'all' or pairs like 3,5;2,7 (or 3:5;2:7), got {text!r}")
    return pairs  # type: ignore[return-value]


def cmd_finetune(args: argparse.Namespace) -> None:
    from i2x.stages.finetuning import finetune

    result = finetune(
        args.dir, strategies=args.strategies, seeds=args.seeds, epochs=args.epochs, lr=args.lr,
        optimizer=args.optimizer, min_share=args.min_share, pairs=args.pairs, exclude_file=args.exclude,
        dest=args.dest, batch_size=args.batch_size, device=args.device, concept=args.concept,
    )
    print(f"results: {result.dest / 'finetune.json'}")


def cmd_faithfulness(args: argparse.Namespace) -> None:
    from i2x.stages.faithfulness import faithfulness

    result = faithfulness(
        args.dir, checkpoint=args.checkpoint, methods=args.method, fractions=args.fractions, steps=args.steps,
        baseline=args.baseline, insertion_baseline=args.insertion_baseline, buckets=args.buckets,
        per_bucket=args.per_bucket, positive_class=args.positive_class, random_draws=args.random_draws,
        seed=args.seed, batch_size=args.batch_size, device=args.device, trust_checkpoints=args.trust_checkpoints,
    )
    for method, per_bucket in result["methods"].items():
        for bucket, r in per_bucket.items():
            if not r.get("n"):
                print(f"{method:>10} {bucket:>6}: no samples")
                continue
            d, i = r["deletion_auc"], r["insertion_auc"]
            print(f"{method:>10} {bucket:>6} n={r['n']:>3}  deletion AUC {d['cam']['mean']:.3f} vs random "
                  f"{d['random']['mean']:.3f} ± {d['random']['std_draws']:.3f}   insertion AUC "
                  f"{i['cam']['mean']:.3f} vs random {i['random']['mean']:.3f} ± {i['random']['std_draws']:.3f}")
    print(f"results: {Path(args.dir) / 'faithfulness.json'}")


def cmd_drift(args: argparse.Namespace) -> None:
    from i2x.stages.drift import drift

    result = drift(args.dir, from_=args.from_, to=args.to, phase_split=args.phase_split, methods=args.method,
                   top=args.top, stability=args.stability)
    for method, r in result["methods"].items():
        overall = r["overall"]
        print(f"{method:>10}: n={overall['iou']['n']}  IoU {overall['iou']['mean']:.3f}  shift "
              f"{overall['shift_px']['mean']:.2f} px  Spearman {overall['spearman']['mean']:.3f}")
    for rev in result["stability"]["reversals"]:
        print(f"class stability ranking, {rev['methods'][0]} vs {rev['methods'][1]}: Kendall tau "
              f"{rev['kendall_tau']:.2f}, {len(rev['reversed_pairs'])} reversed pair(s)")
    print(f"results: {Path(args.dir) / 'drift.json'}")


def cmd_reliance(args: argparse.Namespace) -> None:
    from i2x.stages.reliance import RelianceConfig, reliance

    result = reliance(args.dir, RelianceConfig(
        max_samples=args.max_samples, recipients=args.recipients, random_draws=args.random_draws,
        batch_size=args.batch_size, top=args.top, seed=args.seed, device=args.device))
    _print_reliance(result["verdict"], result["ranking"][:args.top], result["concepts"])
    print(f"results: {Path(args.dir) / 'reliance.json'}")


def _print_reliance(verdict: str, ranking: list, concepts: Any) -> None:
    print(verdict)
    for c in ranking:
        p, t = concepts[c], concepts[c]["transplant"] or {}
        print(f"  concept {c} (prototypes {', '.join(map(str, p['members']))}): class {p['class_name']}, paste flips "
              f"{t.get('flip_rate', 0):.0%} vs {t.get('random_flip_rate', 0):.0%} random, lift {p['lift']:.2f}, "
              f"concentration {p['concentration']:.2f}")


def cmd_demo(args: argparse.Namespace) -> None:
    from i2x import api

    api.demo(checkpoints=args.checkpoints_dir, out=args.out, epochs=args.epochs, force=args.force)


def cmd_doctor(args: argparse.Namespace) -> None:
    from i2x import api

    for key, value in api.doctor().items():
        print(f"{key:>14}: {value}")


def build_parser() -> argparse.ArgumentParser:
    """The full ``i2x`` argument parser (every option has help text)."""
    parser = argparse.ArgumentParser(prog="i2x", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"i2x {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (chosen layer, ignored files)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = command("demo", cmd_demo, "train the small CNN on digits, then run the whole pipeline on its checkpoints")
    p.add_argument("--checkpoints-dir", default="checkpoints/digits-demo", help="where the demo's snapshots go")
    p.add_argument("--out", default="analyses/digits-demo", help="where the demo's analysis goes")
    p.add_argument("--epochs", type=int, default=10, help="training epochs, one snapshot each (default 10)")
    p.add_argument("--force", action="store_true", help="retrain and reanalyse even if results exist")

    p = command("train", cmd_train, "reference trainer: train a model and save one snapshot per epoch")
    add_data_options(p)
    add_model_options(p)
    p.add_argument("--out", required=True, help="directory for the snapshots (epoch_<E>.pt)")
    p.add_argument("--epochs", type=int, default=10, help="number of epochs (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--save-every", type=int, default=1, metavar="N", help="save a snapshot every N epochs (default 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimizer (default adam)")
    p.add_argument("--freeze-backbone-epochs", type=int, default=0, metavar="N",
                   help="train only the classifier head for the first N epochs, then everything (two-phase run)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    p = command("extract", cmd_extract, "replay checkpoints: probabilities, raw CAMs and final features into DIR/store.zarr")
    p.add_argument("ckpt_dir", metavar="CKPT_DIR", help="directory of training snapshots")
    p.add_argument("--out", required=True, metavar="DIR", help="analysis directory (store at DIR/store.zarr)")
    add_model_options(p)
    add_data_options(p)
    add_checkpoint_options(p)
    add_extract_options(p)

    p = command("analyze", cmd_analyze, "prototypes, confidence groups, ridge mapping and structure from DIR/store.zarr")
    p.add_argument("dir", metavar="DIR", help="analysis directory holding store.zarr (from i2x extract)")
    add_analyze_options(p)
    p.add_argument("--device", default="auto", help="cpu keeps FAISS on the CPU; auto/cuda use a FAISS GPU if seen")

    p = command("report", cmd_report, "write DIR/report.html (self-contained, opens offline) and PNG charts in DIR/report/")
    p.add_argument("dir", metavar="DIR", help="analysis directory (after i2x analyze)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG exports of the charts (faster)")

    p = command("finetune", cmd_finetune,
                "curated -> full fine-tuning from the final checkpoint, driven by the uncertain prototypes, "
                "against full -> full (DESIGN D10)")
    p.add_argument("dir", metavar="DIR", help="analysis directory (after i2x run / analyze)")
    p.add_argument("--strategies", type=_names, default=("full-full", "curated-curated", "curated-full"),
                   metavar="A,B", help="stage-1 -> stage-2 data: full-full, curated-curated, curated-full (default all three)")
    p.add_argument("--seeds", type=int, default=5, help="runs per strategy, same seeds across strategies (default 5)")
    p.add_argument("--epochs", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 1), metavar="E1,E2",
                   help="epochs of stage 1 and stage 2 (default 1,1)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3 for sgd, 1e-4 for adam)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="optimizer (default sgd, momentum 0.9)")
    p.add_argument("--min-share", type=float, default=0.1,
                   help="exclude a sample when the uncertain prototype covers at least this share of its cells (0.1)")
    p.add_argument("--pairs", type=_pairs, default="top", metavar="top|all|A,B;C,D",
                   help="which uncertain pairs to curate: top (default: those among the most confused pairs, else the "
                        "highest-scoring one), all, or explicit class pairs by name or index")
    p.add_argument("--exclude", metavar="FILE",
                   help="fine-tune with your own exclusion list instead (JSON list of training indices, or one per line)")
    p.add_argument("--dest", help="output directory (default DIR/finetune)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--concept", type=int, metavar="ID",
                   help="curate a concept of the reliance study (e.g. the suspected shortcut) instead of the "
                        "uncertain pairs: exclude the samples where it covers at least --min-share of the cells")

    p = command("faithfulness", cmd_faithfulness,
                "deletion and insertion tests of the CAMs against a random pixel order, per bucket (tp, fp, random)")
    p.add_argument("dir", metavar="DIR", help="analysis directory (after i2x extract or run)")
    p.add_argument("--checkpoint", default="final", help="checkpoint to test: final (default), first, or a name")
    p.add_argument("--method", type=_names, metavar="A,B", help="CAM methods to test (default: all stored)")
    p.add_argument("--fractions", type=_floats, default=(0.25, 0.5), help="report the confidence drop at these "
                                                                         "removed fractions (default 0.25,0.5)")
    p.add_argument("--steps", type=int, default=20, help="steps of the curves from 0 to 100%% (default 20)")
    p.add_argument("--baseline", choices=("mean", "zero", "blur"), default="mean",
                   help="deletion fill: the data set's mean colour (default), black pixels, or a blurred image")
    p.add_argument("--insertion-baseline", choices=("mean", "zero", "blur"), default="blur",
                   help="insertion start image (default blur: Gaussian kernel 11, sigma 5)")
    p.add_argument("--buckets", type=_names, default=("tp", "fp", "random"), metavar="A,B",
                   help="sample buckets: tp (true positives), fp (false positives), random (default all three)")
    p.add_argument("--per-bucket", type=int, default=12, help="samples per bucket (default 12)")
    p.add_argument("--positive-class", help="fp = predicted as this class but labelled otherwise (default: any error)")
    p.add_argument("--random-draws", type=int, default=5, help="random pixel orders for the baseline (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for bucket sampling and random orders (default 0)")
    p.add_argument("--batch-size", type=int, default=512, help="images per forward batch (default 512)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--trust-checkpoints", action="store_true", help="allow checkpoints that need pickled code")

    p = command("drift", cmd_drift, "how the CAMs move between two checkpoints or training phases, per method")
    p.add_argument("dir", metavar="DIR", help="analysis directory (after i2x extract or run)")
    p.add_argument("--from", dest="from_", default="first", help="first checkpoint: first (default) or a name")
    p.add_argument("--to", default="final", help="second checkpoint: final (default) or a name")
    p.add_argument("--phase-split", help="compare the last checkpoint at or before this step (or 'auto': the last "
                                         "frozen-backbone checkpoint) with the final one")
    p.add_argument("--method", type=_names, metavar="A,B", help="CAM methods (default: all stored)")
    p.add_argument("--top", type=float, default=0.2, help="top share of cells for IoU and concentration (default 0.2)")
    p.add_argument("--stability", choices=("iou", "spearman", "shift_frac"), default="iou",
                   help="metric that ranks classes by stability for the method comparison (default iou)")

    p = command("reliance", cmd_reliance,
                "which prototypes the final model relies on: presence, purity, concentration, deletion and "
                "paste interventions against random baselines, per concept, and a shortcut verdict")
    p.add_argument("dir", metavar="DIR", help="analysis directory (after i2x analyze)")
    p.add_argument("--max-samples", type=int, default=128,
                   help="class samples per prototype whose cells are deleted (default 128)")
    p.add_argument("--recipients", type=int, default=128, help="held-out images per prototype for transplants (128)")
    p.add_argument("--random-draws", type=int, default=3, help="random-cell baselines per intervention (default 3)")
    p.add_argument("--batch-size", type=int, default=512, help="interventions per forward batch (default 512)")
    p.add_argument("--top", type=int, default=5, help="concepts to show in detail (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and random-cell draws (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    p = command("run", cmd_run, "extract + analyze + report in one command")
    p.add_argument("ckpt_dir", metavar="CKPT_DIR", help="directory of training snapshots")
    p.add_argument("--out", required=True, metavar="DIR", help="analysis directory for the store, summary and report")
    add_model_options(p)
    add_data_options(p)
    add_checkpoint_options(p)
    add_extract_options(p)
    add_analyze_options(p)
    p.add_argument("--no-reliance", action="store_true", help="skip the reliance study (shortcut ranking)")

    command("doctor", cmd_doctor, "print versions and GPU visibility, for bug reports")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``i2x`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except UserError as exc:
        print(f"i2x: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("i2x: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
