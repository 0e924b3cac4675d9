"""Maps for display only: normalised and upsampled exactly as pytorch-grad-cam shows them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The min-max guard, as in pytorch-grad-cam.
MINMAX_EPS = 1e-7


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image (map - min) / (max + 1e-7) over the last two dims, as pytorch-grad-cam's scale_cam_image."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + MINMAX_EPS)


def display_maps(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps for display: [B, h, w] raw -> [B, H, W] in [0, 1].

    ReLU, per-image min-max, bilinear upsample to ``size`` = (H, W) (align_corners=False, which
    equals cv2.resize), then min-max again.
    """
    scaled = _minmax(raw.float().clamp(min=0))
    resized = F.interpolate(scaled[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return _minmax(resized)
