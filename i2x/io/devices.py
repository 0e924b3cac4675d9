"""Device choice: ``auto`` picks CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import torch

from i2x.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a torch device, refusing CUDA when none is present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: not a device torch knows ({exc}); use auto, cpu or cuda") from exc
