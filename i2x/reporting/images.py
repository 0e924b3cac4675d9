"""Pictures for the report: PNG data URIs of prototype patches and CAM overlays, built with numpy and PIL.

CAM overlays follow pytorch-grad-cam's look (jet colour map, 50/50 blend with the image); the
maps are normalised for display only (:func:`i2x.attribution.display_maps`), so each frame is captioned
with its raw peak elsewhere.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from i2x.attribution import display_maps

HIGHLIGHT = np.array([240, 20, 70], dtype=np.uint8)  # saturated red: visible on black and on white


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map of values in [0, 1] -> uint8 RGB (``[..., 3]``), as a piecewise-linear LUT."""
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue ramps peak at x = 3, 2, 1
    rgb = np.clip(1.5 - np.abs(x - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """``[B, C, H, W]`` in [0, 1] -> uint8 ``[B, H, W, 3]`` (1 channel as grey, 3 as RGB, others averaged)."""
    if images.shape[1] == 3:
        rgb = images.transpose(0, 2, 3, 1)
    else:
        grey = images.mean(axis=1) if images.shape[1] != 1 else images[:, 0]
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_uri(rgb: np.ndarray) -> str:
    """A ``data:image/png;base64`` URI of one uint8 ``[H, W, 3]`` image."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``[B, C, H, W]`` float images to ``size`` x ``size`` (torch, align_corners=False)."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy()


def overlays(images: np.ndarray, raw_maps: np.ndarray, size: int, image_weight: float = 0.5) -> np.ndarray:
    """CAM overlays: images ``[B, C, H, W]`` in [0, 1], raw maps ``[T, B, h, w]`` -> uint8 ``[T, B, size, size, 3]``.

    Each map is normalised on its own for display (``display_maps``); non-finite maps come out grey.
    """
    t, b = raw_maps.shape[:2]
    finite = np.isfinite(raw_maps).all(axis=(2, 3))
    safe = np.where(np.isfinite(raw_maps), raw_maps, 0.0).reshape(t * b, *raw_maps.shape[2:])
    shown = display_maps(torch.from_numpy(safe.astype(np.float32)), (size, size)).numpy().reshape(t, b, size, size)
    base = to_rgb(resize(images, size)).astype(np.float32)  # [B, S, S, 3]
    blend = (1.0 - image_weight) * jet(shown).astype(np.float32) + image_weight * base[None]
    out = (blend + 0.5).astype(np.uint8)
    out[~finite] = 200
    return out


def map_tiles(raw_maps: np.ndarray, size: int = 16, shared: bool = False) -> np.ndarray:
    """Colour tiles of raw maps ``[T, B, h, w]`` -> uint8 ``[T, B, size, size, 3]`` (jet), drawn over the input by the page.

    ReLU, then bilinear upsampling to ``size``; each tile scaled to its own maximum, or with ``shared`` every tile
    of a column ``b`` (one sample's strip over the T checkpoints) to the strip's maximum, so a weak map looks weak.
    Non-finite maps come out grey.
    """
    t, b = raw_maps.shape[:2]
    finite = np.isfinite(raw_maps).all(axis=(2, 3))
    safe = np.where(np.isfinite(raw_maps), np.maximum(raw_maps, 0.0), 0.0).reshape(t * b, 1, *raw_maps.shape[2:])
    up = F.interpolate(torch.from_numpy(safe.astype(np.float32)), size=(size, size), mode="bilinear",
                       align_corners=False).numpy().reshape(t, b, size, size)
    peak = up.max(axis=(2, 3), keepdims=True)
    if shared:
        peak = np.broadcast_to(peak.max(axis=0, keepdims=True), peak.shape)
    out = jet(np.divide(up, peak, out=np.zeros_like(up), where=peak > 0))
    out[~finite] = 200
    return out


def prototype_patches(images: np.ndarray, cells: np.ndarray, grid: tuple[int, int], context: int = 3,
                      min_context_px: int = 48, min_size: int = 64, max_size: int = 96) -> np.ndarray:
    """Square crops around each patch's grid cell, with that cell outlined.

    images ``[P, C, H, W]`` in [0, 1] (one per patch), cells ``[P, 2]`` (row, column on the grid) ->
    uint8 ``[P, S, S, 3]``. The crop spans ``context`` cells but at least ``min_context_px`` input
    pixels (a CNN cell sees far beyond its own cell: SmallCNN's receptive field is 26 px), at most
    the whole image, shifted to stay inside it. Small crops are enlarged by an integer factor
    (nearest) to at least ``min_size`` pixels, large ones shrunk (bilinear) to ``max_size``.
    """
    p, _, height, width = images.shape
    gh, gw = grid
    cell_h, cell_w = height / gh, width / gw
    crop = min(height, width, max(int(round(context * max(cell_h, cell_w))), min_context_px))
    top = np.clip(((cells[:, 0] + 0.5) * cell_h).astype(int) - crop // 2, 0, height - crop)
    left = np.clip(((cells[:, 1] + 0.5) * cell_w).astype(int) - crop // 2, 0, width - crop)
    ys = top[:, None] + np.arange(crop)
    xs = left[:, None] + np.arange(crop)
    windows = images.transpose(0, 2, 3, 1)[np.arange(p)[:, None, None], ys[:, :, None], xs[:, None, :]]
    if crop > max_size:
        scale = max_size / crop
        crops = to_rgb(resize(windows.transpose(0, 3, 1, 2), max_size))
    else:
        scale = float(max(1, int(np.ceil(min_size / crop))))
        crops = to_rgb(windows.transpose(0, 3, 1, 2)).repeat(int(scale), axis=1).repeat(int(scale), axis=2)
    # outline the cell itself: its box relative to the crop, in output pixels
    box_top = np.round(((cells[:, 0] * cell_h).astype(int) - top) * scale).astype(int)
    box_left = np.round(((cells[:, 1] * cell_w).astype(int) - left) * scale).astype(int)
    bh, bw = max(3, int(round(cell_h * scale))), max(3, int(round(cell_w * scale)))
    size = crops.shape[1]
    yy = np.arange(size)[None, :, None]
    xx = np.arange(size)[None, None, :]
    t, l = box_top[:, None, None], box_left[:, None, None]
    line = 2 if min(bh, bw) >= 6 else 1
    inside = (yy >= t) & (yy < t + bh) & (xx >= l) & (xx < l + bw)
    border = inside & ~((yy >= t + line) & (yy < t + bh - line) & (xx >= l + line) & (xx < l + bw - line))
    crops[border] = HIGHLIGHT
    return crops
