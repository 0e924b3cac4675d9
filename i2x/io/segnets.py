"""Segmentation model specs: the built-in ``small-segnet`` and torchvision's segmentation models.

A segmentation model returns per-pixel logits ``[B, M, H, W]``, as a tensor or as a dict holding them under
``"out"`` (torchvision); :func:`pixel_logits` reads either. torchvision's ``fcn_resnet50``,
``deeplabv3_resnet50``, ``lraspp_mobilenet_v3_large`` (and the other models of
``torchvision.models.segmentation``) are built with ``weights=None`` and ``weights_backbone=None`` (never
downloads), no auxiliary head, ``num_classes`` classes and a stem resized to the data's channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from i2x.errors import UserError
from i2x.io.stems import conv_pool_stem, torchvision_model


def pixel_logits(output: Any) -> torch.Tensor:
    """The per-pixel logits ``[B, M, H, W]`` of a segmentation model's output (a tensor or a dict with ``out``)."""
    if isinstance(output, dict):
        if "out" not in output:
            raise UserError(f"--model: the model returned a dict with keys {', '.join(map(str, output))}; a "
                            "segmentation model's dict must hold its per-pixel logits under 'out'")
        output = output["out"]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UserError(f"--model: a segmentation model must return per-pixel logits [B, M, H, W]; it returned {shape}")
    return output


def check_pixel_logits(model: nn.Module, dataset: Any, spec: str) -> None:
    """Refuse, before training, a model that gives no per-pixel logits of the image's size for segmentation data."""
    x = dataset[0][0].unsqueeze(0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        try:
            logits = pixel_logits(model(x))
        except UserError:
            raise UserError(f"--model {spec}: segmentation needs per-pixel logits [B, M, H, W] (a tensor or a dict "
                            "with 'out'); use --model small-segnet or torchvision:fcn_resnet50") from None
    model.train(was_training)
    if tuple(logits.shape[-2:]) != tuple(x.shape[-2:]):
        raise UserError(f"--model {spec}: its logits are {tuple(logits.shape[-2:])} per image but the masks are "
                        f"{tuple(x.shape[-2:])}; upsample the logits to the input size in the model's forward")


class SmallSegNet(nn.Module):
    """A tiny fully convolutional net: an 8x8 grid at ``features`` for 32x32 inputs, logits upsampled to the input.

    Small on purpose: a few epochs on the synthetic shapes take seconds on two CPU cores.
    """

    def __init__(self, num_classes: int = 4, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *conv_pool_stem(in_channels, w),
            nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.classifier(self.features(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


def torchvision_segmentation(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """``torchvision.models.segmentation.NAME`` without any weights, sized to the classes and channels."""
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if name.startswith(("fcn", "deeplab")):
        kwargs["aux_loss"] = False
    return torchvision_model(name, in_channels, **kwargs)


def is_torchvision_segmentation(name: str) -> bool:
    """Whether ``name`` is one of torchvision's segmentation models."""
    import torchvision.models as tvm

    return name in tvm.list_models(module=tvm.segmentation)
