"""Device choice: ``auto`` picks CUDA when torch sees a GPU, else the CPU; and how much memory a device has."""

from __future__ import annotations

import os
from pathlib import Path

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


def memory_size(device: torch.device) -> int | None:
    """Bytes of memory on ``device``: a GPU's total memory; for the CPU the machine's RAM or the container's limit
    (cgroup v2 or v1), whichever is smaller; None when unknown. Fixed per machine, unlike the free memory, so a
    size chosen from it is the same on every run there."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            sizes.append(int(text))
    return min(sizes) if sizes else None
