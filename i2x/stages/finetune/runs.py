"""The fine-tuning runs: every strategy and seed from the start weights, each run trained through its two
stages, evaluated on the test split and saved with a fingerprint so an interrupted study resumes."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from i2x.io.workdir import write_bytes, write_json
from i2x.stages.context import Context
from i2x.stages.finetune.curation import Pair, pair_label
from i2x.stages.training import TrainConfig, evaluate, make_optimizer, subset, train_epochs
from i2x.stages.finetune.config import FinetuneConfig, Plan


def _with_controls(sets: dict[str, Dataset], controls: dict[str, dict[int, np.ndarray]],
                   seed: int) -> dict[str, Dataset]:
    """The training sets of one run: full, curated, and each control's set for that seed."""
    n_train = len(sets["full"])  # type: ignore[arg-type]
    return {**sets, **{name: subset(sets["full"], np.setdiff1d(np.arange(n_train), by_seed[seed]).tolist())
                       for name, by_seed in controls.items()}}


def run_all(ctx: Context, sets: dict[str, Dataset], controls: dict[str, dict[int, np.ndarray]],
             cfg: FinetuneConfig, plan: Plan, dest_dir: Path,
             fingerprint: str, start_name: str, evaluate_on_test: Callable[[nn.Module], dict[str, Any]],
             progress: bool) -> list[dict[str, Any]]:
    """Every strategy and seed from the start weights, reusing finished runs with the same fingerprint."""
    model = ctx.model
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_cfg = TrainConfig(batch_size=cfg.batch_size, progress=progress)
    runs = []
    bar = tqdm(total=len(plan.strategies) * len(plan.seeds), desc="fine-tuning", disable=not progress)
    for stages in plan.strategies:
        strategy = "-".join(stages)
        for seed in plan.seeds:
            bar.set_postfix(strategy=strategy, seed=seed)
            run_path = dest_dir / "runs" / strategy / f"seed{seed}"
            record = _reuse(run_path, fingerprint)
            if record is None:
                model.load_state_dict(start_state)
                record = _run_one(model, stages, plan.epochs, _with_controls(sets, controls, seed), seed, train_cfg,
                                  cfg.optimizer, plan.lr, ctx.device)
                record.update(evaluate_on_test(model))
                record.update({"strategy": strategy, "fingerprint": fingerprint})
                _save_run(run_path, model, record, start_name)
            runs.append(record)
            bar.update()
    bar.close()
    return runs


def _run_one(model: nn.Module, stages: tuple[str, ...], epochs: tuple[int, int], sets: dict[str, Dataset], seed: int,
             cfg: TrainConfig, optimizer: str, lr: float, device: torch.device) -> dict[str, Any]:
    """Train ``model`` (already at the start state) through the two stages; returns the losses and the time."""
    start = time.perf_counter()
    opt = make_optimizer(model.parameters(), optimizer, lr, 0.0)
    losses = []
    for i, (part, n_epochs) in enumerate(zip(stages, epochs)):
        if n_epochs == 0:
            continue
        stage_seed = _stage_seed(seed, i)
        torch.manual_seed(stage_seed)
        generator = torch.Generator().manual_seed(stage_seed)
        loss = train_epochs(model, sets[part], cfg, n_epochs, generator, device, opt, desc=f"stage {i + 1} ({part})")
        losses.append({"stage": i + 1, "set": part, "epochs": n_epochs, "train_loss": loss})
    return {"seed": seed, "stages": losses, "seconds": round(time.perf_counter() - start, 3)}


def _stage_seed(seed: int, stage: int) -> int:
    """A seed that depends on (seed, stage) only, so strategies share the stream of a stage."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1, dtype=np.uint64)[0] >> 1)


def evaluate_run(model: nn.Module, test_set: Dataset, labels: np.ndarray, device: torch.device, pairs: list[Pair],
              names: list[str]) -> dict[str, Any]:
    """Test accuracy, loss, the confusion matrix and each pair's confusions (a->b, b->a, total)."""
    acc, loss, preds = evaluate(model, test_set, device)
    m = len(names)
    cm = np.bincount(labels * m + preds.numpy(), minlength=m * m).reshape(m, m)
    confusions = {
        pair_label((a, b), names): {f"{names[a]}->{names[b]}": int(cm[a, b]), f"{names[b]}->{names[a]}": int(cm[b, a]),
                                    "total": int(cm[a, b] + cm[b, a])}
        for a, b in pairs
    }
    return {"accuracy": acc, "test_loss": loss, "confusions": confusions, "confusion_matrix": cm.tolist()}


def run_fingerprint(settings: dict[str, Any], ids: np.ndarray,
                 controls: dict[str, dict[int, np.ndarray]] | None = None) -> str:
    """What a saved run must match to be reused: the settings that change results, and the excluded ids."""
    keys = ("start_checkpoint", "epochs", "optimizer", "lr", "batch_size", "train_size")
    extra = {f"ids_{name}": {str(seed): v.tolist() for seed, v in by_seed.items()}
             for name, by_seed in (controls or {}).items()}
    payload = json.dumps({**{k: settings[k] for k in keys}, "ids": ids.tolist(), **extra}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _reuse(run_path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A finished run's record if it was made with the same settings (resume after an interruption)."""
    meta = run_path.with_suffix(".json")
    if not (meta.is_file() and run_path.with_suffix(".pt").is_file()):
        return None
    record = json.loads(meta.read_text())
    return record if record.get("fingerprint") == fingerprint else None


def _save_run(run_path: Path, model: nn.Module, record: dict[str, Any], start_name: str) -> None:
    """The run's weights (loadable as an i2x checkpoint), then its metrics: the .json marks the run as done."""
    run_path.parent.mkdir(parents=True, exist_ok=True)
    run_path.with_suffix(".json").unlink(missing_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "strategy": record["strategy"], "seed": record["seed"],
                "start_checkpoint": start_name, "metrics": {"accuracy": record["accuracy"]}}, buffer)
    write_bytes(run_path.with_suffix(".pt"), buffer.getvalue())
    write_json(run_path.with_suffix(".json"), record)
