"""The first layers classification and segmentation models share: the small nets' conv-pool stem, and torchvision's
models built with their stem adapted to the input's channels."""

from __future__ import annotations

from typing import Any

from torch import nn

from i2x.errors import UserError


def adapt_stem(model: nn.Module, in_channels: int, name: str) -> None:
    """Replace the first Conv2d (which expects 3 channels) by one taking ``in_channels``."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None,
                )
                setattr(parent, child_name, new)
                return
    raise UserError(f"--in-channels {in_channels}: could not find the 3-channel stem conv of torchvision:{name}")


def conv_pool_stem(in_channels: int, w: int) -> list[nn.Module]:
    """The two conv-BN-ReLU-pool stages the built-in small nets (this one and ``small-cnn``) start with: a quarter
    of the input's resolution at ``2 * w`` channels."""
    return [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2)]


def torchvision_model(name: str, in_channels: int, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, **kwargs)`` with its first convolution taking ``in_channels``."""
    import torchvision.models as tvm

    model = tvm.get_model(name, **kwargs)
    if in_channels != 3:
        adapt_stem(model, in_channels, name)
    return model
