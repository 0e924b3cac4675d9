"""Interventions on a classifier for the reliance study: replace a layer's output at chosen grid cells
(deletion), paste input pixels from donor images (transplant), and the margin they are scored by."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from i2x.attribution.tokens import Layout, from_map, to_map
from i2x.errors import UserError
from i2x.io.store import chunk_ranges


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logit of ``target`` minus the best other logit, per row [B]."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return own - others.max(dim=1).values


class CellReplacement:
    """A forward hook that replaces a layer's output at chosen grid cells by a fill vector (per channel).

    :meth:`run` sets the cells for one forward; otherwise the layer is left alone. Many interventions on
    one image need not run the network before the layer again: with ``expand`` the hook repeats each
    image's output at the layer once per intervention (``counts``) and edits the copies. That needs a
    network whose later part uses nothing but the layer's output (true of plain stacks and of a whole
    ResNet stage), which :meth:`can_expand` checks; otherwise the images themselves are repeated.
    """

    def __init__(self, layer: nn.Module, fill: torch.Tensor, layout: Layout = Layout("bchw")) -> None:
        self.fill = fill
        self.layout = layout
        self._mask: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if self._mask is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise UserError("reliance: the target layer's output is not a tensor")
        if self._counts is not None:
            output = output.repeat_interleave(self._counts.to(output.device), dim=0)
        grid = to_map(output, self.layout)
        if tuple(self._mask.shape) != (grid.shape[0], *grid.shape[2:]):
            raise ValueError(f"cell mask {tuple(self._mask.shape)} does not fit the layer's grid {tuple(grid.shape)}")
        fill = self.fill.to(device=output.device, dtype=output.dtype).view(1, -1, 1, 1)
        return from_map(torch.where(self._mask[:, None].to(output.device), fill, grid), output, self.layout)

    @torch.no_grad()
    def run(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, counts: torch.Tensor,
            expand: bool) -> torch.Tensor:
        """Logits [I, M] of images [B, ...] under cell masks [I, h, w]; image b takes the next ``counts[b]``
        masks (I = counts.sum()). An all-False mask gives the plain logits."""
        self._mask, self._counts = masks, (counts if expand else None)
        try:
            return model(images if expand else images.repeat_interleave(counts.to(images.device), dim=0))
        finally:
            self._mask = self._counts = None

    def can_expand(self, model: nn.Module, images: torch.Tensor, grid: tuple[int, int]) -> bool:
        """Whether expansion at the layer gives the same logits as a plain forward (tried on two images)."""
        x = images[:2]
        if len(x) < 2:
            return False
        with torch.no_grad():
            plain = model(x)
        counts = torch.tensor([2, 1])
        try:
            expanded = self.run(model, x, torch.zeros(3, *grid, dtype=torch.bool), counts, expand=True)
        except RuntimeError:
            return False
        return expanded.shape == (3, plain.shape[1]) and torch.allclose(
            expanded, plain.repeat_interleave(counts.to(plain.device), dim=0), rtol=1e-4, atol=1e-5)

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()

    def __enter__(self) -> "CellReplacement":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deletion_margins(model: nn.Module, replacement: CellReplacement, images: torch.Tensor, labels: torch.Tensor,
                     masks: torch.Tensor, counts: torch.Tensor, batch_size: int = 512,
                     expand: bool = False) -> torch.Tensor:
    """True-class margins [I] of images [B, ...] (labels [B]) under cell masks [I, h, w], image b taking the
    next ``counts[b]`` masks; images are grouped so that a forward holds about ``batch_size`` interventions."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    out = torch.empty(int(ends[-1]) if len(ends) else 0)
    lo = 0
    while lo < len(counts):  # one iteration per forward batch
        hi = max(lo + 1, int(torch.searchsorted(ends, starts[lo] + batch_size, right=True)))
        a, b = int(starts[lo]), int(ends[hi - 1])
        logits = replacement.run(model, images[lo:hi].to(device), masks[a:b].to(device), counts[lo:hi], expand)
        out[a:b] = margin(logits.float(), labels[lo:hi].to(device).repeat_interleave(counts[lo:hi].to(device))).cpu()
        lo = hi
    return out


@torch.no_grad()
def transplant_logits(model: nn.Module, recipients: torch.Tensor, donors: torch.Tensor, masks: torch.Tensor,
                      batch_size: int = 512) -> torch.Tensor:
    """Logits [R, V, M] of recipients [R, C, H, W] after pasting donors [R, C, H, W] at each input-pixel mask
    ``masks`` [R, V, H, W] (recipient r gets donor r's pixels, at the same place)."""
    r, v = masks.shape[:2]
    device = next(iter(model.parameters()), torch.empty(0)).device
    flat = masks.reshape(r * v, 1, *masks.shape[2:])
    out = []
    for lo, hi in chunk_ranges(r * v, batch_size):
        rows = torch.arange(lo, hi) // v
        paste = flat[lo:hi].to(device)
        x = torch.where(paste, donors[rows].to(device), recipients[rows].to(device))
        out.append(model(x).float().cpu())
    return torch.cat(out).view(r, v, -1)


def random_cells(counts: np.ndarray, draws: int, grid: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Bool masks [S, draws, h, w]: for sample s, ``counts[s]`` grid cells drawn uniformly without replacement."""
    h, w = grid
    rank = np.argsort(rng.random((len(counts), draws, h * w)), axis=2).argsort(axis=2)
    return (rank < counts[:, None, None]).reshape(len(counts), draws, h, w)

