"""One forward and one backward per batch give the probabilities, the features and every CAM.

:class:`Attributor` hooks the target layer once. During :meth:`Attributor.attribute` the part of
the forward before that layer runs without building a graph; the hook makes the layer's output a
fresh leaf that requires grad and switches grad on, so the graph (and the backward) starts there.
The backward asks autograd for the gradient of the target logits w.r.t. that leaf only, so the
model's parameters, their ``.grad`` and ``requires_grad`` flags, and its train/eval mode are never
touched, and a fully frozen backbone works too. Outside ``attribute`` the hook does nothing, so
the same model can be trained or evaluated normally, and ``load_state_dict`` keeps the hook.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from i2x.attribution.base import CamMethod, InterventionMethod
from i2x.attribution.layers import get_layer
from i2x.attribution.tokens import Layout, detect, from_map, to_map
from i2x.errors import UserError


@dataclass
class BatchResult:
    """What one batch yields: logits and probs [B, M], the class each CAM explains [B],
    raw CAMs per method [B, h, w] (float32) and, if asked, features [B, h, w, d] (float16)."""

    logits: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor
    cams: dict[str, torch.Tensor]
    features: torch.Tensor | None


class Attributor:
    """Computes logits, softmax probabilities, raw CAMs and features at one layer, batch by batch.

    ``with Attributor(model, "layer4", get_methods(["gradcam"])) as attr: attr.attribute(x, labels)``.
    The hook is registered once; call :meth:`close` (or leave the ``with`` block) to remove it.
    """

    def __init__(self, model: nn.Module, layer_name: str, methods: dict[str, CamMethod],
                 tokens: Layout | None = None) -> None:
        self.model = model
        self.layer_name = layer_name
        self.methods = dict(methods)
        self.tokens = tokens
        #: The layout of the layer's output seen in the last batch (conv map, tokens or channels-last).
        self.layout_: Layout | None = None
        self._input_hw = (0, 0)
        self._capturing = False
        self._activation: torch.Tensor | None = None
        self._calls = 0
        self._handle = get_layer(model, layer_name).register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        """During attribute(): keep the output as a leaf, switch grad on, and pass a copy downstream.

        The copy (``clone``) lets an in-place op right after the layer (ReLU(inplace=True),
        ``out += identity``) work without altering the activation we keep.
        """
        if not self._capturing:
            return None
        layout = detect(output, self._input_hw, self.tokens)
        if layout is None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise UserError(
                f"--layer {self.layer_name}: its output {shape} holds no spatial grid (neither a [B, C, h, w] map, "
                "patch tokens nor a channels-last map); choose a conv layer or a transformer block, or give --tokens"
            )
        self._calls += 1
        self.layout_ = layout
        leaf = to_map(output, layout).detach().requires_grad_()
        self._activation = leaf
        torch.set_grad_enabled(True)  # the surrounding no_grad() in attribute() restores the caller's mode
        return from_map(leaf.clone(), output, layout)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter or buffer (CPU for a model with neither)."""
        first = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    def attribute(
        self,
        x: torch.Tensor,
        target: str | torch.Tensor = "true",
        labels: torch.Tensor | None = None,
        want_features: bool = False,
    ) -> BatchResult:
        """Explain a batch ``x`` [B, ...] with one forward and one backward.

        ``target`` is ``"true"`` (explain ``labels``, D2 in docs/ARCHITECTURE.md), ``"predicted"`` (the argmax class)
        or a tensor of class indices [B]. The score explained is the pre-softmax logit of that class.
        Results stay on the model's device.
        """
        device = self.device
        x = x.to(device, non_blocking=True)
        self._input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        self._activation, self._calls = None, 0
        self._capturing = True
        try:
            # No graph before the target layer: the hook switches grad on. inference_mode(False) lets
            # a caller inside torch.inference_mode() still get gradients.
            with torch.inference_mode(False), torch.no_grad():
                logits = self.model(x)
        finally:
            self._capturing = False
        activation = self._check_activation()
        classes = self._target_classes(target, labels, logits.detach(), device)
        with torch.inference_mode(False), torch.enable_grad():
            score = logits.gather(1, classes[:, None]).sum()
            (grads,) = torch.autograd.grad(score, activation, allow_unused=True)
        if grads is None:
            raise UserError(f"--layer {self.layer_name}: the model's output does not depend on this layer")
        self._activation = None
        acts = activation.detach().float()
        grads = grads.float()
        logits = logits.detach()
        cams = {name: method(acts, grads) for name, method in self.methods.items()
                if not isinstance(method, InterventionMethod)}
        for name, method in self.methods.items():  # after the gradient maps, which they may use
            if isinstance(method, InterventionMethod):
                cams[name] = method.explain(self.model, x, classes, acts, grads, cams)
        return BatchResult(
            logits=logits,
            probs=F.softmax(logits.float(), dim=1),
            targets=classes,
            cams={name: cams[name] for name in self.methods},
            features=acts.permute(0, 2, 3, 1).to(torch.float16, memory_format=torch.contiguous_format)
            if want_features else None,
        )

    def _check_activation(self) -> torch.Tensor:
        """The leaf the hook kept, after checking the layer ran exactly once and fed the logits."""
        if self._calls != 1 or self._activation is None:
            raise UserError(
                f"--layer {self.layer_name}: the module ran {self._calls} times in one forward; "
                "choose a module that runs exactly once (e.g. its parent block)"
            )
        return self._activation

    @staticmethod
    def _target_classes(
        target: str | torch.Tensor, labels: torch.Tensor | None, logits: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """Class index per sample [B] for the CAM target (D2 in docs/ARCHITECTURE.md)."""
        if isinstance(target, torch.Tensor):
            classes = target
        elif target == "predicted":
            classes = logits.argmax(dim=1)
        elif target == "true":
            if labels is None:
                raise UserError("--target true needs the data set's labels; pass labels or use --target predicted")
            classes = labels
        else:
            raise UserError(f"--target {target!r}: use 'true' or 'predicted'")
        classes = classes.to(device=device, dtype=torch.long).reshape(-1)
        if classes.shape[0] != logits.shape[0]:
            raise UserError(f"--target: got {classes.shape[0]} labels for a batch of {logits.shape[0]} samples")
        return classes

    def close(self) -> None:
        """Remove the hook from the model."""
        self._handle.remove()

    def __enter__(self) -> "Attributor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
