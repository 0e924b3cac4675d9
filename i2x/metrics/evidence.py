"""Loss terms and scores of minimal evidence masks (Med-CAM, arXiv 2604.13695), per sample.

A mask ``m`` in [0, 1] (``[B, 1, H, W]``) keeps part of an image: the evidence is
``e = m * x + (1 - m) * b`` with ``b`` the fill (:func:`fill_of`). Every loss term returns one value per sample (``[B]``) so a batch of masks is
optimised by summing them; the area-type terms are means over pixels (the paper's L1 norms divided
by H*W), so their weights do not depend on the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FILLS = ("border", "mean", "black")


def fill_of(kind: str, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The fill of the pixels a mask removes, in normalised units, broadcastable to ``images`` ``[B, C, H, W]``.

    ``border``: per image and channel the median of the image's outermost pixels, i.e. its own background
    (black on digits, the texture's grey on textured images), so the evidence is the kept part on the
    background the model knows; ``mean``: the data mean (0 after normalisation: the paper's ``m * x`` on
    the network's input); ``black``: pixel value 0 (``m * x`` in pixel units). ``mean``/``std``: ``[1, C, 1, 1]``.
    """
    if kind == "border":
        ring = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1)
        return ring.median(dim=-1).values[..., None, None]
    if kind == "mean":
        return torch.zeros_like(mean)
    if kind == "black":
        return -mean / std
    raise ValueError(f"fill {kind!r}: choose one of {', '.join(FILLS)}")


def compose(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``mask * x + (1 - mask) * fill``: the image where the mask keeps it, ``fill`` elsewhere (broadcast)."""
    return mask * x + (1.0 - mask) * fill


def activation_matching(reference: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    """Distance of one layer's activations on the evidence to those on the image, per sample.

    4-D maps (post-ReLU feature maps): the squared error relative to the image's mean squared
    activation (scale-free, 1 for all-zero evidence activations); 2-D outputs (linear layers):
    ``1 - cosine similarity``.
    """
    if reference.dim() == 2:
        return 1.0 - F.cosine_similarity(evidence, reference, dim=1, eps=1e-8)
    dims = tuple(range(1, reference.dim()))
    scale = reference.pow(2).mean(dim=dims).clamp_min(1e-8)
    return (evidence - reference).pow(2).mean(dim=dims) / scale


def kl_divergence(reference_logits: torch.Tensor, evidence_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) || softmax(evidence)) per sample, in nats."""
    p_log = F.log_softmax(reference_logits, dim=1)
    q_log = F.log_softmax(evidence_logits, dim=1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=1)


def decision_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-log p(target)`` per sample (the CE and robustness terms)."""
    return F.cross_entropy(logits, target, reduction="none")


def area(mask: torch.Tensor) -> torch.Tensor:
    """Share of the image the mask keeps, ``mean(m)`` per sample."""
    return mask.flatten(1).mean(dim=1)


def binarisation(mask: torch.Tensor) -> torch.Tensor:
    """``mean(m - m^2)`` per sample: 0 for a binary mask, 1/4 where every value is 1/2."""
    return (mask - mask * mask).flatten(1).mean(dim=1)


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical and horizontal neighbours, per sample (sum of both means)."""
    dy = (mask[..., 1:, :] - mask[..., :-1, :]).abs().flatten(1).mean(dim=1)
    dx = (mask[..., :, 1:] - mask[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return dy + dx


def straight_through(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """The binary mask ``m > threshold`` in the forward pass, with the gradient of ``m`` (straight-through)."""
    hard = (mask > threshold).to(mask.dtype)
    return mask + (hard - mask).detach()


def iou_at_equal_area(mask: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks ``[B, H, W]`` with the top pixels of ``saliency`` ``[B, H, W]``, as many as each mask keeps.

    Ties in the saliency are broken by pixel order (stable sort); a mask keeping nothing gives NaN.
    """
    b = mask.shape[0]
    keep = mask.reshape(b, -1).bool()
    k = keep.sum(dim=1)
    order = torch.argsort(saliency.reshape(b, -1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    top = ranks < k[:, None]
    inter = (keep & top).sum(dim=1).double()
    union = (keep | top).sum(dim=1).double()
    return torch.where(k > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def leakage(mask: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Share of each mask's area ``[B, H, W]`` outside its region of interest (bool ``[B, H, W]``); NaN for an empty mask."""
    m = mask.reshape(mask.shape[0], -1).double()
    outside = (m * (~roi.reshape(roi.shape[0], -1).bool()).double()).sum(dim=1)
    total = m.sum(dim=1)
    return torch.where(total > 0, outside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))
