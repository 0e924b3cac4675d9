"""A classifier frozen for optimising inputs against it (minimal evidence): eval mode, no weight gradients,
hooks on named layers, and exact rewrites that make each forward and backward pass cheaper; all undone on exit.

The rewrites change how the function is computed, never its value (up to float rounding), and touch only
adjacent children of an ``nn.Sequential`` none of which is hooked:

* a BatchNorm2d after a Conv2d is folded into the convolution (one memory-bound op less per pass);
* a ReLU before a max pool is moved after it (``max`` commutes with a non-decreasing function), so the
  ReLU and its backward run on the pooled map, a quarter of the size for a 2x2 pool.

``autocast_dtype`` names the lower precision a device computes natively, for the optimisation passes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from i2x.attribution.layers import get_layer

PRECISIONS = ("auto", "float32", "bfloat16")

Swap = tuple[nn.Module, str, nn.Module]


class Activations:
    """Forward hooks that keep the outputs of the named layers during one forward (4-D maps after a ReLU)."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        modules = {name: get_layer(model, name) for name in layers}
        self.handles = [module.register_forward_hook(self._hook(name, module)) for name, module in modules.items()]

    def _hook(self, name: str, module: nn.Module):
        rectified = _ends_in_relu(module)  # a second ReLU would only cost a pass over the map and its backward

        def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.outputs[name] = F.relu(output) if output.dim() == 4 and not rectified else output
        return keep

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _ends_in_relu(module: nn.Module) -> bool:
    """Whether the module's output has passed a ReLU last (a ReLU, or a Sequential whose last module is one)."""
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return isinstance(module, nn.ReLU)


def _pairs(model: nn.Module, hooked: set[nn.Module]) -> Iterator[tuple[nn.Sequential, str, nn.Module, str, nn.Module]]:
    """Adjacent, unhooked children ``(parent, name_a, a, name_b, b)`` of every ``nn.Sequential`` in ``model``."""
    for parent in list(model.modules()):
        if isinstance(parent, nn.Sequential):
            children = list(parent._modules.items())
            for (name_a, a), (name_b, b) in zip(children, children[1:]):
                if a not in hooked and b not in hooked:
                    yield parent, name_a, a, name_b, b


def fold_batchnorm(model: nn.Module, hooked: set[nn.Module]) -> list[Swap]:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into that convolution.

    The BN's place holds an Identity (a hook on it still sees its output). Returns ``(parent, name, original)``
    to put back, in order.
    """
    swapped: list[Swap] = []
    for parent, conv_name, conv, bn_name, bn in _pairs(model, hooked):
        current = parent._modules[conv_name], parent._modules[bn_name]
        if (current == (conv, bn) and isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d
                and bn.running_mean is not None and bn.running_var is not None and not bn.training):
            swapped += [(parent, conv_name, conv), (parent, bn_name, bn)]
            parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
            parent._modules[bn_name] = nn.Identity()
    return swapped


def pool_before_relu(model: nn.Module, hooked: set[nn.Module]) -> list[Swap]:
    """Swap every ReLU that directly precedes a MaxPool2d with it: the same values, the ReLU on a smaller map.

    Returns ``(parent, name, original)`` to put back, in order.
    """
    swapped: list[Swap] = []
    for parent, relu_name, relu, pool_name, pool in _pairs(model, hooked):
        current = parent._modules[relu_name], parent._modules[pool_name]
        if (current == (relu, pool) and type(relu) is nn.ReLU and type(pool) is nn.MaxPool2d
                and not pool.return_indices):
            swapped += [(parent, relu_name, relu), (parent, pool_name, pool)]
            parent._modules[relu_name], parent._modules[pool_name] = pool, relu
    return swapped


@contextmanager
def frozen(model: nn.Module, layers: Sequence[str]) -> Iterator[Activations]:
    """The model in eval mode with frozen weights, the rewrites above and hooks on ``layers``; restored on exit."""
    grads = [p.requires_grad for p in model.parameters()]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    hooked = {get_layer(model, name) for name in layers}
    swapped = fold_batchnorm(model, hooked) + pool_before_relu(model, hooked)
    hooks = Activations(model, layers)
    try:
        yield hooks
    finally:
        hooks.close()
        for parent, name, module in reversed(swapped):
            parent._modules[name] = module
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        for m, training in modes.items():
            m.training = training


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``, or None for float32.

    ``auto`` is bfloat16 where the device computes it natively (a CUDA GPU with bf16; a CPU with AVX512-BF16
    or AMX, where oneDNN runs bf16 convolutions about twice as fast), else float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return torch.bfloat16 if caps.get("amx_bf16") or caps.get("avx512_bf16") else None
    return None
