"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018) to test whether a saliency map is faithful.

Pixels are changed in descending saliency order: *deletion* sets them to a baseline, *insertion*
copies them from the original into a baseline image. The score is the softmax probability of the
target class after changing the first ``round(f * H * W)`` pixels, f = 0, 1/steps, ..., 1, and the
AUC is the trapezoid rule over f in [0, 1]. A faithful map gives a low deletion AUC and a high
insertion AUC, compared with the same curves in random pixel order.

Conventions chosen here (the papers leave them open):

* The count of changed pixels is ``round(f * H * W)`` rounded half up, in exact integer arithmetic.
* A "pixel" is a spatial location: all channels of it change together.
* Baselines: ``"zero"`` (in normalised inputs this *is* the data set's mean colour, RISE's deletion
  reference, and our deletion default), ``"mean"`` (a per-channel colour passed in as
  ``mean_value``, for inputs that are not normalised) and ``"blur"`` (Gaussian blur, kernel 11,
  sigma 5, RISE's insertion start and our insertion default).
* Ties in saliency keep pixel (row-major) order, or are broken at random when a generator is
  given; this matters for flat maps (e.g. an all-zero CAM), where row-major order would always
  delete the top rows first.
* ``model_fn`` is called as is: put the model in eval mode first.

Functions take tensors, not paths; wiring to the store and the CLI lives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF

from i2x.errors import UserError

MODES = ("deletion", "insertion")
BASELINES = ("mean", "zero", "blur")
DEFAULT_BASELINE = {"deletion": "zero", "insertion": "blur"}


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


def baseline_image(
    images: torch.Tensor,
    baseline: str,
    mean_value: Sequence[float] | torch.Tensor | None = None,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
) -> torch.Tensor:
    """The image [B, C, H, W] that changed pixels take (deletion) or that insertion starts from."""
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        if mean_value is None:
            raise ValueError("baseline='mean' needs mean_value, the data set's mean colour per channel")
        mean = torch.as_tensor(mean_value, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        if mean.shape[1] != images.shape[1]:
            raise ValueError(f"mean_value has {mean.shape[1]} channels, the images have {images.shape[1]}")
        return mean.expand_as(images).clone()
    if baseline == "blur":
        # Reflect padding needs the kernel radius below the image size; shrink the kernel on tiny images.
        kernel = min(blur_kernel, 2 * min(images.shape[-2:]) - 1)
        return TF.gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[blur_sigma, blur_sigma])
    raise UserError(f"baseline {baseline!r} is not one of {', '.join(BASELINES)}; choose one of them")


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
    baseline: str | None = None,
    mean_value: Sequence[float] | torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    batch_size: int = 512,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
) -> torch.Tensor:
    """Target-class probability [B, steps+1] (on the CPU) as pixels are deleted or inserted in saliency order.

    ``saliency`` [B, H, W] must be input-sized; it is ignored when ``order`` [B, H*W] is given.
    ``baseline`` None picks RISE's: ``"zero"`` for deletion, ``"blur"`` for insertion.
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
    fill = baseline_image(images, baseline or DEFAULT_BASELINE[mode], mean_value, blur_kernel, blur_sigma)
    start, end = (images, fill) if mode == "deletion" else (fill, images)
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


@dataclass
class FaithfulnessResult:
    """Per-sample deletion/insertion curves and AUCs of a saliency map and of random pixel orders."""

    fractions: np.ndarray  # [S+1]
    baselines: dict[str, str]  # mode -> baseline used
    deletion_curves: np.ndarray  # [B, S+1], saliency order
    insertion_curves: np.ndarray  # [B, S+1]
    random_deletion_curves: np.ndarray  # [B, S+1], mean over random draws
    random_insertion_curves: np.ndarray  # [B, S+1]
    deletion_auc: np.ndarray  # [B]
    insertion_auc: np.ndarray  # [B]
    random_deletion_auc: np.ndarray  # [draws, B], one row per random order
    random_insertion_auc: np.ndarray  # [draws, B]
    deletion_drop: dict[float, np.ndarray] = field(default_factory=dict)  # fraction -> [B]
    random_deletion_drop: dict[float, np.ndarray] = field(default_factory=dict)  # fraction -> [B], mean over draws

    @property
    def random_deletion_auc_mean(self) -> np.ndarray:
        """Random-order deletion AUC [B], mean over the draws."""
        return self.random_deletion_auc.mean(axis=0)

    @property
    def random_deletion_auc_std(self) -> np.ndarray:
        """Random-order deletion AUC [B], population std over the draws."""
        return self.random_deletion_auc.std(axis=0)

    @property
    def random_insertion_auc_mean(self) -> np.ndarray:
        """Random-order insertion AUC [B], mean over the draws."""
        return self.random_insertion_auc.mean(axis=0)

    @property
    def random_insertion_auc_std(self) -> np.ndarray:
        """Random-order insertion AUC [B], population std over the draws."""
        return self.random_insertion_auc.std(axis=0)

    def to_dict(self) -> dict:
        """JSON-ready summary: sample means, mean curves and per-sample values, all plain lists and floats."""
        per_sample = {
            name: getattr(self, name).tolist()
            for name in (
                "deletion_auc", "insertion_auc", "random_deletion_auc_mean", "random_deletion_auc_std",
                "random_insertion_auc_mean", "random_insertion_auc_std",
            )
        }
        per_sample["initial_prob"] = self.deletion_curves[:, 0].tolist()
        drops = {"deletion_drop": self.deletion_drop, "random_deletion_drop": self.random_deletion_drop}
        for name, by_fraction in drops.items():
            per_sample[name] = {f"{f:g}": v.tolist() for f, v in by_fraction.items()}
        mean = {name: float(np.mean(values)) for name, values in per_sample.items() if isinstance(values, list)}
        for name, by_fraction in drops.items():
            mean[name] = {f"{f:g}": float(v.mean()) for f, v in by_fraction.items()}
        curves = ("deletion_curves", "insertion_curves", "random_deletion_curves", "random_insertion_curves")
        return {
            "n_samples": int(self.deletion_auc.shape[0]),
            "fractions": self.fractions.tolist(),
            "baselines": dict(self.baselines),
            "mean": mean,
            "mean_curves": {name: getattr(self, name).mean(axis=0).tolist() for name in curves},
            "per_sample": per_sample,
        }


def faithfulness_study(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    saliency: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 20,
    baseline: str | None = None,
    random_draws: int = 5,
    fractions: Sequence[float] = (0.25, 0.5),
    generator: torch.Generator | None = None,
    mean_value: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 512,
) -> FaithfulnessResult:
    """Deletion and insertion of a saliency map against ``random_draws`` random pixel orders, with drops at ``fractions``.

    ``baseline`` applies to both modes when given; None uses RISE's per mode (zero / blur).
    ``generator`` seeds the random orders and the tie-breaking of flat saliency maps.
    """
    _check_steps(steps)
    if random_draws < 1:
        raise UserError(f"random_draws must be at least 1, got {random_draws}")
    b, _, h, w = images.shape
    if tuple(saliency.shape) != (b, h, w):
        raise ValueError(f"saliency must be input-sized [B, H, W] = {(b, h, w)}, got {tuple(saliency.shape)}")
    grid = fraction_grid(steps)
    options = dict(steps=steps, mean_value=mean_value, batch_size=batch_size)
    cam_order = pixel_order(saliency, generator)
    curves, random_curves, baselines = {}, {}, {}
    for mode in MODES:
        baselines[mode] = baseline or DEFAULT_BASELINE[mode]
        curves[mode] = perturbation_curves(
            model_fn, images, None, targets, mode, baseline=baselines[mode], order=cam_order, **options
        ).double().numpy()
        random_curves[mode] = np.stack([
            perturbation_curves(
                model_fn, images, None, targets, mode, baseline=baselines[mode],
                order=random_order(b, h, w, generator), **options,
            ).double().numpy()
            for _ in range(random_draws)
        ])  # [draws, B, S+1]
    mean_random_deletion = random_curves["deletion"].mean(axis=0)
    return FaithfulnessResult(
        fractions=grid,
        baselines=baselines,
        deletion_curves=curves["deletion"],
        insertion_curves=curves["insertion"],
        random_deletion_curves=mean_random_deletion,
        random_insertion_curves=random_curves["insertion"].mean(axis=0),
        deletion_auc=auc(curves["deletion"], grid),
        insertion_auc=auc(curves["insertion"], grid),
        random_deletion_auc=auc(random_curves["deletion"], grid),
        random_insertion_auc=auc(random_curves["insertion"], grid),
        deletion_drop={float(f): drop_at(curves["deletion"], f, grid) for f in fractions},
        random_deletion_drop={float(f): drop_at(mean_random_deletion, f, grid) for f in fractions},
    )
