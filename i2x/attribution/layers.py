"""Finding the target layer of a model: by dotted name, by default, and its fastest memory layout."""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Any

import torch
from torch import nn

from i2x.errors import UserError


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` at dotted path ``name`` (``layer4``, ``features.7``)."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5) or [n for n in names if "." not in n][:8]
    raise UserError(
        f"--layer {name!r}: the model has no module of that name; valid names include {', '.join(close)}"
    )


def _forward_outputs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, Any]]:
    """Run one gradient-free forward and return (name, output) in the order forward hooks fired."""
    fired: list[tuple[str, Any]] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: fired.append((name, out)))
        for name, module in model.named_modules()
        if name
    ]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # so that BatchNorm running statistics are not updated by this probe
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return fired


def find_target_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """DESIGN D1: the dotted name of the last module (in forward order) whose output is a 4-D map
    with both spatial sizes >= 3. Modules run more than once per forward (a shared ReLU) are skipped,
    since their output is ambiguous. The model's train/eval mode is left as it was."""
    fired = _forward_outputs(model, example_input)
    calls = Counter(name for name, _ in fired)
    candidates = [
        name for name, out in fired
        if calls[name] == 1 and isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[-2:]) >= 3
    ]
    if not candidates:
        raise UserError(
            f"--layer: no module outputs a 4-D map of at least 3x3 on input of shape "
            f"{tuple(example_input.shape)}; use a larger --input-size or name a layer with --layer"
        )
    return candidates[-1]


def prefer_channels_last(model: nn.Module, example_input: torch.Tensor) -> bool:
    """Store ``model``'s conv weights channels-last when it gives the same logits, and say whether it did.

    On CPU, max-pooling and small convolutions are much faster in that layout: extraction with the
    small CNN runs 1.15x faster end to end (benchmarks/README.md). A model that cannot take it
    (``x.view(B, -1)`` on a 4-D map raises) or whose logits change beyond float rounding stays as
    it was. Only models with a Conv2d qualify.
    """
    if example_input.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            reference = model(example_input)
            model.to(memory_format=torch.channels_last)
            try:
                candidate = model(example_input.contiguous(memory_format=torch.channels_last))
                same = (isinstance(reference, torch.Tensor) and isinstance(candidate, torch.Tensor)
                        and torch.allclose(candidate, reference, rtol=1e-4, atol=1e-5 * (1 + reference.abs().max().item())))
            except RuntimeError:
                same = False
            if not same:
                model.to(memory_format=torch.contiguous_format)
    finally:
        for m, training in modes.items():
            m.training = training
    return same
