"""The CAM method base class and the registry that names every method.

The shape follows pytorch-grad-cam: a :class:`CamMethod` turns activations ``A[B, C, h, w]`` and
gradients ``g = dS/dA`` of the same shape into a raw map ``ReLU(sum_k W_k * A_k)``; a subclass
implements :meth:`CamMethod.weights` and nothing else, and :func:`register` makes it known to the
CLI (``--methods``), the store (``cam/<name>``) and the report. Raw maps are not normalised
(per-image min-max would erase the intensity changes I2X tracks; see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import TypeVar

import torch

from i2x.errors import UserError


class CamMethod:
    """A class activation map: raw map = ReLU(sum over channels of ``weights(A, g) * A``)."""

    #: The method's name in the CLI, the store and the report.
    name: str = ""
    #: One line for ``--help`` and the report.
    summary: str = ""

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


class InterventionMethod(CamMethod):
    """A map from interventions on the input (occlusion and the like): it needs the model and the batch,
    not only the layer's activations and gradients, and costs many forwards, so ``--methods`` must name it."""

    def explain(self, model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, activations: torch.Tensor,
                grads: torch.Tensor, cams: dict[str, torch.Tensor]) -> torch.Tensor:
        """Map [B, h, w] at the layer's grid for the batch ``x`` and the explained ``classes``; ``cams`` holds the
        gradient methods' maps of the same batch."""
        raise NotImplementedError


#: Every known CAM method by name, in registration order (the default ``--methods`` is all of them).
METHODS: dict[str, CamMethod] = {}
#: Intervention methods by name: stored like CAMs when ``--methods`` names them, never a default.
INTERVENTIONS: dict[str, InterventionMethod] = {}

M = TypeVar("M", bound=type[CamMethod])


def register(cls: M) -> M:
    """Class decorator: make a :class:`CamMethod` subclass available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    if issubclass(cls, InterventionMethod):
        INTERVENTIONS[cls.name] = cls()
    else:
        METHODS[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """Forget a registered method (for plug-ins and tests that add one temporarily)."""
    METHODS.pop(name, None)
    INTERVENTIONS.pop(name, None)


def get_methods(names: list[str] | tuple[str, ...]) -> dict[str, CamMethod]:
    """Look up CAM methods by name, keeping the given order; an unknown name is a UserError."""
    known: dict[str, CamMethod] = {**METHODS, **INTERVENTIONS}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(
            f"--methods: unknown CAM method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(known)}"
        )
    return {n: known[n] for n in names}
