"""Dual-evidence attribution (DEA): gradient evidence fused with region-level intervention evidence.

The benchmark paper that proposes DEA gives no formula; ours, per image and cell:

    G = gradcam / max(gradcam),   O = occlusion / max(occlusion)     (0 where the max is 0)
    a = 1 - |G - O|                                                   (agreement, in [0, 1])
    DEA = a (G + O) / 2 + (1 - a) O  =  O + a (G - O) / 2

Where the two agree (a = 1) DEA is their common value; where they disagree completely (a = 0) it
keeps the causal (occlusion) evidence and drops the gradient's, so a cell whose gradient is
unstable or saturated but whose removal lowers the score keeps its support, and a cell the
gradient alone highlights gets none. DEA always lies between G and O, in [0, 1] (unlike the raw CAMs).
:class:`DualEvidence` makes it a stored method (``i2x extract --methods gradcam,occlusion,dea``).
"""

from __future__ import annotations

import torch

from i2x.attribution.base import InterventionMethod, register
from i2x.attribution.gradcam import GradCAM
from i2x.attribution.occlusion import Occlusion


def peak_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map [B, h, w] divided by its maximum (maps are non-negative); an all-zero map stays zero."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def dual_evidence(gradient: torch.Tensor, intervention: torch.Tensor) -> torch.Tensor:
    """DEA maps [B, h, w] from non-negative gradient maps (GradCAM) and intervention maps (occlusion)."""
    g, o = peak_normalise(gradient.float()), peak_normalise(intervention.float())
    agreement = 1 - (g - o).abs()
    return o + agreement * (g - o) / 2


@register
class DualEvidence(InterventionMethod):
    """DEA of GradCAM and occlusion (each taken from the same batch's maps when they are extracted too)."""

    name = "dea"
    summary = "dual-evidence fusion: occlusion + agreement-weighted GradCAM, peak-normalised"

    def explain(self, model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, activations: torch.Tensor,
                grads: torch.Tensor, cams: dict[str, torch.Tensor]) -> torch.Tensor:
        gradient = cams["gradcam"] if "gradcam" in cams else GradCAM()(activations, grads)
        intervention = cams["occlusion"] if "occlusion" in cams else \
            Occlusion().explain(model, x, classes, activations, grads, cams)
        return dual_evidence(gradient, intervention)
