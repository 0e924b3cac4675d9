"""Dual-evidence attribution (DEA): gradient evidence fused with region-level intervention evidence.

The benchmark paper that proposes DEA gives no formula; ours, per image and cell:

    G = gradcam / max(gradcam),   O = occlusion / max(occlusion)     (0 where the max is 0)
    a = 1 - |G - O|                                                   (agreement, in [0, 1])
    DEA = a (G + O) / 2 + (1 - a) O  =  O + a (G - O) / 2

Where the two agree (a = 1) DEA is their common value; where they disagree completely (a = 0) it
keeps the causal (occlusion) evidence and drops the gradient's, so a cell whose gradient is
unstable or saturated but whose removal lowers the score keeps its support, and a cell the
gradient alone highlights gets none. DEA always lies between G and O.
"""

from __future__ import annotations

import torch


def peak_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map [B, h, w] divided by its maximum (maps are non-negative); an all-zero map stays zero."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def dual_evidence(gradient: torch.Tensor, intervention: torch.Tensor) -> torch.Tensor:
    """DEA maps [B, h, w] from non-negative gradient maps (GradCAM) and intervention maps (occlusion)."""
    g, o = peak_normalise(gradient.float()), peak_normalise(intervention.float())
    agreement = 1 - (g - o).abs()
    return o + agreement * (g - o) / 2
