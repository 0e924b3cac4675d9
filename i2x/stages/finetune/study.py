"""Curated -> full fine-tuning driven by uncertain prototypes (D10 in docs/ARCHITECTURE.md), the paper's closing experiment.

The curated training set leaves out every training sample of class a or b of a flagged pair
(a, b) in which one of the pair's uncertain prototypes covers at least ``min_share`` of the grid
cells (``analysis/share``), the union over the flagged pairs. Only the uncertain prototypes the
analysis found significant (``significant`` in summary.json: flips beyond their standard errors,
and more than the null model expects) count, unless ``all_uncertain``. Each strategy ``X-Y`` starts from
the final (last finite) checkpoint, trains ``epochs[0]`` epochs on set X and then ``epochs[1]``
on set Y (X, Y in {full, curated}; a strategy ``X`` alone trains stage 1 only, the paper's "1 epoch" rows).
Two control sets leave out as many samples per class as the curated one: ``random`` and ``cartography``
(the most ambiguous; see ``stages/controls``), so ``random-full`` asks whether any exclusion of that
size would do as well. ``--study`` runs all seven rows over 10 seeds. Every run is evaluated on the test
split for accuracy and the confusions of each pair (a->b plus b->a), and the strategies are compared
over the same seeds.

Choices the paper leaves open, and why:

* Optimizer: SGD with momentum 0.9 and lr 1e-3 by default. Its steps scale with the gradient, so
  a converged model moves only where the loss still is (the hard, confused samples); a freshly
  created Adam state takes steps of about lr on every weight from the first batch, whatever the
  gradient, which perturbs a converged model. With ``optimizer="adam"`` the default lr is 1e-4,
  a tenth of the reference trainer's from-scratch 1e-3, the usual fine-tuning reduction. One
  optimizer serves both stages (one fine-tuning run whose data changes), no weight decay.
  These defaults were fixed before looking at any result and are not tuned on the demo.
* Seeds: stage ``i`` of the run with seed ``s`` seeds its shuffle and torch's global RNG (dropout)
  from ``(s, i)`` alone. So for one seed every strategy sees the same shuffle and dropout stream in
  a stage with the same data, e.g. the full stage 2 of curated->full and full->full: the
  comparison is paired, and the differences per seed are reported with their mean ± std.
* Statistics: ± is the sample standard deviation (ddof=1) over seeds, 0 for a single seed; paired
  differences also get a bootstrap interval over seeds and Wilcoxon / sign-test p-values (``metrics/paired``).
* Resuming: each finished run leaves ``runs/<strategy>/seed<k>.pt`` and ``.json`` with a fingerprint
  of the settings and the excluded ids; rerunning with the same settings reuses them.
* Runs on CUDA are not forced to be deterministic; on the CPU the same seed gives bit-identical weights.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from i2x.errors import UserError
from i2x.io.data import labels_of
from i2x.io.location import is_remote
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import (FINETUNE, FINETUNE_DIR, AnalysisDir, claim, load_summary, refuse_foreign, refuse_links,
                             write_json)
from i2x.settings import validate
from i2x.stages.context import Context, open_context, open_data
from i2x.stages.finetune.controls import CONTROLS, control_exclusions
from i2x.stages.finetune.curation import (EXCLUDED_NAME, Curation, choose_exclusions, excluded_record, fallback_pairs,
                                 print_curation, write_excluded)
from i2x.stages.finetune.results import FinetuneResult, format_table, paired_differences, per_strategy
from i2x.stages.finetune.runs import evaluate_run, run_all, run_fingerprint
from i2x.stages.training import subset
from i2x.stages.finetune.config import DEFAULT_LR, DEFAULT_SEEDS, FinetuneConfig, Plan, SET_NAMES, STUDY_SEEDS, STUDY_STRATEGIES


def finetune(out_dir: str | Path | AnalysisDir, config: FinetuneConfig | None = None, progress: bool = True,
             **options: Any) -> FinetuneResult:
    """Fine-tune the final checkpoint of the analysis in ``out_dir`` with each strategy and seed; print the table.

    Pass a :class:`FinetuneConfig` or its fields as keyword arguments. ``strategies`` are ``X-Y`` with X,
    Y in {full, curated}; ``seeds`` is a count (0..n-1) or a list; ``pairs``: ``"top"`` (default) curates
    the uncertain prototypes whose class pair is among the final checkpoint's most confused pairs, or
    else the single highest-scoring one (the paper curates one pair; the union of every flagged pair can
    remove most of the data); ``"all"`` takes every flagged pair; a list of (a, b) names or indices picks
    pairs. ``exclude_file`` replaces the curation rule by a list of training-split indices. ``all_uncertain``:
    curate from every flagged prototype, not only the significant ones. ``concept`` curates a concept of the
    reliance study instead (a suspected shortcut). Shares count a concept's cells (the union of its
    prototypes) whenever reliance.json is present. Results go to ``dest`` (default ``out_dir/finetune``).
    """
    cfg = config or FinetuneConfig(**options)
    validate(cfg)
    start_time = time.perf_counter()
    if is_remote(out_dir) or (cfg.dest is not None and is_remote(cfg.dest)):
        raise UserError(f"i2x finetune {out_dir}: fine-tuning writes model snapshots to a local directory; copy the "
                        "analysis directory from object storage first (e.g. aws s3 sync) and run it there")
    out = Path(str(out_dir))
    dest_dir = Path(cfg.dest) if cfg.dest is not None else out / FINETUNE_DIR
    if cfg.dest is None:
        refuse_links(out)
    else:  # before any work: a file, or a folder i2x did not make, is refused
        refuse_foreign(dest_dir, option="--dest")
    plan = Plan(_parse_strategies(STUDY_STRATEGIES if cfg.study else cfg.strategies),
                _seed_list(cfg.seeds if cfg.seeds is not None else STUDY_SEEDS if cfg.study else DEFAULT_SEEDS),
                _check_epochs(cfg.epochs), _check_lr(cfg.optimizer, cfg.lr))
    if cfg.study and not any(plan.epochs):  # seven identical rows and a verdict on them
        raise UserError(f"--epochs {','.join(map(str, plan.epochs))}: no epoch at all, so every row of the study "
                        "would be the start checkpoint unchanged; give at least one epoch (e.g. 1,1)")
    with locked(out):  # nothing may rewrite the analysis while the curation reads it
        store, summary = Store.open(out), load_summary(out)
        names = store.class_names
        _, data = open_data(store, cfg.trust_analysis)
        train_set, test_set = data.split("train"), data.split("test")
        curation = choose_exclusions(store, summary, names, labels_of(train_set), cfg.min_share, cfg.pairs,
                             cfg.exclude_file, cfg.all_uncertain, cfg.concept)
        controls = control_exclusions(store, curation.ids, labels_of(train_set),
                                      {part for s in plan.strategies for part in s} & set(CONTROLS), plan.seeds)
        start_t, start_name, start_sha = _start_checkpoint(store)
        ctx = open_context(store, start_t, cfg.device, cfg.batch_size, cfg.trust_checkpoints, cfg.trust_analysis,
                           cfg.model)
    report_pairs = list(curation.pairs) or fallback_pairs(summary)
    print_curation(curation, names, cfg.min_share)
    sets = _training_sets(train_set, curation, plan)
    settings = _settings(out, cfg, plan, curation, ctx, start_name, start_sha, len(test_set))
    with locked(out), locked(dest_dir, enabled=dest_dir.resolve() != out.resolve()):
        if cfg.dest is not None:
            claim(dest_dir, {"finetune_of": str(out.resolve())}, option="--dest")
        write_excluded(dest_dir / EXCLUDED_NAME, curation, names, cfg.min_share, controls)
        evaluate_on_test = partial(evaluate_run, test_set=test_set, labels=labels_of(test_set), device=ctx.device,
                                   pairs=report_pairs, names=names)
        start = evaluate_on_test(ctx.model)
        runs = run_all(ctx, sets, controls, cfg, plan, dest_dir, run_fingerprint(settings, curation.ids, controls),
                        start_name, evaluate_on_test, progress)
        result = FinetuneResult(
            dest=dest_dir, settings=settings, class_names=names, pairs=report_pairs,
            excluded=excluded_record(curation, names, controls), start=start, runs=runs,
            strategies=per_strategy(runs, settings["strategies"], report_pairs, names),
            paired=paired_differences(runs, settings["strategies"], report_pairs, names),
            seconds=time.perf_counter() - start_time,
        )
        write_json(dest_dir / FINETUNE, result.to_dict(), indent=2)
    print(format_table(result))
    return result


def _training_sets(train_set: Dataset, curation: Curation, plan: Plan) -> dict[str, Dataset]:
    """The full and the curated training set; an empty curated set is refused when a stage trains on it."""
    keep = np.setdiff1d(np.arange(curation.n_train), curation.ids)
    if keep.size == 0 and any(e > 0 and part != "full" for s in plan.strategies for part, e in zip(s, plan.epochs)):
        raise UserError("the curated set is empty (every training sample is excluded); raise --min-share or "
                        "exclude fewer ids")
    return {"full": train_set, "curated": subset(train_set, keep.tolist())}


def _settings(out: Path, cfg: FinetuneConfig, plan: Plan, curation: Curation, ctx: Context, start_name: str,
              start_sha: str, test_size: int) -> dict[str, Any]:
    """The settings recorded in ``finetune.json``; their fingerprint decides which finished runs are reused."""
    return {
        "analysis": str(out.resolve()),
        "start_checkpoint": {"name": start_name, "sha256": start_sha},
        "strategies": ["-".join(s) for s in plan.strategies],
        "seeds": plan.seeds,
        "epochs": list(plan.epochs),
        "optimizer": cfg.optimizer,
        "lr": plan.lr,
        "momentum": 0.9 if cfg.optimizer == "sgd" else None,
        "weight_decay": 0.0,
        "batch_size": cfg.batch_size,
        "min_share": cfg.min_share if cfg.exclude_file is None else None,
        "uncertain_used": None if cfg.exclude_file is not None else "all" if cfg.all_uncertain else "significant",
        "exclusion_source": curation.source,
        "device": str(ctx.device),
        "torch": torch.__version__,
        "train_size": curation.n_train,
        "test_size": test_size,
        "std": "sample standard deviation over seeds (ddof=1; null for one seed: no interval)",
    }


def _parse_strategies(strategies: Sequence[str]) -> list[tuple[str, ...]]:
    """``["curated-full", "full", ...]`` as (stage 1 set[, stage 2 set]) tuples, in the given order, duplicates
    dropped; a single set trains stage 1 only (the paper's "1 epoch" rows)."""
    if isinstance(strategies, str):
        strategies = [strategies]
    plan: list[tuple[str, ...]] = []
    for s in strategies:
        parts = tuple(p.strip() for p in s.replace("->", "-").split("-"))
        if len(parts) not in (1, 2) or any(p not in SET_NAMES for p in parts):
            raise UserError(f"--strategies {s}: write each strategy as X-Y (or X for stage 1 only) with X and Y in "
                            f"{', '.join(SET_NAMES)} (e.g. curated-full)")
        if parts not in plan:
            plan.append(parts)  # type: ignore[arg-type]
    if not plan:
        raise UserError("--strategies: give at least one, e.g. full-full,curated-full")
    return plan


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise UserError(f"--seeds {seeds}: give at least one seed")
        return list(range(seeds))
    seed_list = list(dict.fromkeys(int(s) for s in seeds))
    if not seed_list or min(seed_list) < 0:
        raise UserError(f"--seeds {seeds}: give a count or a list of non-negative seeds")
    return seed_list


def _check_epochs(epochs: Sequence[int]) -> tuple[int, int]:
    if len(epochs) != 2 or any(int(e) != e or e < 0 for e in epochs):
        raise UserError(f"--epochs {epochs}: give two non-negative whole numbers (stage 1, stage 2), e.g. 1,1")
    return int(epochs[0]), int(epochs[1])


def _check_lr(optimizer: str, lr: float | None) -> float:
    if optimizer not in DEFAULT_LR:
        raise UserError(f"--optimizer {optimizer}: choose sgd or adam")
    if lr is None:
        return DEFAULT_LR[optimizer]
    if not lr > 0:
        raise UserError(f"--lr {lr}: the learning rate must be positive")
    return float(lr)


def _start_checkpoint(store: Store) -> tuple[int, str, str]:
    """Store index, name and sha256 of the last checkpoint whose weights are finite: where every run starts."""
    finite = np.flatnonzero(store.read("finite").astype(bool) & store.done())
    if finite.size == 0:
        raise UserError(f"{store.path}: no finished checkpoint with finite weights to fine-tune from")
    record = store.checkpoints[int(finite[-1])]
    return int(finite[-1]), record["name"], record["sha256"]


__all__ = ["finetune", "FinetuneConfig", "format_table", "STUDY_STRATEGIES", "FinetuneResult"]
