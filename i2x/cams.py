"""CAM methods: each one only says how to weight the target layer's activations by its gradients.

The shape follows pytorch-grad-cam: a :class:`CamMethod` turns activations ``A[B, C, h, w]`` and
gradients ``g = dS/dA`` of the same shape into a raw map ``ReLU(sum_k W_k * A_k)``; a subclass
implements :meth:`CamMethod.weights` and nothing else. Raw maps are not normalised (DESIGN D3:
per-image min-max would erase the intensity changes I2X tracks); :func:`display_maps` normalises
for display only, exactly as pytorch-grad-cam does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UserError

# The denominator guard of GradCAM++ and the min-max guard of display maps, both as in pytorch-grad-cam.
GRADCAM_PP_EPS = 1e-6
MINMAX_EPS = 1e-7


class CamMethod:
    """A class activation map: raw map = ReLU(sum over channels of ``weights(A, g) * A``)."""

    name: str = ""

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Return the weights W, broadcastable to ``activations`` ([B, C, 1, 1] or [B, C, h, w])."""
        raise NotImplementedError

    def __call__(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Raw map [B, h, w] from activations and gradients [B, C, h, w] (ReLU'd, not normalised)."""
        w = self.weights(activations, grads)
        if w.shape[-2:] == (1, 1):  # one weight per channel: a batched matrix product is fastest
            cam = torch.einsum("bc,bchw->bhw", w[..., 0, 0], activations)
        else:
            cam = (w * activations).sum(dim=1)
        return cam.clamp_(min=0)


class GradCAM(CamMethod):
    """Grad-CAM (Selvaraju et al., 2017): channel weight = spatial mean of the gradient."""

    name = "gradcam"

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)


class GradCAMPlusPlus(CamMethod):
    """Grad-CAM++ (Chattopadhay et al., 2018, eq. 19 with the exponential cancelled).

    alpha = g^2 / (2 g^2 + sum_ab(A) g^3 + eps), alpha = 0 where g == 0, W_k = sum_ij alpha * ReLU(g).
    Only locations with g > 0 contribute, so g is replaced by p = ReLU(g) throughout:
    W_k = sum_ij p^3 / (p^2 (2 + sum_ab(A) p) + eps), which is exactly 0 where g <= 0. It runs on
    every batch, so it works in place on two temporaries (each large allocation costs page faults).
    """

    name = "gradcampp"

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        p = grads.clamp(min=0)
        denom = activations.sum(dim=(2, 3), keepdim=True) * p
        denom.add_(2).mul_(p).mul_(p).add_(GRADCAM_PP_EPS)  # p^2 (2 + sum(A) p) + eps
        return p.pow_(3).div_(denom).sum(dim=(2, 3), keepdim=True)


class LayerCAM(CamMethod):
    """LayerCAM (Jiang et al., 2021): element-wise weight = ReLU(g), so each location keeps its own."""

    name = "layercam"

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.clamp(min=0)


METHODS: dict[str, CamMethod] = {m.name: m for m in (GradCAM(), GradCAMPlusPlus(), LayerCAM())}


def get_methods(names: list[str] | tuple[str, ...]) -> dict[str, CamMethod]:
    """Look up CAM methods by name (``gradcam``, ``gradcampp``, ``layercam``), keeping the given order."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UserError(
            f"--methods: unknown CAM method(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(METHODS)}"
        )
    return {n: METHODS[n] for n in names}


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image (map - min) / (max + 1e-7) over the last two dims, as pytorch-grad-cam's scale_cam_image."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + MINMAX_EPS)


def display_maps(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps for display: [B, h, w] raw -> [B, H, W] in [0, 1], as pytorch-grad-cam shows them.

    ReLU, per-image min-max, bilinear upsample to ``size`` = (H, W) (align_corners=False, which
    equals cv2.resize), then min-max again.
    """
    scaled = _minmax(raw.float().clamp(min=0))
    resized = F.interpolate(scaled[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return _minmax(resized)
