"""Occlusion at the target layer's grid: the drop of the target's score when one cell's input footprint is filled.

Cell (i, j) of an h x w grid covers the input pixels (y, x) with floor(y h / H) = i and
floor(x w / W) = j (its footprint). The map is ReLU(s(x) - s(x with the footprint set to ``colour``)),
the region-level intervention evidence: positive where hiding the cell lowers the target's score s.
For a classifier s is the softmax probability of the target class (:func:`class_probability`); any
score of an image and its sample's target fits (e.g. a segmentation region's mean class score).
All B h w occluded images are scored in batches of ``batch_size``. :class:`Occlusion` makes it a
stored method (``i2x extract --methods gradcam,occlusion``), its batches as large as the extraction's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from i2x.attribution.base import InterventionMethod, register

#: s(images [N, C, H, W], rows [N]) -> scores [N]: image n scored for the target of sample rows[n].
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cell_of_pixel(size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Flat cell index [H, W] of every input pixel for an h x w grid over an H x W input."""
    (hh, ww), (h, w) = size, grid
    rows = torch.arange(hh) * h // hh
    cols = torch.arange(ww) * w // ww
    return rows[:, None] * w + cols[None, :]


def class_probability(model_fn: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor) -> Score:
    """The classifier's score: softmax probability of class ``target[row]`` (no gradients)."""
    target = torch.as_tensor(target).long()

    def score(images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            classes = target.to(images.device)[rows.to(images.device)]
            return model_fn(images).softmax(1).gather(1, classes[:, None])[:, 0]
    return score


def occlusion(score: Score, images: torch.Tensor, grid: tuple[int, int], colour: Sequence[float] | None = None,
              batch_size: int = 512) -> torch.Tensor:
    """Occlusion maps [B, h, w] (float32, on the CPU): ReLU of the score's drop per occluded cell.

    ``colour`` per channel defaults to 0, the mean colour of normalised inputs.
    """
    b, c, hh, ww = images.shape
    h, w = grid
    cells = h * w
    footprint = cell_of_pixel((hh, ww), grid).to(images.device)  # [H, W]
    value = torch.zeros(c, dtype=images.dtype, device=images.device) if colour is None else \
        torch.as_tensor(colour, dtype=images.dtype, device=images.device)
    with torch.no_grad():
        base = torch.cat([score(images[i:i + batch_size], torch.arange(i, min(i + batch_size, b)))
                          for i in range(0, b, batch_size)])
        drops = []
        for lo in range(0, b * cells, batch_size):
            point = torch.arange(lo, min(lo + batch_size, b * cells), device=images.device)
            sample, cell = point // cells, point % cells
            hidden = (footprint[None] == cell[:, None, None])[:, None]  # [N, 1, H, W]
            x = torch.where(hidden, value.view(1, -1, 1, 1), images[sample])
            drops.append(base[sample] - score(x, sample))
    return torch.cat(drops).view(b, h, w).clamp(min=0).float().cpu()


@register
class Occlusion(InterventionMethod):
    """Occlusion at the target layer's grid, mean-colour fill, the drop of the explained class's probability."""

    name = "occlusion"
    summary = "drop of the class probability when a cell's input footprint is set to the mean colour"

    def explain(self, model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, activations: torch.Tensor,
                grads: torch.Tensor, cams: dict[str, torch.Tensor]) -> torch.Tensor:
        grid = (int(activations.shape[-2]), int(activations.shape[-1]))
        return occlusion(class_probability(model, classes), x, grid, batch_size=len(x)).to(activations.device)
