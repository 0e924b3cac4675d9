"""Layer outputs as maps: conv maps [B, C, h, w], token sequences [B, P + h*w, C] and channels-last
maps [B, h, w, C] all become [B, C, h, w] for CAMs, features, prototypes and interventions.

Vision transformers emit tokens: P prefix tokens (a class token, a distillation token, register
tokens) followed by h*w patch tokens in row-major order; Swin and some ConvNeXt blocks emit
channels-last maps. :func:`detect` reads the layout from the output's shape and the input size;
``--tokens`` overrides it (``P`` = prefix count, ``PxHxW`` = prefix count and grid, ``bhwc``,
``bchw``). The prefix tokens are not part of the map: they carry no location.

A token's input unit is its patch: the patch embedding reads every pixel of it through one learned
kernel, so the pixel-level input gradient inside a patch traces that kernel's weights (the same
speckle in every patch), not where the token looks. :func:`patch_mean` evens a field out over each patch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from i2x.errors import UserError

#: The most prefix tokens tried when reading a token count (class + distillation + up to 7 registers).
MAX_PREFIX = 9


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds its spatial grid."""

    kind: str  # "bchw" (conv map), "tokens" ([B, P + h*w, C]) or "bhwc" (channels last)
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def describe(self) -> str:
        """One phrase for the store, the CLI and the report."""
        if self.kind == "tokens":
            return f"tokens: {self.prefix} prefix token(s) + a {self.grid[0]}x{self.grid[1]} grid" if self.grid else "tokens"
        return {"bchw": "a [B, C, h, w] map", "bhwc": "a channels-last [B, h, w, C] map"}[self.kind]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "prefix": self.prefix, "grid": list(self.grid) if self.grid else None}

    @classmethod
    def from_dict(cls, d: dict[str, object] | None) -> "Layout":
        """The layout a store recorded (``layer_layout``); stores made before it are conv maps."""
        if not d:
            return cls("bchw")
        grid = d.get("grid")
        return cls(str(d["kind"]), int(d.get("prefix") or 0), tuple(grid) if grid else None)  # type: ignore[arg-type]


def parse(text: str | None) -> Layout | None:
    """The ``--tokens`` override: ``auto``/None, ``bchw``, ``bhwc``, ``P`` or ``PxHxW``."""
    if text is None or text == "auto":
        return None
    if text in ("bchw", "bhwc"):
        return Layout(text)
    m = re.fullmatch(r"(\d+)(?:x(\d+)x(\d+))?", text)
    if not m:
        raise UserError(f"--tokens {text}: give auto, bchw, bhwc, a prefix-token count (1) or count and grid (1x8x8)")
    grid = (int(m.group(2)), int(m.group(3))) if m.group(2) else None
    return Layout("tokens", int(m.group(1)), grid)


def _token_grid(n: int, input_hw: tuple[int, int], prefix: int | None) -> tuple[int, tuple[int, int]] | None:
    """(prefix, grid) for n tokens: without a given prefix, the smallest prefix that leaves a grid with
    exactly the input's aspect ratio; with one, the factorisation of the rest closest to that ratio."""
    height, width = input_hw
    if prefix is None:
        for p in range(MAX_PREFIX + 1):
            cells = n - p
            h = round(math.sqrt(max(cells, 0) * height / width))
            if h >= 2 and cells % h == 0 and cells // h >= 2 and h * width == (cells // h) * height:
                return p, (h, cells // h)
        return None
    cells = n - prefix
    ideal = math.sqrt(max(cells, 0) * height / width)
    shapes = [(abs(h - ideal), h) for h in range(2, cells // 2 + 1) if cells % h == 0]
    if not shapes:
        return None
    h = min(shapes)[1]
    return prefix, (h, cells // h)


def detect(output: object, input_hw: tuple[int, int], override: Layout | None = None) -> Layout | None:
    """The layout of a layer output, or None when it holds no spatial grid (a vector, a 1-D sequence).

    4-D outputs are conv maps unless their dims 1 and 2 form the grid (h == w, or the input's aspect)
    and the last dim is larger (channels last). 3-D outputs are tokens; the prefix count is the
    smallest that leaves a grid with the input's aspect ratio.
    """
    if not isinstance(output, torch.Tensor):
        return None
    if override is not None and override.kind != "tokens":
        return override if output.dim() == 4 else None
    if output.dim() == 4 and override is None:
        _, a, b, c = output.shape
        aspect = input_hw[0] / input_hw[1]
        channels_last = c > a and abs(a / b - aspect) < 1e-6 and not abs(b / c - aspect) < 1e-6
        return Layout("bhwc" if channels_last else "bchw")
    if output.dim() == 3:
        prefix = override.prefix if override is not None else None
        if override is not None and override.grid is not None:
            if output.shape[1] != prefix + override.grid[0] * override.grid[1]:
                raise UserError(f"--tokens {prefix}x{override.grid[0]}x{override.grid[1]}: the layer outputs "
                                f"{output.shape[1]} tokens")
            return override
        found = _token_grid(int(output.shape[1]), input_hw, prefix)
        return Layout("tokens", *found) if found else None
    return None


def to_map(output: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The output's grid as [B, C, h, w] (a view where the layout allows)."""
    if layout.kind == "bchw":
        return output
    if layout.kind == "bhwc":
        return output.permute(0, 3, 1, 2)
    assert layout.grid is not None
    b, _, c = output.shape
    return output[:, layout.prefix:].transpose(1, 2).reshape(b, c, *layout.grid)


def from_map(grid: torch.Tensor, output: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A tensor shaped like ``output`` whose grid is ``grid`` [B, C, h, w] and whose prefix tokens are
    ``output``'s: what the layer passes downstream after a hook replaced its map."""
    if layout.kind == "bchw":
        return grid
    if layout.kind == "bhwc":
        return grid.permute(0, 2, 3, 1)
    tokens = grid.flatten(2).transpose(1, 2)
    return torch.cat([output[:, :layout.prefix].to(tokens.dtype), tokens], dim=1) if layout.prefix else tokens


def patch_mean(fields: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Input maps [..., H, W] with each value replaced by its patch's mean, the patches being the [H, W] input cut
    into the token grid (pixel y in patch row y * h // H; sizes that do not divide give patches one pixel apart in
    size). The grid (h, w) is ``grid``, else the first two dims (fields [h, w, H, W] of the grid's tokens)."""
    h, w = grid if grid is not None else fields.shape[:2]
    height, width = fields.shape[-2:]
    rows = F.one_hot(torch.arange(height) * h // height, h).to(fields.dtype)     # [H, h]
    cols = F.one_hot(torch.arange(width) * w // width, w).to(fields.dtype)       # [W, w]
    sums = rows.T @ fields @ cols                                                # [h, w, h, w] per-patch sums
    means = sums / (rows.sum(0)[:, None] * cols.sum(0)[None, :])
    return rows @ means @ cols.T
