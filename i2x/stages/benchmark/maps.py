"""What the attribution benchmark explains (its target) and the maps of every method, timed or not.

Every map is at the target layer's grid [B, h, w]. ``occlusion`` uses the mean-colour fill and
``dea`` fuses GradCAM with occlusion (:mod:`i2x.attribution.fusion`); DEA's time includes both.
The many no-grad forwards (occlusion, ROAD) run on :func:`scoring_model`, a copy with each batch
norm folded into the convolution before it and in-place ReLUs (the small CNN's forward is 2x faster
on a CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from i2x.attribution import METHODS, Attributor, get_methods, prefer_channels_last
from i2x.attribution.fusion import dual_evidence
from i2x.attribution.occlusion import Score, class_probability, occlusion


@dataclass
class ClassTarget:
    """The explained quantity of each sample: the softmax probability of class ``classes[i]`` (CAMs explain
    its logit). The benchmark uses only :meth:`select`, :meth:`scores` and ``classes`` for the CAM
    backward, so a target of another kind (e.g. a segmentation region) plugs in with the same members."""

    classes: torch.Tensor

    def __len__(self) -> int:
        return len(self.classes)

    def select(self, positions: torch.Tensor | list[int]) -> ClassTarget:
        """The target of the samples at ``positions``."""
        return ClassTarget(self.classes[torch.as_tensor(positions)])

    def score(self, model: nn.Module) -> Score:
        """s(images, rows): image n scored for the target of sample rows[n]."""
        return class_probability(model, self.classes)

    def scores(self, model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Scores [N] (float64, CPU) of N = k B images stacked sample-fastest (image n is sample n mod B)."""
        score, b = self.score(model), len(self)
        return torch.cat([score(images[i:i + batch_size], torch.arange(i, min(i + batch_size, len(images))) % b)
                          for i in range(0, len(images), batch_size)]).double().cpu()


def _relu_in_place(graph: fx.GraphModule) -> None:
    """Make each ReLU module in-place where every call overwrites an intermediate value used nowhere else
    (no copy of a large activation per call)."""
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(graph.get_submodule(node.target), nn.ReLU):
            calls.setdefault(node.target, []).append(node)
    for target, nodes in calls.items():
        if all(isinstance(n.args[0], fx.Node) and n.args[0].op != "placeholder" and len(n.args[0].users) == 1
               for n in nodes):
            graph.get_submodule(target).inplace = True


def scoring_model(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An eval-mode copy of ``model`` for no-grad scoring, its batch norms folded into the preceding
    convolutions and its ReLUs in place; ``model`` itself when it cannot be traced or the copy's logits
    differ on ``example``."""
    if model.training or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        fused = fuse(model)
    except (fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError, AssertionError):
        return model  # data-dependent control flow and the like: score with the model as it is
    _relu_in_place(fused)
    prefer_channels_last(fused, example)
    with torch.no_grad():
        reference, candidate = model(example), fused(example)
    same = (isinstance(reference, torch.Tensor) and isinstance(candidate, torch.Tensor)
            and torch.allclose(candidate, reference, rtol=1e-4, atol=1e-5 * (1 + reference.abs().max().item())))
    return fused if same else model


class Explainer:
    """Maps [B, h, w] of every method for a model at one checkpoint; ``example`` (a few inputs) checks
    the :func:`scoring_model`."""

    def __init__(self, model: nn.Module, layer: str, grid: tuple[int, int], methods: list[str], batch_size: int,
                 example: torch.Tensor):
        self.model, self.layer, self.grid, self.methods, self.batch_size = model, layer, grid, methods, batch_size
        self.scorer = scoring_model(model, example)
        self.cams = [m for m in methods if m in METHODS]
        if "dea" in methods and "gradcam" not in self.cams:
            self.cams.append("gradcam")

    def _cams(self, names: list[str], images: torch.Tensor, target: ClassTarget) -> dict[str, torch.Tensor]:
        """CAMs of ``names`` from one forward and one backward per batch."""
        with Attributor(self.model, self.layer, get_methods(names)) as attributor:
            parts = [attributor.attribute(images[i:i + self.batch_size], target.classes[i:i + self.batch_size]).cams
                     for i in range(0, len(images), self.batch_size)]
        return {m: torch.cat([p[m] for p in parts]).float().cpu() for m in names}

    def _interventions(self, maps: dict[str, torch.Tensor], seconds: dict[str, float], images: torch.Tensor,
                       target: ClassTarget) -> None:
        if "occlusion" in self.methods or "dea" in self.methods:
            start = time.perf_counter()
            maps["occlusion"] = occlusion(target.score(self.scorer), images, self.grid, batch_size=self.batch_size)
            seconds["occlusion"] = time.perf_counter() - start
        if "dea" in self.methods:
            start = time.perf_counter()
            maps["dea"] = dual_evidence(maps["gradcam"], maps["occlusion"])
            seconds["dea"] = time.perf_counter() - start + seconds.get("gradcam", 0.0) + seconds["occlusion"]

    def timed(self, images: torch.Tensor, target: ClassTarget) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Every method's maps and the seconds each took: one pass per CAM method, so each is timed alone."""
        maps: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        for name in self.cams:
            start = time.perf_counter()
            maps.update(self._cams([name], images, target))
            seconds[name] = time.perf_counter() - start
        self._interventions(maps, seconds, images, target)
        return {m: maps[m] for m in self.methods}, {m: seconds[m] for m in self.methods}

    def maps(self, images: torch.Tensor, target: ClassTarget) -> dict[str, torch.Tensor]:
        """Every method's maps, untimed: all CAM methods from one pass."""
        maps = self._cams(self.cams, images, target) if self.cams else {}
        self._interventions(maps, {}, images, target)
        return {m: maps[m] for m in self.methods}
