"""Region targets: explain a segmentation model's evidence for class c over a region of the image.

A segmentation model gives per-pixel logits ``z[B, M, H, W]``. The score explained for a row (an image and
a class c) is the class's logit averaged over a region R: ``S_c = sum_{p in R} z_c(p) / |R|``, the
score of c summed over R scaled by the constant ``1 / |R|`` so that a softmax over the classes' scores is
the probability of each class in the region. R is the ground-truth region of c or the predicted one
(the pixels whose argmax is c; the ground truth where the model predicts no pixel of c).

:class:`RegionModel` wraps the model so that it returns ``S[B, M]`` for the regions it is given: every
classifier tool then explains the region unchanged. The CAM methods take the gradient of ``S_c`` at the
target layer (GradCAM's channel weights, LayerCAM's per-cell ReLU(gradient)); occlusion
(:func:`region_occlusion`) and DEA measure the drop of ``softmax(S)_c`` when a cell's footprint is hidden,
the region held fixed.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from i2x.attribution.layers import _forward_outputs
from i2x.attribution.occlusion import cell_of_pixel
from i2x.errors import UserError
from i2x.io.segnets import pixel_logits


def fit_regions(regions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boolean regions ``[B, H, W]`` brought to the logits' size (nearest neighbour)."""
    if tuple(regions.shape[-2:]) == tuple(size):
        return regions.bool()
    return F.interpolate(regions[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


def region_scores(logits: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Every class's logit averaged over each sample's region: ``[B, M]`` from ``[B, M, H, W]`` and ``[B, H, W]``;
    an empty region scores 0."""
    r = fit_regions(regions.to(logits.device), tuple(logits.shape[-2:])).to(logits.dtype)
    return torch.einsum("bmhw,bhw->bm", logits, r) / r.sum(dim=(1, 2)).clamp_min(1)[:, None]


def predicted_regions(logits: torch.Tensor, classes: torch.Tensor, truth: torch.Tensor | None = None) -> torch.Tensor:
    """The pixels predicted as each row's class ``[B, H, W]``; rows with none take ``truth`` when given."""
    pred = logits.argmax(1) == classes.to(logits.device)[:, None, None]
    if truth is not None:
        empty = ~pred.flatten(1).any(1)
        pred[empty] = fit_regions(truth.to(logits.device), tuple(logits.shape[-2:]))[empty]
    return pred


class RegionModel(nn.Module):
    """A segmentation model seen as a classifier of regions: ``forward(x)`` returns ``S[B, M]`` (module docstring).

    Set the regions with :meth:`over`; a batch ``k`` times as long as the regions (the fractions of a deletion
    curve, stacked) reuses them in order. With ``predicted=True`` each forward takes the predicted region of the
    row's class from its own logits (the given regions fill in where none is predicted).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.regions: torch.Tensor | None = None
        self.classes: torch.Tensor | None = None
        self.predicted = False

    @contextmanager
    def over(self, regions: torch.Tensor, classes: torch.Tensor | None = None, predicted: bool = False) -> Iterator[None]:
        """Score the regions ``[B, H, W]`` (of rows of ``classes`` [B], needed when ``predicted``) within the block."""
        if predicted and classes is None:
            raise ValueError("predicted regions need the rows' classes")
        self.regions, self.classes, self.predicted = regions, classes, predicted
        try:
            yield
        finally:
            self.regions, self.classes, self.predicted = None, None, False

    def pixel_logits(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_logits(self.model(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.regions is None:
            raise RuntimeError("RegionModel: call it inside `with model.over(regions):`")
        logits = self.pixel_logits(x)
        reps, rest = divmod(x.shape[0], self.regions.shape[0])
        if rest or not reps:
            raise RuntimeError(f"RegionModel: a batch of {x.shape[0]} for {self.regions.shape[0]} regions")
        regions = self.regions.repeat(reps, 1, 1)
        if self.predicted:
            assert self.classes is not None
            regions = predicted_regions(logits.detach(), self.classes.repeat(reps), regions)
        return region_scores(logits, regions)


def region_occlusion(model: RegionModel, images: torch.Tensor, targets: torch.Tensor, regions: torch.Tensor,
                     grid: tuple[int, int], colour: Sequence[float] | None = None) -> torch.Tensor:
    """Occlusion maps ``[B, h, w]`` (CPU float32) of region scores: ReLU of the drop of ``softmax(S)_c`` when a cell's
    input footprint is filled with ``colour`` (default 0, the mean of normalised inputs), each row's region fixed.
    Rows that share an image (several classes of one image) share its occluded forwards."""
    unique, inverse = torch.unique(images.flatten(1), dim=0, return_inverse=True)
    unique = unique.view(-1, *images.shape[1:])
    c, hh, ww = images.shape[1:]
    footprint = cell_of_pixel((hh, ww), grid).to(images.device)
    value = torch.zeros(c, dtype=images.dtype, device=images.device) if colour is None else \
        torch.as_tensor(colour, dtype=images.dtype, device=images.device)
    target = targets.to(images.device).long()[:, None]

    def probs(x: torch.Tensor) -> torch.Tensor:
        return region_scores(model.pixel_logits(x)[inverse], regions).softmax(1).gather(1, target)[:, 0]

    with torch.no_grad():
        base = probs(unique)
        drops = [base - probs(torch.where((footprint == cell)[None, None], value.view(1, -1, 1, 1), unique))
                 for cell in range(grid[0] * grid[1])]
    return torch.stack(drops, 1).view(len(images), *grid).clamp(min=0).float().cpu()


def segmentation_layer(model: nn.Module, example: torch.Tensor, num_classes: int) -> str:
    """The default target layer of a segmentation model: the last module run once whose output is a map of at least
    3x3 cells with a channel count other than ``num_classes`` (the features the per-pixel classifier reads, not
    the logits themselves)."""
    fired = _forward_outputs(model, example)
    calls = Counter(name for name, _ in fired)
    maps = [name for name, out in fired if calls[name] == 1 and isinstance(out, torch.Tensor) and out.dim() == 4
            and min(out.shape[-2:]) >= 3 and out.shape[1] != num_classes]
    if not maps:
        raise UserError(f"--layer: no module of the model outputs a feature map of at least 3x3 on input of shape "
                        f"{tuple(example.shape)}; name one with --layer")
    return maps[-1]
