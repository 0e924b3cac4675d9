"""Which samples carry a suspect concept: a score per analysed and held-out sample, ranked, so a user can check or
relabel their data (``shortcut_samples.json``); on data with a planted answer, AUROC and AP against it.

The score is how strongly the final model's layer shows the concept where it sits: the concept's direction is the
mean activation of its cells in the samples of its class that hold it, less the data's mean activation (a
pattern direction, as in concept activation vectors); a sample's score is the largest projection onto it over the
concept's hot cells, scaled so that the concept's own cells score 1 on average and the mean activation 0."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from i2x.analysis.concepts import hot_cells
from i2x.attribution.tokens import Layout, to_map
from i2x.io.store import Store, chunk_ranges

SCORE_RULE = ("a sample's score for a concept: the largest projection of the final model's activation, over the "
              "concept's hot cells, onto the concept's direction (the mean activation of its cells in the samples of "
              "its class that hold it, less the mean activation of every sample and cell), scaled so that the "
              "concept's own cells score 1 on average and the mean activation 0")


def concept_direction(store: Store, unit_assign: np.ndarray, u: int, c: int, labels: np.ndarray,
                      fill: torch.Tensor) -> np.ndarray:
    """The concept's direction [d] in the stored final-checkpoint features: the mean feature of unit u's cells in
    class-c samples less ``fill`` (the data's mean activation)."""
    features = store.array("features")
    total, count = np.zeros(features.shape[-1]), 0
    for lo, hi in chunk_ranges(len(unit_assign), store.chunk_n):
        own = (unit_assign[lo:hi] == u) & (labels[lo:hi] == c)[:, None, None]
        if own.any():
            block = np.asarray(features[lo:hi], dtype=np.float64)
            total += block[own].sum(axis=0)
            count += int(own.sum())
    return (total / max(count, 1) - fill.numpy()).astype(np.float32)


@torch.no_grad()
def carrier_scores(model: nn.Module, layer: nn.Module, layout: Layout, dataset: Dataset,
                   directions: list[tuple[np.ndarray, np.ndarray]], fill: torch.Tensor,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores [n, U] of every sample of ``dataset`` for each unit given as (direction [d], hot cells [h, w]), and
    the samples' labels [n]."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    v = torch.as_tensor(np.stack([d for d, _ in directions]), device=device)                       # [U, d]
    hot = torch.as_tensor(np.stack([h for _, h in directions]), device=device).flatten(1)          # [U, hw]
    grabbed: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
    scores, labels = [], []
    try:
        model.eval()
        for x, y in DataLoader(dataset, batch_size=batch_size):
            labels.append(torch.as_tensor(y))
            grabbed.clear()
            model(x.to(device))
            grid = to_map(grabbed[0], layout).float().flatten(2)                                    # [B, d, hw]
            proj = torch.einsum("bdl,ud->bul", grid - fill.to(device)[None, :, None], v)
            proj = proj / (v * v).sum(dim=1).clamp_min(1e-12)[None, :, None]
            scores.append(proj.masked_fill(~hot[None], -torch.inf).amax(dim=2).cpu())
    finally:
        handle.remove()
    if not scores:
        return np.zeros((0, len(directions)), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(scores).numpy(), torch.cat(labels).numpy()


def unit_hot_cells(unit_assign: np.ndarray, u: int, labels: np.ndarray, c: int) -> np.ndarray:
    """The cells [h, w] where unit u sits in class-c samples at least half as often as at its most frequent cell."""
    counts = ((unit_assign == u) & (labels == c)[:, None, None]).sum(axis=0)
    return hot_cells(counts[None].astype(np.float64))[0]


def ranked(scores: np.ndarray, index: np.ndarray, labels: np.ndarray, names: list[str],
           truth: np.ndarray | None) -> dict[str, Any]:
    """One split's samples ranked by score (highest first): data set index, label and score; with ``truth`` (data
    set indices of the samples that carry the planted answer), AUROC and AP against it."""
    order = np.argsort(-scores, kind="stable")
    out: dict[str, Any] = {"samples": [{"index": int(index[i]), "label": int(labels[i]), "class_name": names[labels[i]],
                                        "score": round(float(scores[i]), 4)} for i in order]}
    if truth is not None:
        out["truth"] = truth_metrics(scores, np.isin(index, truth))
    return out


def truth_metrics(scores: np.ndarray, carries: np.ndarray) -> dict[str, Any]:
    """AUROC and average precision of ``scores`` against the samples that carry the planted answer (scikit-learn);
    None where a split holds only carriers or none."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    both = 0 < carries.sum() < carries.size
    return {"carriers": int(carries.sum()), "samples": int(carries.size),
            "auroc": round(float(roc_auc_score(carries, scores)), 4) if both else None,
            "ap": round(float(average_precision_score(carries, scores)), 4) if both else None}
