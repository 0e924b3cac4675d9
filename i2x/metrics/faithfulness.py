"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018) to test whether a saliency map is faithful.

Pixels are changed in descending saliency order: *deletion* sets them to a baseline, *insertion*
copies them from the original into a baseline image. The score is the softmax probability of the
target class after changing the first ``round(f * H * W)`` pixels, f = 0, 1/steps, ..., 1, and the
AUC is the trapezoid rule over f in [0, 1]. A faithful map gives a low deletion AUC and a high
insertion AUC, compared with the same curves in random pixel order.

Conventions chosen here (the papers leave them open):

* The count of changed pixels is ``round(f * H * W)`` rounded half up, in exact integer arithmetic.
* A "pixel" is a spatial location: all channels of it change together.
* Fills (:data:`FILLS`, one vocabulary for every study): ``"road"`` (ROAD's noisy linear imputation
  of the changed pixels from their neighbours, :mod:`i2x.metrics.road`; our deletion default),
  ``"mean"`` (the data set's mean colour: 0 in normalised inputs, RISE's deletion reference),
  ``"black"`` (black pixels: -mean/std in normalised inputs) and ``"blur"`` (Gaussian blur, kernel
  11, sigma 5, RISE's insertion start and our insertion default). ``"mean"`` and ``"black"`` are
  constant colours: give ``colour`` (see :func:`constant_colour`); ``"mean"`` defaults to 0.
  A constant fill on scattered pixels makes out-of-distribution images, so a random order can
  beat a faithful map under it; ROAD's imputation avoids most of that.
* Ties in saliency keep pixel (row-major) order, or are broken at random when a generator is
  given; this matters for flat maps (e.g. an all-zero CAM), where row-major order would always
  delete the top rows first.
* ``model_fn`` is called as is: put the model in eval mode first.

Functions take tensors, not paths; wiring to the store and the CLI lives elsewhere.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from i2x.errors import UserError
from i2x.metrics.road import NOISE, impute

MODES = ("deletion", "insertion")
#: Every pixel fill, by name: ROAD imputation, mean colour, black, Gaussian blur.
FILLS = ("road", "mean", "black", "blur")
DEFAULT_FILL = {"deletion": "road", "insertion": "blur"}
#: Why a random order can beat a map under a constant fill, said wherever it happens (report page and CLI).
OOD_NOTE = ("A constant fill on scattered pixels makes out-of-distribution images, so this is likely an artefact of "
            "the fill rather than evidence against the map; ROAD's imputation (--baseline road) avoids most of it.")


def pixel_order(saliency: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat pixel indices [B, H*W] in descending saliency; ties keep row-major order, or random order with a generator."""
    flat = saliency.reshape(saliency.shape[0], -1)
    if generator is None:
        return torch.sort(flat, dim=1, descending=True, stable=True).indices
    shuffle = random_order(flat.shape[0], 1, flat.shape[1], generator).to(flat.device)
    within = torch.sort(flat.gather(1, shuffle), dim=1, descending=True, stable=True).indices
    return shuffle.gather(1, within)


def random_order(b: int, h: int, w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random pixel order [B, H*W] per sample (the random-order baseline), on the CPU."""
    return torch.argsort(torch.rand(b, h * w, generator=generator), dim=1)


def change_counts(pixels: int, steps: int) -> torch.Tensor:
    """Number of pixels changed at each of the steps+1 points: round(k/steps * pixels), half up, k = 0..steps."""
    k = torch.arange(steps + 1, dtype=torch.long)
    return (2 * k * pixels + steps) // (2 * steps)


def constant_colour(fill: str, mean: Sequence[float], std: Sequence[float]) -> list[float]:
    """Per-channel input value of a constant fill for inputs normalised by (mean, std): "mean" -> 0, "black" -> -mean/std."""
    if fill == "mean":
        return [0.0] * len(mean)
    if fill == "black":
        return [-m / s for m, s in zip(mean, std)]
    raise ValueError(f"fill {fill!r} is not a constant colour; use mean or black")


def fill_image(
    images: torch.Tensor,
    fill: str,
    colour: Sequence[float] | torch.Tensor | None = None,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
) -> torch.Tensor:
    """The image [B, C, H, W] that changed pixels take (deletion) or that insertion starts from, for a fill
    that does not depend on which pixels change (all but ``"road"``)."""
    if fill in ("mean", "black"):
        if colour is None:
            if fill == "black":
                raise ValueError("fill='black' needs colour, black's value per channel (-mean/std when normalised)")
            colour = [0.0] * images.shape[1]
        value = torch.as_tensor(colour, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        if value.shape[1] != images.shape[1]:
            raise ValueError(f"colour has {value.shape[1]} channels, the images have {images.shape[1]}")
        return value.expand_as(images).clone()
    if fill == "blur":
        # Reflect padding needs the kernel radius below the image size; shrink the kernel on tiny images.
        kernel = min(blur_kernel, 2 * min(images.shape[-2:]) - 1)
        from torchvision.transforms.functional import gaussian_blur  # torchvision's import is slow: on use only

        return gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[blur_sigma, blur_sigma])
    raise UserError(f"fill {fill!r} is not one of {', '.join(FILLS)}; choose one of them")


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}; use e.g. 20")


def perturbation_curves(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    saliency: torch.Tensor | None,
    target: torch.Tensor,
    mode: str = "deletion",
    steps: int = 20,
    fill: str | None = None,
    colour: Sequence[float] | torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    batch_size: int = 512,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    noise: float = NOISE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Target-class probability [B, steps+1] (on the CPU) as pixels are deleted or inserted in saliency order.

    ``saliency`` [B, H, W] must be input-sized; it is ignored when ``order`` [B, H*W] is given.
    ``fill`` None picks :data:`DEFAULT_FILL`: ROAD for deletion, blur for insertion. With ``"road"``
    the pixels not (yet) holding the original are imputed (``noise``, ``generator``: ROAD's noise).
    All B*(steps+1) perturbed images are built chunk by chunk (``batch_size`` per model call) by one
    mask comparison, ``rank < count``, so memory does not grow with B or steps.
    """
    if mode not in MODES:
        raise UserError(f"mode {mode!r} is not one of {', '.join(MODES)}; choose one of them")
    _check_steps(steps)
    b, _, h, w = images.shape
    if order is None:
        if saliency is None or tuple(saliency.shape) != (b, h, w):
            got = None if saliency is None else tuple(saliency.shape)
            raise ValueError(f"saliency must be [B, H, W] = {(b, h, w)} like the images, got {got}")
        order = pixel_order(saliency)
    if tuple(order.shape) != (b, h * w):
        raise ValueError(f"order must be [B, H*W] = {(b, h * w)}, got {tuple(order.shape)}")
    device = images.device
    order = order.to(device)
    fill = fill or DEFAULT_FILL[mode]
    if fill == "road":
        start = end = None
    else:
        filled = fill_image(images, fill, colour, blur_kernel, blur_sigma)
        start, end = (images, filled) if mode == "deletion" else (filled, images)
    # rank[b, p] = position of pixel p in sample b's order; pixel p is changed when rank < count.
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=device).expand(b, -1))
    counts = change_counts(h * w, steps).to(device)
    target = torch.as_tensor(target, device=device).long()
    n_points = b * (steps + 1)
    probs = []
    with torch.no_grad():
        for lo in range(0, n_points, batch_size):
            point = torch.arange(lo, min(lo + batch_size, n_points), device=device)
            sample, step = point // (steps + 1), point % (steps + 1)
            changed = (rank[sample] < counts[step, None]).view(-1, 1, h, w)
            if start is None:  # ROAD: impute what is not the original image
                removed = changed if mode == "deletion" else ~changed
                x = impute(images[sample], removed[:, 0], noise, generator)
            else:
                x = torch.where(changed, end[sample], start[sample])
            p = model_fn(x).softmax(dim=1).gather(1, target[sample, None])[:, 0]
            probs.append(p.cpu())
    return torch.cat(probs).view(b, steps + 1)


def fraction_grid(steps: int) -> np.ndarray:
    """The fractions 0, 1/steps, ..., 1 at which the curves are sampled."""
    return np.linspace(0.0, 1.0, steps + 1)


def auc(curves: np.ndarray | torch.Tensor, fractions: np.ndarray | None = None) -> np.ndarray:
    """Area under each curve [..., S] by the trapezoid rule over the fraction changed (default: uniform on [0, 1])."""
    curves = np.asarray(curves, dtype=np.float64)
    if fractions is None:
        fractions = fraction_grid(curves.shape[-1] - 1)
    return np.trapezoid(curves, x=np.asarray(fractions, dtype=np.float64), axis=-1)


def value_at(curves: np.ndarray | torch.Tensor, fraction: float, fractions: np.ndarray | None = None) -> np.ndarray:
    """Each curve's value [...] at ``fraction``, linearly interpolated between grid points."""
    curves = np.asarray(curves, dtype=np.float64)
    grid = fraction_grid(curves.shape[-1] - 1) if fractions is None else np.asarray(fractions, dtype=np.float64)
    if not grid[0] <= fraction <= grid[-1]:
        raise ValueError(f"fraction {fraction} is outside the grid [{grid[0]}, {grid[-1]}]")
    i = int(np.clip(np.searchsorted(grid, fraction, side="right") - 1, 0, len(grid) - 2))
    t = (fraction - grid[i]) / (grid[i + 1] - grid[i])
    return (1 - t) * curves[..., i] + t * curves[..., i + 1]


def drop_at(curves: np.ndarray | torch.Tensor, fraction: float, fractions: np.ndarray | None = None) -> np.ndarray:
    """Confidence drop [...] after changing ``fraction`` of the pixels: curve[0] - curve(fraction)."""
    curves = np.asarray(curves, dtype=np.float64)
    return curves[..., 0] - value_at(curves, fraction, fractions)


def select_buckets(
    probs: np.ndarray,
    labels: np.ndarray,
    per_bucket: int = 12,
    positive_class: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Sample indices for the chest X-ray study's buckets: "tp", "fp" and "random", at most ``per_bucket`` each.

    "tp": correctly predicted samples (with ``positive_class``: predicted and labelled positive);
    "fp": errors (with ``positive_class``: predicted positive, labelled otherwise); "random": any sample.
    Each bucket is a seeded uniform draw without replacement, not the most confident samples:
    those sit where softmax saturates and barely move under deletion, which would flatter the map.
    Indices come back sorted; buckets may overlap ("random" can contain tp and fp samples).
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    predicted = probs.argmax(axis=1)
    if positive_class is None:
        tp, fp = predicted == labels, predicted != labels
    else:
        positive = predicted == positive_class
        tp, fp = positive & (labels == positive_class), positive & (labels != positive_class)
    rng = np.random.default_rng(seed)
    pools = {"tp": np.flatnonzero(tp), "fp": np.flatnonzero(fp), "random": np.arange(len(labels))}
    return {
        name: np.sort(rng.choice(pool, size=min(per_bucket, len(pool)), replace=False))
        for name, pool in pools.items()
    }
