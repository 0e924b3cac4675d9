"""LayerCAM (Jiang et al., IEEE TIP 2021)."""

from __future__ import annotations

import torch

from i2x.attribution.base import CamMethod, register


@register
class LayerCAM(CamMethod):
    """LayerCAM: element-wise weight = ReLU(g), so each location keeps its own."""

    name = "layercam"
    summary = "LayerCAM: each location weighted by its own positive gradient"

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.clamp(min=0)
