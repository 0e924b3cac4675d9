"""Occlusion at the target layer's grid: the drop of the target's probability when one cell's input footprint is filled.

Cell (i, j) of an h x w grid covers the input pixels (y, x) with floor(y h / H) = i and
floor(x w / W) = j (its footprint). The map is ReLU(p(x) - p(x with the footprint set to ``colour``)),
the region-level intervention evidence: positive where hiding the cell lowers the confidence in
the target class. All B h w occluded images are scored in batches of ``batch_size``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def cell_of_pixel(size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Flat cell index [H, W] of every input pixel for an h x w grid over an H x W input."""
    (hh, ww), (h, w) = size, grid
    rows = torch.arange(hh) * h // hh
    cols = torch.arange(ww) * w // ww
    return rows[:, None] * w + cols[None, :]


def occlusion(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, target: torch.Tensor,
              grid: tuple[int, int], colour: Sequence[float] | None = None, batch_size: int = 512) -> torch.Tensor:
    """Occlusion maps [B, h, w] (float32, on the CPU): ReLU of the probability drop per occluded cell.

    ``colour`` per channel defaults to 0, the mean colour of normalised inputs.
    """
    b, c, hh, ww = images.shape
    h, w = grid
    cells = h * w
    footprint = cell_of_pixel((hh, ww), grid).to(images.device)  # [H, W]
    value = torch.zeros(c, dtype=images.dtype, device=images.device) if colour is None else \
        torch.as_tensor(colour, dtype=images.dtype, device=images.device)
    target = torch.as_tensor(target, device=images.device).long()
    with torch.no_grad():
        base = model_fn(images).softmax(1).gather(1, target[:, None])[:, 0]
        drops = []
        for lo in range(0, b * cells, batch_size):
            point = torch.arange(lo, min(lo + batch_size, b * cells), device=images.device)
            sample, cell = point // cells, point % cells
            hidden = (footprint[None] == cell[:, None, None])[:, None]  # [N, 1, H, W]
            x = torch.where(hidden, value.view(1, -1, 1, 1), images[sample])
            p = model_fn(x).softmax(1).gather(1, target[sample, None])[:, 0]
            drops.append(base[sample] - p)
    return torch.cat(drops).view(b, h, w).clamp(min=0).float().cpu()
