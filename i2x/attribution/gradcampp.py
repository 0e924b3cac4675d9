"""Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19)."""

from __future__ import annotations

import torch

from i2x.attribution.base import CamMethod, register

#: The denominator guard, as in pytorch-grad-cam.
GRADCAM_PP_EPS = 1e-6


@register
class GradCAMPlusPlus(CamMethod):
    """Grad-CAM++ with the exponential cancelled.

    alpha = g^2 / (2 g^2 + sum_ab(A) g^3 + eps), alpha = 0 where g == 0, W_k = sum_ij alpha * ReLU(g).
    Only locations with g > 0 contribute, so g is replaced by p = ReLU(g) throughout:
    W_k = sum_ij p^3 / (p^2 (2 + sum_ab(A) p) + eps), which is exactly 0 where g <= 0. It runs on
    every batch, so it works in place on two temporaries (each large allocation costs page faults).
    """

    name = "gradcampp"
    summary = "Grad-CAM++: positive gradients weighted by eq. 19's alpha"

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        p = grads.clamp(min=0)
        denom = activations.sum(dim=(2, 3), keepdim=True) * p
        denom.add_(2).mul_(p).mul_(p).add_(GRADCAM_PP_EPS)  # p^2 (2 + sum(A) p) + eps
        return p.pow_(3).div_(denom).sum(dim=(2, 3), keepdim=True)
