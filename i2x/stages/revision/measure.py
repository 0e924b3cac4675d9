"""Re-evaluation of a (revised) model against one artefact: clean and attacked test accuracy, the gap, the paste
test's flip rate and the share of CAM mass on the artefact.

The *attacked* test set pastes the artefact onto every test image of the other classes: the pixels under the
artefact's mask come from a carrying training image (donor ``i % D`` for the i-th such image, the same for every
model measured), the rest stay the recipient's. With the ground truth of a planted set the donors carry the
artefact exactly under its mask, so the paste is the painted artefact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from i2x.attribution import Attributor, get_methods
from i2x.io.store import chunk_ranges


def attacked(images: torch.Tensor, mask: torch.Tensor, donors: torch.Tensor) -> torch.Tensor:
    """``images`` [N, C, H, W] with the pixels under ``mask`` [H, W] (or one mask per image [N, H, W]) taken from
    ``donors`` [D, C, H, W], donor ``i % D`` into image i."""
    rows = torch.arange(len(images)) % len(donors)
    m = mask if mask.dim() == 3 else mask.expand(len(images), *mask.shape)
    return torch.where(m[:, None], donors[rows], images)


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes of ``images`` in eval mode (the mode is restored after)."""
    was_training = model.training
    model.eval()
    out = [model(images[lo:hi].to(device)).argmax(1).cpu() for lo, hi in chunk_ranges(len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def cam_share(model: nn.Module, layer: str, images: torch.Tensor, target: int, mask: torch.Tensor,
              device: torch.device, batch_size: int = 512) -> float:
    """Mean over ``images`` of the share of the class-``target`` Grad-CAM mass (upsampled bilinearly to the input)
    that lies on ``mask`` [H, W]; images whose map is all zero are left out (nan when all are)."""
    was_training = model.training
    model.eval()
    shares = []
    with Attributor(model, layer, get_methods(["gradcam"])) as attributor:
        for lo, hi in chunk_ranges(len(images), batch_size):
            x = images[lo:hi]
            cams = attributor.attribute(x, torch.full((len(x),), target, dtype=torch.long)).cams["gradcam"]
            up = F.interpolate(cams[:, None].float().cpu(), size=tuple(mask.shape), mode="bilinear",
                               align_corners=False)[:, 0].clamp(min=0)
            total = up.flatten(1).sum(1)
            shares.append(((up * mask).flatten(1).sum(1) / total.clamp(min=1e-12))[total > 0])
    model.train(was_training)
    values = torch.cat(shares) if shares else torch.empty(0)
    return float(values.mean()) if values.numel() else float("nan")


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, donors: torch.Tensor,
            marked_class: int, layer: str, device: torch.device, batch_size: int = 512) -> dict[str, Any]:
    """The re-evaluation of ``model`` on the test ``images``/``labels`` against the artefact under ``mask`` pasted
    from ``donors`` (carrying images of ``marked_class``): accuracies as shares, the gap and flip rate as shares."""
    other = labels != marked_class
    pasted = attacked(images[other], mask, donors)
    clean_pred = predictions(model, images, device, batch_size)
    pasted_pred = predictions(model, pasted, device, batch_size)
    attacked_pred = clean_pred.clone()
    attacked_pred[other] = pasted_pred
    before = clean_pred[other] == marked_class
    after = pasted_pred == marked_class
    return {
        "clean_accuracy": float((clean_pred == labels).float().mean()),
        "attacked_accuracy": float((attacked_pred == labels).float().mean()),
        "gap": float(after.float().mean() - before.float().mean()),
        "flip_rate": float(after[~before].float().mean()) if (~before).any() else float("nan"),
        "cam_share": cam_share(model, layer, pasted, marked_class, mask, device, batch_size),
        "images": int(len(labels)), "attacked_images": int(other.sum()),
    }


#: the measures of :func:`measure` that the tables compare, and how each is shown
MEASURES = ("gap", "clean_accuracy", "attacked_accuracy", "flip_rate", "cam_share")


def mask_record(mask: np.ndarray) -> dict[str, Any]:
    """The artefact mask as written to finetune.json: its size, pixel count and packed bits (hex)."""
    return {"shape": list(mask.shape), "pixels": int(mask.sum()), "bits": np.packbits(mask.ravel()).tobytes().hex()}
