"""The revisions: fine-tuning that unlearns an artefact, and the controls they are paired with.

* ``augment`` (counterfactual augmentation, A-ClArC in input space): each training image of another class gets the
  artefact pasted from a random carrying image, at the rate the marked class carries it, keeping its label, so the
  artefact stops predicting the class.
* ``rrr`` (right for the right reasons, Ross et al. 2017): cross-entropy plus ``penalty`` times the squared input
  gradient of sum_k log p_k on the artefact's mask, summed over its pixels and averaged over the batch.
* ``rrclarc`` (RR-ClArC, Dreyer et al. 2024): cross-entropy plus ``penalty`` times (v^T grad_a f(x))^2, the
  sensitivity of f = the marked class's logit minus the mean logit to the artefact's direction v at the target
  layer (a CAV: the difference of the mean spatially max-pooled activations of carrying and not carrying images of
  the marked class, unit length).
* ``exclude``: fine-tuning without the carrying samples (the curated set of ``i2x finetune --concept``).
* controls: ``random-patch`` is ``augment`` with the mask shifted to a random place per image (same shape, same
  donors); ``random-exclude`` leaves out as many samples per class as ``exclude``, at random; ``none`` fine-tunes on
  the full set, unchanged.

Every method of one seed sees the same shuffles and draws (a generator seeded by the seed), the same epochs, the
same optimizer from the same start weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from i2x.attribution import get_layer
from i2x.attribution.receptive_field import shifted
from i2x.stages.training import make_optimizer, subset

FIXES = ("augment", "rrclarc", "rrr", "exclude")
CONTROLS = ("random-patch", "random-exclude", "none")
#: the control each fix is paired with: the same intervention without the artefact's place or choice of samples
CONTROL_OF = {"augment": "random-patch", "rrclarc": "random-patch", "rrr": "random-patch", "exclude": "random-exclude"}


@dataclass
class Artefact:
    """What the revisions know of the artefact: its input mask [H, W], carrying training images [D, C, H, W] (the
    donors), the training ids that carry it, the class they mark, the share of that class carrying it, and its
    direction [C] at the target layer ``layer`` (for ``rrclarc``)."""

    mask: torch.Tensor
    donors: torch.Tensor
    carriers: np.ndarray
    marked_class: int
    rate: float
    layer: str = ""
    direction: torch.Tensor | None = None


@dataclass
class Schedule:
    """The same for every method and seed: epochs, optimizer, learning rate, batch size, the penalty of each
    penalised method (rrr, rrclarc), device."""

    epochs: int
    optimizer: str
    lr: float
    batch_size: int
    penalty: dict[str, float]
    device: torch.device


def train_fixed(model: nn.Module, method: str, train_set: Dataset, artefact: Artefact, excluded: np.ndarray,
                seed: int, schedule: Schedule) -> dict[str, Any]:
    """Fine-tune ``model`` in place with ``method``; ``excluded`` are the training ids left out (exclusions only).
    Returns the last epoch's mean loss and the seconds taken."""
    start = time.perf_counter()
    keep = np.setdiff1d(np.arange(len(train_set)), excluded)  # type: ignore[arg-type]
    data = subset(train_set, keep.tolist()) if excluded.size else train_set
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=schedule.batch_size, shuffle=True, generator=generator)
    opt = make_optimizer(model.parameters(), schedule.optimizer, schedule.lr, 0.0)
    mask = artefact.mask.to(schedule.device)
    mean_loss = float("nan")
    model.train()
    for _ in range(schedule.epochs):
        total, count = 0.0, 0
        for x, y in loader:
            if method in ("augment", "random-patch"):
                x = _paste(x, y, artefact, method == "random-patch", generator)
            x, y = x.to(schedule.device), y.to(schedule.device)
            opt.zero_grad(set_to_none=True)
            if method == "rrr":
                loss = _rrr_loss(model, x, y, mask, schedule.penalty[method])
            elif method == "rrclarc":
                loss = _rrclarc_loss(model, x, y, artefact, schedule.penalty[method])
            else:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        mean_loss = total / max(count, 1)
    return {"train_loss": mean_loss, "seconds": round(time.perf_counter() - start, 3)}


def _paste(x: torch.Tensor, y: torch.Tensor, artefact: Artefact, random_place: bool,
           generator: torch.Generator) -> torch.Tensor:
    """The batch with the artefact (or, for the control, a patch of its shape at a random place) pasted from random
    donors into a share ``artefact.rate`` of the images of other classes."""
    chosen = (y != artefact.marked_class) & (torch.rand(len(y), generator=generator) < artefact.rate)
    n = int(chosen.sum())
    donors = artefact.donors[torch.randint(len(artefact.donors), (n,), generator=generator)]
    masks = artefact.mask.expand(n, *artefact.mask.shape)
    if random_place:
        masks = shifted(masks, generator)
    x = x.clone()
    x[chosen] = torch.where(masks[:, None], donors, x[chosen])
    return x


def _rrr_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, penalty: float) -> torch.Tensor:
    """Cross-entropy + penalty * mean over the batch of sum over the mask of (d/dx sum_k log p_k)^2."""
    x = x.detach().requires_grad_()
    logits = model(x)
    (grad,) = torch.autograd.grad(F.log_softmax(logits, dim=1).sum(), x, create_graph=True)
    return F.cross_entropy(logits, y) + penalty * (grad * mask).pow(2).flatten(1).sum(1).mean()


def _rrclarc_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, artefact: Artefact,
                  penalty: float) -> torch.Tensor:
    """Cross-entropy + penalty * mean over the batch of (v^T grad_a f)^2, the gradient summed over the grid."""
    kept: list[torch.Tensor] = []
    handle = get_layer(model, artefact.layer).register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    f = logits[:, artefact.marked_class] - logits.mean(dim=1)
    (grad,) = torch.autograd.grad(f.sum(), kept[0], create_graph=True)
    v = artefact.direction.to(grad.device).view(1, -1, 1, 1)  # type: ignore[union-attr]
    return F.cross_entropy(logits, y) + penalty * (grad * v).sum(dim=(1, 2, 3)).pow(2).mean()


@torch.no_grad()
def concept_direction(model: nn.Module, layer: str, carrying: torch.Tensor, clean: torch.Tensor,
                      device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """The artefact's direction [C] at ``layer``: mean spatially max-pooled activation of ``carrying`` images minus
    that of ``clean`` images (of the same class), unit length."""
    pooled = []
    was_training = model.training
    model.eval()
    kept: list[torch.Tensor] = []
    handle = get_layer(model, layer).register_forward_hook(lambda _m, _i, out: kept.append(out.amax(dim=(2, 3))))
    try:
        for images in (carrying, clean):
            kept.clear()
            for lo in range(0, len(images), batch_size):
                model(images[lo:lo + batch_size].to(device))
            pooled.append(torch.cat(kept).float().mean(dim=0).cpu())
    finally:
        handle.remove()
        model.train(was_training)
    v = pooled[0] - pooled[1]
    return v / v.norm().clamp(min=1e-12)
