"""Input footprints of grid cells from the effective receptive field.

The input region a cell depends on is wider than the stride block that maps onto it. For every
cell (i, j) of a layer's [h, w] grid, :func:`cell_fields` averages over a few images the absolute
gradient of the cell's activation (summed over channels) with respect to the input (summed over
input channels): ``fields[i, j]`` is an [H, W] map, zero outside the analytic receptive field.
The footprint of a set of cells (:func:`field_footprint`) is the union of each cell's core: where
its map reaches ``threshold`` times its own maximum. All cells of a batch of images are done in one backward pass.

That core is the region the cells *can* see (120-250 of 784 pixels on a 7x7 grid of a 28x28 input), far
more than what they respond to in a given image, so pasting it carries much of the donor and random
patches of its shape flip predictions too. :class:`Footprints` narrows it per image to the pixels the
cells' activation depends on there: where |gradient x (image - reference)| of the cells' summed activation
reaches ``threshold`` of its maximum within the core (a marker's own pixels, not the texture around it).
"""
from __future__ import annotations

import torch
from torch import nn

from i2x.attribution.tokens import Layout, patch_mean, to_map


def cell_fields(model: nn.Module, layer: nn.Module, images: torch.Tensor, batch_size: int = 512,
                layout: Layout = Layout("bchw"), cells: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute input gradient of each cell's summed activation: [h, w, H, W] (on the CPU, float32).

    Each image is repeated once per cell; copy (b, i, j) back-propagates only cell (i, j) of its own layer output,
    so one backward gives every cell's map (the model must treat batch rows independently, as in eval mode).
    ``cells`` [h, w] (bool) limits the work to those cells (the others' maps stay zero: a unit's footprints read
    only its own cells' maps). ``layout`` says how the layer holds its grid (transformer tokens, channels last); a
    token's field is evened out over each input patch (:func:`~i2x.attribution.tokens.patch_mean`), the unit its
    patch embedding reads."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    grabbed: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
    try:
        with torch.no_grad():
            grabbed.clear()
            model(images[:1].to(device))
        h, w = to_map(grabbed[0], layout).shape[-2:]
        chosen = (torch.arange(h * w) if cells is None
                  else torch.as_tensor(cells, dtype=torch.bool).reshape(h * w).nonzero().flatten())
        n = len(chosen)
        total = torch.zeros(h * w, *images.shape[-2:])
        per_batch = max(1, batch_size // max(n, 1))
        for lo in range(0, len(images) if n else 0, per_batch):
            x = images[lo:lo + per_batch].to(device).repeat_interleave(n, dim=0).requires_grad_(True)
            grabbed.clear()
            model(x)
            out = to_map(grabbed[0], layout)
            pick = torch.zeros(n, h * w, device=device, dtype=out.dtype)
            pick[torch.arange(n), chosen.to(device)] = 1
            (out.sum(dim=1).flatten(1) * pick.repeat(x.shape[0] // n, 1)).sum().backward()
            grad = x.grad.detach().abs().sum(dim=1).float().cpu()              # [B * n, H, W]
            total[chosen] += grad.view(-1, n, *grad.shape[-2:]).sum(dim=0)
    finally:
        handle.remove()
    fields = (total / len(images)).view(h, w, *images.shape[-2:])
    return patch_mean(fields) if layout.kind == "tokens" else fields


def field_cores(fields: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each cell's receptive-field core [h w, H W] (float32 0/1) of :func:`cell_fields` [h, w, H, W]: where its map
    is positive and at least ``threshold`` times its own maximum."""
    h, w = fields.shape[:2]
    maps = fields.reshape(h * w, -1)
    return ((maps > 0) & (maps >= threshold * maps.max(dim=1, keepdim=True).values)).to(torch.float32)


def field_footprint(fields: torch.Tensor, cell_masks: torch.Tensor, threshold: float,
                    cores: torch.Tensor | None = None) -> torch.Tensor:
    """Input footprints [B, H, W] (bool) of grid-cell masks [B, h, w] given :func:`cell_fields` [h, w, H, W]: the
    union over the chosen cells of where each cell's map is positive and at least ``threshold`` times its own
    maximum (the core of each cell's effective receptive field). An empty mask gives an empty footprint.
    ``cores``: :func:`field_cores` of the same fields and threshold, when already computed."""
    h, w = fields.shape[:2]
    core = field_cores(fields, threshold) if cores is None else cores
    chosen = cell_masks.reshape(len(cell_masks), h * w).to(torch.float32)
    return (chosen @ core > 0).view(len(cell_masks), *fields.shape[2:])


class Footprints:
    """Per-image input footprints of grid cells: the receptive-field core (:func:`field_footprint` of ``fields`` at
    ``field_threshold``) narrowed to where the saliency |grad x (image - reference)| of the chosen cells' summed
    activation (summed over input channels; for tokens evened out over each patch) reaches ``threshold`` times its
    maximum inside the core. ``reference`` [C, H, W] is what an image is compared with (the mean image of the data);
    one backward per batch. The cells' cores are computed once, for every call."""

    def __init__(self, model: nn.Module, layer: nn.Module, fields: torch.Tensor, reference: torch.Tensor,
                 field_threshold: float, threshold: float, batch_size: int = 512,
                 layout: Layout = Layout("bchw")) -> None:
        self.model, self.layer, self.fields, self.reference = model, layer, fields, reference
        self.field_threshold, self.threshold = field_threshold, threshold
        self.batch_size, self.layout = batch_size, layout
        self.cores = field_cores(fields, field_threshold)

    def __call__(self, images: torch.Tensor, cell_masks: torch.Tensor) -> torch.Tensor:
        """Footprints [B, H, W] (bool, on the CPU) of cell masks [B, h, w] in images [B, C, H, W]."""
        core = field_footprint(self.fields, cell_masks, self.field_threshold, self.cores)
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        grabbed: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
        saliency = torch.zeros(core.shape)
        try:
            for lo in range(0, len(images), self.batch_size):
                x = images[lo:lo + self.batch_size].to(device).requires_grad_(True)
                grabbed.clear()
                with torch.enable_grad():
                    self.model(x)
                    grid = to_map(grabbed[0], self.layout).sum(dim=1)                     # [b, h, w]
                    chosen = (grid * cell_masks[lo:lo + len(x)].to(device, grid.dtype)).sum()
                    (grad,) = torch.autograd.grad(chosen, x)
                weighted = grad * (x.detach() - self.reference.to(device))
                saliency[lo:lo + len(x)] = weighted.sum(dim=1).abs().float().cpu()
        finally:
            handle.remove()
        if self.layout.kind == "tokens":  # a patch embedding reads whole patches: its saliency is a speckle within them
            saliency = patch_mean(saliency, tuple(self.fields.shape[:2]))
        saliency = torch.where(core, saliency, torch.zeros_like(saliency))
        peak = saliency.flatten(1).max(dim=1).values.view(-1, 1, 1)
        return core & (saliency > 0) & (saliency >= self.threshold * peak)


def shift_offsets(count: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``count`` uniformly random non-zero cyclic offsets (flat, in [1, H W)) for :func:`shifted_by`."""
    return torch.randint(1, size[0] * size[1], (count,), generator=generator)


def shifted_by(masks: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Each mask [B, H, W] cyclically shifted by its flat ``offset`` [B]: the same area and shape (on the torus)
    at another place."""
    b, hh, ww = masks.shape
    rows = (torch.arange(hh)[None, :] - (offset // ww)[:, None]) % hh          # out[y] = mask[y - dy]
    cols = (torch.arange(ww)[None, :] - (offset % ww)[:, None]) % ww
    return masks[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def shifted(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each mask [B, H, W] cyclically shifted by a uniformly random non-zero offset: the same area and shape
    (on the torus) at another place."""
    return shifted_by(masks, shift_offsets(len(masks), tuple(masks.shape[1:]), generator))
