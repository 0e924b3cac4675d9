"""Finding the target layer of a model: by dotted name, by default, and its fastest memory layout."""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Any

import torch
from torch import nn

from i2x.attribution.tokens import Layout, detect, from_map, to_map
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


def _is_norm(module: nn.Module) -> bool:
    """A normalisation layer (LayerNorm, GroupNorm, BatchNorm, RMSNorm and their subclasses)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or \
        type(module).__name__.endswith(("Norm", "Norm2d"))


def _reaches_logits(model: nn.Module, module: nn.Module, example_input: torch.Tensor, layout: Layout) -> bool:
    """Whether the top logit has a non-zero gradient with respect to the module's grid (one probe)."""
    kept: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        leaf = to_map(out, layout).detach().requires_grad_()
        kept.append(leaf)
        return from_map(leaf, out, layout)

    handle = module.register_forward_hook(hook)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(example_input)
            grad = torch.autograd.grad(logits.max(dim=1).values.sum(), kept[0], allow_unused=True)[0]
    finally:
        handle.remove()
        for m, training in modes.items():
            m.training = training
    return grad is not None and bool(grad.abs().sum() > 0)


def _is_block(modules: dict[str, nn.Module], name: str) -> bool:
    """Whether ``name`` is one of a stack of blocks: a child of a ModuleList/Sequential with a sibling of its type."""
    parent, _, _ = name.rpartition(".")
    container = modules.get(parent)
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        return False
    kind = type(modules[name])
    return sum(type(child) is kind for child in container.children()) >= 2


def find_target_layer(model: nn.Module, example_input: torch.Tensor, tokens: Layout | None = None) -> str:
    """D1 in docs/ARCHITECTURE.md: the dotted name of the last module (in forward order) whose output is
    a map with both spatial sizes >= 3. Modules run more than once per forward (a shared ReLU) are skipped,
    since their output is ambiguous. The model's train/eval mode is left as it was.

    Transformers: token outputs ([B, P + h*w, C]) and channels-last maps count as maps (see
    :mod:`i2x.attribution.tokens`), and the choice is the last block before the final normalisation,
    so neither the patch embedding nor the normalised head input is taken.
    """
    fired = _forward_outputs(model, example_input)
    modules = dict(model.named_modules())
    calls = Counter(name for name, _ in fired)
    input_hw = (int(example_input.shape[-2]), int(example_input.shape[-1]))
    maps: list[tuple[int, str, Layout]] = []
    for i, (name, out) in enumerate(fired):
        layout = detect(out, input_hw, tokens) if calls[name] == 1 else None
        if layout is not None and min(to_map(out, layout).shape[-2:]) >= 3:
            maps.append((i, name, layout))
    sequences = [(i, name) for i, name, layout in maps if layout.kind != "bchw"]
    if sequences:  # a transformer: stop before the final norm that follows its last block
        norms = [i for i, (name, _) in enumerate(fired) if _is_norm(modules[name]) and i > sequences[0][0]]
        final_norm = norms[-1] if norms else len(fired)
        normed = {id(fired[i][1]) for i in norms}
        usable = [(name, layout) for i, name, layout in maps if layout.kind != "bchw" and i < final_norm
                  and not _is_norm(modules[name]) and id(fired[i][1]) not in normed]
        # A class-token model reads its logits from the prefix tokens: after the last attention the patch
        # tokens no longer reach them and their gradient is zero, so the last block's input is taken.
        first = sequences[0][0]  # later 4-D outputs are attention internals ([B, heads, N, d]), not maps
        candidates = [name for i, name, layout in maps if layout.kind == "bchw" and i < first][-1:]
        # Whole blocks first (an attention's own value projection can reach the class token too, but is no block).
        usable.sort(key=lambda item: _is_block(modules, item[0]))
        for name, layout in reversed(usable):
            if _reaches_logits(model, modules[name], example_input, layout):
                candidates.append(name)
                break
        candidates.sort(key=[n for _, n, _ in maps].index)
    else:
        candidates = [name for _, name, _ in maps]
    if not candidates:
        raise UserError(
            f"--layer: no module outputs a map of at least 3x3 on input of shape "
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
