"""Grad-CAM (Selvaraju et al., ICCV 2017)."""

from __future__ import annotations

import torch

from i2x.attribution.base import CamMethod, register


@register
class GradCAM(CamMethod):
    """Grad-CAM: channel weight = spatial mean of the gradient."""

    name = "gradcam"
    summary = "Grad-CAM: channel weights are the spatial mean of the gradient"

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)
