"""The reference trainer: a plain PyTorch loop that leaves one snapshot per epoch.

It exists so the demo and the tests have real training trajectories; users bring their own.
Each snapshot is ``{"state_dict", "epoch", "step", "metrics"}`` in ``epoch_<E>.pt``.
``freeze_backbone_epochs`` trains only the classifier head (the last ``nn.Linear``) for the
first N epochs, the rest of the model fixed (weights and BatchNorm statistics), then everything:
the two-phase (transfer, then fine-tune) run of the drift study.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from i2x.io.devices import resolve_device
from i2x.io.location import is_remote
from i2x.io.segnets import pixel_logits
from i2x.errors import UserError
from i2x.settings import device_option, option, validate
from i2x.io.workdir import refuse_symlink, write_bytes
from i2x.io.datasets import CLASSIFICATION, TASKS


@dataclass
class TrainConfig:
    """Settings of the reference trainer."""

    epochs: int = option(10, "number of epochs", low=1)
    batch_size: int = option(64, "batch size", low=1)
    lr: float = option(1e-3, "learning rate", low=0, low_open=True)
    optimizer: str = option("adam", "optimizer", choices=("adam", "sgd"))
    weight_decay: float = option(0.0, "L2 weight decay", low=0, cli=False)
    seed: int = option(0, "random seed (initial weights and shuffling)")
    save_every: int = option(1, "save a snapshot every N epochs (and after the last)", low=1, metavar="N")
    freeze_backbone_epochs: int = option(0, "train only the classifier head for the first N epochs, then everything "
                                         "(two-phase run)", low=0, metavar="N")
    device: str = device_option()
    progress: bool = option(True, "show progress bars", cli=False)
    overwrite: bool = option(False, "write into a non-empty folder, deleting its epoch_*.pt snapshots first")
    task: str = option(CLASSIFICATION, "what the model learns: a class per image, or a class per pixel "
                       "(segmentation data and a segmentation model, e.g. --model small-segnet)",
                       choices=TASKS)


@dataclass
class TrainResult:
    """What a training run produced: snapshot paths and the per-epoch metrics."""

    checkpoints: list[Path] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    test_accuracy: float = float("nan")
    seconds: float = 0.0


def outputs(output: object) -> torch.Tensor:
    """The logits of a model's output: ``[B, M]``, or per pixel ``[B, M, H, W]`` (torchvision's dict under ``out``)."""
    return pixel_logits(output) if isinstance(output, dict) else output  # type: ignore[return-value]


def head_module(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear``: the classifier head kept trainable in a frozen-backbone phase."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("--freeze-backbone-epochs: the model has no nn.Linear head to train alone")
    return linears[-1]


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or Adam over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"--optimizer {name}: choose sgd or adam")


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512) -> tuple[float, float, torch.Tensor]:
    """Accuracy, mean cross-entropy and the predictions of ``model`` on ``dataset`` (eval mode, restored after);
    per pixel for a segmentation model."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum, preds = 0, 0, 0.0, []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits = outputs(model(x.to(device)))
        y = y.to(device)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(1)
        correct += int((pred == y).sum())
        total += y.numel()
        preds.append(pred.cpu())
    model.train(was_training)
    return correct / max(total, 1), loss_sum / max(total, 1), \
        torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def train_epochs(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    epochs: int,
    generator: torch.Generator,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    desc: str = "train",
    train_only: nn.Module | None = None,
) -> float:
    """Run ``epochs`` epochs of cross-entropy training in place; returns the mean loss of the last epoch.

    With ``train_only`` (a frozen backbone's head) every other module stays in eval mode, so the
    backbone's BatchNorm statistics stay frozen along with its weights.
    """
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator)
    mean_loss = float("nan")
    for _ in range(epochs):
        model.train(train_only is None)
        if train_only is not None:
            train_only.train()
        total, count = 0.0, 0
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not cfg.progress):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(outputs(model(x)), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        mean_loss = total / max(count, 1)
    return mean_loss


def _snapshot_dir(out: Path, overwrite: bool) -> Path:
    """Create the snapshot folder; a non-empty one is refused unless ``overwrite`` (which deletes its
    ``epoch_*.pt`` first), so the snapshots of two runs never mix in one folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a directory; choose another --out")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        raise UserError(f"--out {out}: the folder is not empty (it holds {', '.join(held[:3])}"
                        f"{', ...' if len(held) > 3 else ''}); the snapshots of two runs would mix. Choose an empty or "
                        "new folder, or pass --overwrite to delete its epoch_*.pt snapshots first")
    for old in out.glob("epoch_*.pt") if held else ():
        refuse_symlink(old)
        old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(model: nn.Module, train_set: Dataset, test_set: Dataset, out: str | Path, cfg: TrainConfig) -> TrainResult:
    """Train ``model`` and write a snapshot every ``save_every`` epochs (and after the last) into ``out``."""
    validate(cfg)
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise UserError("the training split is empty")
    if is_remote(out):
        raise UserError(f"--out {out}: training writes its snapshots to a local directory; upload them afterwards "
                        "(e.g. aws s3 sync) and give i2x run their URL")
    created = not Path(out).exists()
    out = _snapshot_dir(Path(out), cfg.overwrite)
    try:
        return _train(model, train_set, test_set, out, cfg)
    except BaseException:
        if created and not any(out.iterdir()):  # failed before its first snapshot: leave no empty folder behind
            out.rmdir()
        raise


def _train(model: nn.Module, train_set: Dataset, test_set: Dataset, out: Path, cfg: TrainConfig) -> TrainResult:
    """The training loop of :func:`train`, into the snapshot folder ``out``."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    result = TrainResult()
    start = time.perf_counter()
    step = 0
    steps_per_epoch = -(-len(train_set) // cfg.batch_size)  # type: ignore[arg-type]
    frozen = cfg.freeze_backbone_epochs > 0
    head = head_module(model) if frozen else None
    backbone = _freeze_all_but(model, head) if head is not None else []
    params = head.parameters() if head is not None else model.parameters()
    optimizer = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay)
    bar = tqdm(range(1, cfg.epochs + 1), desc="epochs", disable=not cfg.progress)
    for epoch in bar:
        if frozen and epoch == cfg.freeze_backbone_epochs + 1:
            frozen = False
            for p in backbone:
                p.requires_grad_(True)
            optimizer = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
        phase = "frozen-backbone" if frozen else "full"
        train_loss = train_epochs(model, train_set, cfg, 1, generator, device, optimizer, desc=f"epoch {epoch}",
                                  train_only=head if frozen else None)
        step += steps_per_epoch
        acc, loss, _ = evaluate(model, test_set, device)
        metrics = {"train_loss": train_loss, "test_loss": loss, "test_accuracy": acc, "phase": phase}
        result.history.append({"epoch": epoch, "step": step, **metrics})
        bar.set_postfix(acc=f"{acc:.3f}", loss=f"{train_loss:.3f}")
        if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
            path = out / f"epoch_{epoch}.pt"
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            buffer = io.BytesIO()
            torch.save({"state_dict": state, "epoch": epoch, "step": step, "metrics": metrics}, buffer)
            write_bytes(path, buffer.getvalue())
            result.checkpoints.append(path)
    for p in backbone:  # a run that ends inside the frozen phase still returns a trainable model
        p.requires_grad_(True)
    result.test_accuracy = result.history[-1]["test_accuracy"]
    result.seconds = time.perf_counter() - start
    return result


def _freeze_all_but(model: nn.Module, head: nn.Module) -> list[nn.Parameter]:
    """Stop gradients to every trainable parameter outside ``head`` (cheaper than computing unused
    gradients, and the backbone cannot move); returns them so they can be unfrozen later."""
    in_head = {id(p) for p in head.parameters()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in in_head]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def subset(dataset: Dataset, keep: Iterable[int]) -> Dataset:
    """The samples of ``dataset`` at the indices ``keep`` (used by curated fine-tuning)."""
    return Subset(dataset, list(keep))
