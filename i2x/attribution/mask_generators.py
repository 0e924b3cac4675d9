"""Mask generators for minimal evidence: one mask per image, a whole batch in one module.

* :class:`PixelMask` (the fast default): free logits on a coarse ``resolution x resolution`` grid per
  image, squashed by a sigmoid and upsampled bilinearly to the image size, so masks are smooth blobs
  and the optimiser has few parameters per image.
* :class:`UNetMask`: the paper's per-image small U-Net trained from scratch, mapping the image to
  its mask. The B networks run as one grouped convolution per layer (``groups=B``), so a batch of
  independent networks costs one call per layer.

Both start near the full mask (sigmoid of ``initial_logit`` = 0.73 by default), so the optimisation
removes what the decision does not need rather than searching from nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

INITIAL_LOGIT = 1.0


class PixelMask(nn.Module):
    """Per-image logits on a coarse grid, upsampled bilinearly to the image: ``[B, 1, H, W]`` masks in [0, 1]."""

    def __init__(self, images: torch.Tensor, resolution: int, initial_logit: float = INITIAL_LOGIT) -> None:
        super().__init__()
        b, _, h, w = images.shape
        self.size = (h, w)
        rh, rw = min(resolution, h), min(resolution, w)
        self.logits = nn.Parameter(torch.full((b, 1, rh, rw), initial_logit, device=images.device))

    def forward(self) -> torch.Tensor:
        coarse = torch.sigmoid(self.logits)
        return F.interpolate(coarse, size=self.size, mode="bilinear", align_corners=False)


class UNetMask(nn.Module):
    """One small U-Net per image (two scales, ``width`` and ``2 * width`` channels), run as grouped convolutions.

    Layers: 3x3 conv (C -> w), 2x2 average pool, 3x3 conv (w -> 2w), upsample, concat with the first
    scale, 3x3 conv (3w -> w), 1x1 conv (w -> 1), sigmoid. Weights follow PyTorch's default (Kaiming
    uniform) initialisation drawn from ``generator``; the last bias starts at ``initial_logit``.
    """

    def __init__(self, images: torch.Tensor, width: int = 8, generator: torch.Generator | None = None,
                 initial_logit: float = INITIAL_LOGIT) -> None:
        super().__init__()
        self.register_buffer("images", images.detach())
        b, c, _, _ = images.shape
        self.b, self.width = b, width
        shapes = {"enc1": (width, c, 3), "enc2": (2 * width, width, 3), "dec": (width, 3 * width, 3),
                  "out": (1, width, 1)}
        for name, (out_c, in_c, k) in shapes.items():
            bound = 1.0 / math.sqrt(in_c * k * k)
            weight = (torch.rand(b * out_c, in_c, k, k, generator=generator) * 2 - 1) * bound
            bias = (torch.rand(b * out_c, generator=generator) * 2 - 1) * bound
            if name == "out":
                weight = weight * 0.1
                bias = torch.full_like(bias, initial_logit)
            self.register_parameter(f"{name}_weight", nn.Parameter(weight.to(images.device)))
            self.register_parameter(f"{name}_bias", nn.Parameter(bias.to(images.device)))

    def _conv(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Apply every image's own layer ``name`` to its own maps: ``[B, in, H, W]`` -> ``[B, out, H, W]``."""
        weight, bias = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
        b, _, h, w = x.shape
        out = F.conv2d(x.reshape(1, -1, h, w), weight, bias, padding=weight.shape[-1] // 2, groups=b)
        return out.reshape(b, -1, h, w)

    def forward(self) -> torch.Tensor:
        x = self.images
        first = F.relu(self._conv(x, "enc1"))
        second = F.relu(self._conv(F.avg_pool2d(first, 2, ceil_mode=True), "enc2"))
        up = F.interpolate(second, size=first.shape[-2:], mode="nearest")
        decoded = F.relu(self._conv(torch.cat([up, first], dim=1), "dec"))
        return torch.sigmoid(self._conv(decoded, "out"))


GENERATORS = ("pixel", "unet")


def make_generator(kind: str, images: torch.Tensor, resolution: int, seed: int) -> nn.Module:
    """The mask generator ``kind`` (see :data:`GENERATORS`) for a batch of images, seeded."""
    if kind == "pixel":
        return PixelMask(images, resolution)
    if kind == "unet":
        return UNetMask(images, generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"unknown mask generator {kind!r}; choose one of {', '.join(GENERATORS)}")
