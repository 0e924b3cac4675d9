"""Reliance: which prototypes the model actually depends on, shortcuts first.

β (:mod:`i2x.analysis.mapping`) says how a prototype's CAM intensity tracks confidence changes
during training; it does not say whether the model *uses* the prototype. This module asks the
final checkpoint directly, with interventions, and ranks prototypes by how much they look like
a shortcut. Per prototype k (c = the class k is purest for):

* **Presence** (from the store): presence rate per class, purity P(class | k present), and
  spatial concentration (:func:`concentration`): how fixed k's cells are, from the entropy of
  its cell distribution corrected for how many cells it covers per image. A marker or a border
  artefact sits in the same cells of every image: 1; a pattern spread over the grid: 0.
* **Deletion** at the target layer: a forward hook (:class:`CellReplacement`) replaces the
  layer's output at k's cells by the data set's mean activation (per channel, over every
  sample and cell of the stored features) and the rest of the network runs as usual, so any
  architecture works without surgery. The effect is the drop of the logit margin (true class
  minus best other; probabilities saturate on training data), per sample, per deleted cell and
  per class, against as many uniformly random cells of the same sample (``random_draws`` sets).
  Each image runs once up to the layer for all of its interventions when the network allows it.
* **Transplant** at the input: the input footprint of k's cells in class-c images is pasted
  into held-out images of other classes at the same place. A cell's footprint is the block of
  input pixels that maps onto it by the layer's downsampling: nearest-neighbour upsampling of
  the cell mask to the input size, so cell (i, j) of an h x w grid covers rows
  ``floor(i*H/h) .. floor((i+1)*H/h) - 1`` and likewise columns. That is the centre of the
  cell's receptive field, not all of it (the theoretical field of the small CNN's last layer is
  26 of 32 pixels wide and would paste the whole donor). The effect is the flip rate to c and
  the change of c's margin, against pasting as many random cells from the same donor.

Suspicion, one number per prototype, ranked (:func:`suspicion`)::

    suspicion = lift * concentration * max(0, deletion excess)
    lift      = (P(c | k) - P(c)) / (1 - P(c))       how much purer for c than chance, in [0, 1]
    deletion excess = drop of c's margin in class-c images when k's cells are deleted,
                      minus the drop for as many random cells (logits)

Why a product: each factor alone is common and harmless. Parts of the object are class-pure
and relied on but move with it; background and border cells sit still but say nothing about
the class; a class-pure pattern the model ignores is no risk. Only a fixed-place, class-tied
pattern that the model leans on scores high on all three, and that is what a shortcut looks
like. Reliance in the product is the deletion excess rather than the transplant: it is
measured where k occurs (class-c images, in place), in logits against a matched random
baseline, while a transplant of a large footprint also pastes much of the donor's object, so
its random baseline is strong (the transplant is still reported and enters the verdict).
The verdict (:func:`verdict`) says whether the top suspect stands out from random cells and
from the other prototypes, or plainly that no shortcut stands out.

Results go to ``DIR/reliance.json`` (every prototype, per-sample deletions) and under
``reliance`` in ``DIR/summary.json`` (settings, formula, ranking, verdict, top suspects).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from i2x.attribution import get_layer
from i2x.stages.context import Context, open_context
from i2x.errors import UserError
from i2x.io.lock import locked
from i2x.io.store import Store, chunk_ranges
from i2x.io.workdir import RELIANCE, load_summary, save_summary, write_json
from i2x.settings import device_option, option, validate



@dataclass
class RelianceConfig:
    """Settings of the reliance study (printed in the report and kept in summary.json)."""

    max_samples: int = option(128, "class samples per prototype whose cells are deleted", low=1)
    recipients: int = option(128, "held-out images per prototype for transplants", low=1)
    random_draws: int = option(3, "random-cell baselines per intervention", low=1)
    batch_size: int = option(512, "interventions per forward batch", low=1)
    top: int = option(5, "suspects to show in detail", low=1)
    gallery: int = option(8, "example images per suspect in the report", low=1, cli=False)
    z_threshold: float = option(3.0, "standard errors by which deleting and pasting the top suspect must beat random "
                                "cells for a shortcut verdict", low=0, cli=False)
    separation: float = option(1.5, "the top suspect's suspicion must be at least this many times the runner-up's",
                               low=0, cli=False)
    seed: int = option(0, "seed of the sample and random-cell draws")
    device: str = device_option()


# ---- presence ------------------------------------------------------------------------------
def presence_stats(assign: np.ndarray, labels: np.ndarray, k: int, m: int) -> dict[str, np.ndarray]:
    """Per prototype: presence [n, K], presence rate per class [K, M], purity P(class | present) [K, M], the
    share of each class among all samples [M], cell occurrence counts [K, h, w], the cells it covers per
    sample that holds it [K], the entropy of its cell distribution [K] and its spatial concentration [K]."""
    n, h, w = assign.shape
    flat = assign.reshape(n, -1)
    present = np.zeros((n, k), dtype=bool)
    present[np.repeat(np.arange(n), h * w), flat.ravel()] = True
    onehot = np.eye(m, dtype=np.float64)[labels]                          # [n, M]
    both = present.T.astype(np.float64) @ onehot                          # [K, M] samples of class c holding k
    class_sizes = onehot.sum(axis=0)
    rate = np.divide(both, class_sizes, out=np.zeros_like(both), where=class_sizes > 0)
    holders = both.sum(axis=1)
    purity = np.divide(both, holders[:, None], out=np.zeros_like(both), where=holders[:, None] > 0)
    cells = np.bincount(flat.ravel() * (h * w) + np.tile(np.arange(h * w), n), minlength=k * h * w).reshape(k, h * w)
    total = cells.sum(axis=1)
    size = np.divide(total, holders, out=np.zeros(k), where=holders > 0)
    p = cells / np.maximum(total, 1)[:, None]
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return {"present": present, "rate": rate, "purity": purity, "prior": class_sizes / max(n, 1),
            "cells": cells.reshape(k, h, w), "size": size, "entropy": entropy,
            "concentration": concentration(entropy, size, h * w)}


def concentration(entropy: np.ndarray, size: np.ndarray, cells: int) -> np.ndarray:
    """How fixed a prototype's place is, in [0, 1]: ``(log(cells) - H) / (log(cells) - log(a))``.

    H is the entropy of its cell distribution and ``a`` the cells it covers per sample. A prototype that
    covers the same ``a`` cells in every image has H = log(a): 1. One spread evenly over the whole grid has
    H = log(cells): 0. Plain ``1 - H / log(cells)`` would call a pattern that covers many cells spread out
    even when those cells never change.
    """
    top = np.log(cells) - entropy
    room = np.log(cells) - np.log(np.maximum(size, 1.0))
    return np.clip(np.divide(top, room, out=np.ones_like(top), where=room > 1e-9), 0.0, 1.0)


def lift(purity: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """How much purer than chance each prototype is for each class: (P(c|k) - P(c)) / (1 - P(c)), clipped at 0."""
    return np.clip((purity - prior) / np.maximum(1.0 - prior, 1e-12), 0.0, None)


# ---- interventions -------------------------------------------------------------------------
def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logit of ``target`` minus the best other logit, per row [B]."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return own - others.max(dim=1).values


class CellReplacement:
    """A forward hook that replaces a layer's output at chosen grid cells by a fill vector (per channel).

    :meth:`run` sets the cells for one forward; otherwise the layer is left alone. Many interventions on
    one image need not run the network before the layer again: with ``expand`` the hook repeats each
    image's output at the layer once per intervention (``counts``) and edits the copies. That needs a
    network whose later part uses nothing but the layer's output (true of plain stacks and of a whole
    ResNet stage), which :meth:`can_expand` checks; otherwise the images themselves are repeated.
    """

    def __init__(self, layer: nn.Module, fill: torch.Tensor) -> None:
        self.fill = fill
        self._mask: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if self._mask is None:
            return None
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise UserError("reliance: the target layer's output is not a 4-D [B, C, h, w] tensor")
        if self._counts is not None:
            output = output.repeat_interleave(self._counts.to(output.device), dim=0)
        if tuple(self._mask.shape) != (output.shape[0], *output.shape[2:]):
            raise ValueError(f"cell mask {tuple(self._mask.shape)} does not fit the layer output {tuple(output.shape)}")
        fill = self.fill.to(device=output.device, dtype=output.dtype).view(1, -1, 1, 1)
        return torch.where(self._mask[:, None].to(output.device), fill, output)

    @torch.no_grad()
    def run(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, counts: torch.Tensor,
            expand: bool) -> torch.Tensor:
        """Logits [I, M] of images [B, ...] under cell masks [I, h, w]; image b takes the next ``counts[b]``
        masks (I = counts.sum()). An all-False mask gives the plain logits."""
        self._mask, self._counts = masks, (counts if expand else None)
        try:
            return model(images if expand else images.repeat_interleave(counts.to(images.device), dim=0))
        finally:
            self._mask = self._counts = None

    def can_expand(self, model: nn.Module, images: torch.Tensor, grid: tuple[int, int]) -> bool:
        """Whether expansion at the layer gives the same logits as a plain forward (tried on two images)."""
        x = images[:2]
        if len(x) < 2:
            return False
        with torch.no_grad():
            plain = model(x)
        counts = torch.tensor([2, 1])
        try:
            expanded = self.run(model, x, torch.zeros(3, *grid, dtype=torch.bool), counts, expand=True)
        except RuntimeError:
            return False
        return expanded.shape == (3, plain.shape[1]) and torch.allclose(
            expanded, plain.repeat_interleave(counts.to(plain.device), dim=0), rtol=1e-4, atol=1e-5)

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()

    def __enter__(self) -> "CellReplacement":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deletion_margins(model: nn.Module, replacement: CellReplacement, images: torch.Tensor, labels: torch.Tensor,
                     masks: torch.Tensor, counts: torch.Tensor, batch_size: int = 512,
                     expand: bool = False) -> torch.Tensor:
    """True-class margins [I] of images [B, ...] (labels [B]) under cell masks [I, h, w], image b taking the
    next ``counts[b]`` masks; images are grouped so that a forward holds about ``batch_size`` interventions."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    out = torch.empty(int(ends[-1]) if len(ends) else 0)
    lo = 0
    while lo < len(counts):  # one iteration per forward batch
        hi = max(lo + 1, int(torch.searchsorted(ends, starts[lo] + batch_size, right=True)))
        a, b = int(starts[lo]), int(ends[hi - 1])
        logits = replacement.run(model, images[lo:hi].to(device), masks[a:b].to(device), counts[lo:hi], expand)
        out[a:b] = margin(logits.float(), labels[lo:hi].to(device).repeat_interleave(counts[lo:hi].to(device))).cpu()
        lo = hi
    return out


def footprint(cell_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Input-pixel footprint [B, 1, H, W] of grid-cell masks [B, h, w]: nearest upsampling, so pixel (y, x)
    belongs to cell (floor(y*h/H), floor(x*w/W))."""
    return F.interpolate(cell_masks[:, None].float(), size=size, mode="nearest") > 0.5


@torch.no_grad()
def transplant_logits(model: nn.Module, recipients: torch.Tensor, donors: torch.Tensor, masks: torch.Tensor,
                      batch_size: int = 512) -> torch.Tensor:
    """Logits [R, V, M] of recipients [R, C, H, W] after pasting donors [R, C, H, W] at the footprint of each
    cell mask ``masks`` [R, V, h, w] (recipient r gets donor r's pixels, at the same place)."""
    r, v = masks.shape[:2]
    device = next(iter(model.parameters()), torch.empty(0)).device
    flat = masks.reshape(r * v, *masks.shape[2:])
    out = []
    for lo, hi in chunk_ranges(r * v, batch_size):
        rows = torch.arange(lo, hi) // v
        paste = footprint(flat[lo:hi], tuple(recipients.shape[-2:])).to(device)
        x = torch.where(paste, donors[rows].to(device), recipients[rows].to(device))
        out.append(model(x).float().cpu())
    return torch.cat(out).view(r, v, -1)


def random_cells(counts: np.ndarray, draws: int, grid: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Bool masks [S, draws, h, w]: for sample s, ``counts[s]`` grid cells drawn uniformly without replacement."""
    h, w = grid
    rank = np.argsort(rng.random((len(counts), draws, h * w)), axis=2).argsort(axis=2)
    return (rank < counts[:, None, None]).reshape(len(counts), draws, h, w)


def _paired(effect: np.ndarray, random: np.ndarray) -> dict[str, float]:
    """Mean effect, mean and spread of the random-cell effect, their paired excess and its z (excess / s.e.)."""
    diff = effect - random.mean(axis=1)
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
    return {"effect": float(effect.mean()), "random": float(random.mean()), "random_sd": float(random.std()),
            "excess": float(diff.mean()), "z": float(diff.mean() / max(se, 1e-9)) if np.isfinite(se) else 0.0}


# ---- data ----------------------------------------------------------------------------------
def _images(dataset: Dataset, index: np.ndarray, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``dataset`` at ``index`` (stacked, on the CPU)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        idx = torch.as_tensor(index, dtype=torch.long)
        return tensors[0][idx], tensors[1][idx]
    xs, ys = [], []
    for x, y in DataLoader(Subset(dataset, index.tolist()), batch_size=batch_size):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


def _mean_activation(store: Store) -> torch.Tensor:
    """The data set's mean activation per channel [d]: stored final-checkpoint features over every sample and cell."""
    features = store.array("features")
    n, d = features.shape[0], features.shape[-1]
    total, count = np.zeros(d), 0
    for lo, hi in chunk_ranges(n, store.chunk_n):
        block = np.asarray(features[lo:hi], dtype=np.float64)
        total += block.reshape(-1, d).sum(axis=0)
        count += block.size // d
    return torch.as_tensor(total / max(count, 1), dtype=torch.float32)


# ---- the study -----------------------------------------------------------------------------
def suspicion(lift_k: np.ndarray, concentration: np.ndarray, reliance_k: np.ndarray) -> np.ndarray:
    """Shortcut suspicion per prototype: lift x concentration x max(0, reliance); see the module docstring."""
    return np.clip(lift_k, 0, None) * np.clip(concentration, 0, None) * np.clip(np.nan_to_num(reliance_k), 0, None)


def verdict(ordered: list[dict[str, Any]], z_threshold: float, separation: float, top: int) -> tuple[str, bool]:
    """A plain sentence on whether a shortcut stands out, and whether one does.

    The top suspect stands out when (1) deleting it and pasting it both beat random cells of the same area
    by ``z_threshold`` standard errors, (2) its suspicion is at least ``separation`` times the runner-up's,
    and (3) its lead is not reliance alone: its lift x concentration (the shortcut signature, class-tied
    and fixed in place) is the highest of the ``top`` suspects. Without (3) a large, heavily used part of
    a class's object can lead the ranking on reliance and be announced as a shortcut.
    """
    lead = ordered[0] if ordered else None
    if lead is None or lead["suspicion"] <= 0:
        return ("No shortcut stands out: no class-tied prototype lowers its class's margin more than random cells "
                "of the same area do."), False
    second = ordered[1]["suspicion"] if len(ordered) > 1 else 0.0
    dz = (lead["deletion"] or {}).get("z", 0.0)
    tz = lead["transplant"]["logit_z"] if lead["transplant"] else 0.0
    signature = [p["lift"] * p["concentration"] for p in ordered[:max(top, 1)]]
    name = lead["class_name"]
    why = []
    if dz < z_threshold:
        why.append(f"deleting it is within {z_threshold:g} standard errors of deleting random cells (z {dz:.1f})")
    if tz < z_threshold:
        why.append(f"pasting it is within {z_threshold:g} standard errors of pasting random cells (z {tz:.1f})")
    if lead["suspicion"] < separation * second:
        why.append(f"its suspicion {lead['suspicion']:.3g} is less than {separation:g} times the next one's "
                   f"({second:.3g}), so it is one of several class-typical patterns rather than an outlier")
    if signature[0] < max(signature):
        why.append("another top suspect is more class-tied and more fixed in place, so its lead comes from "
                   "how much the model uses it, as it would for a large part of the object")
    if not why:
        t = lead["transplant"]
        return (f"Prototype {lead['id']} stands out as a likely shortcut for class {name}: it sits in the same cells "
                f"(concentration {lead['concentration']:.2f}), {lead['purity']:.0%} of the samples holding it are "
                f"{name}, deleting it lowers {name}'s margin by {lead['deletion']['excess']:.3g} more than random "
                f"cells, and pasting it into other classes' images turns {t['flip_rate']:.0%} of them into {name} "
                f"(random cells: {t['random_flip_rate']:.0%})."), True
    return (f"No shortcut stands out. The top suspect, prototype {lead['id']} ({name}): " + "; ".join(why) +
            ". Look at the suspects' galleries before ruling a shortcut out."), False


def reliance(out_dir: str | Path, config: RelianceConfig | None = None, progress: bool = True,
             trust_checkpoints: bool = False, trust_analysis: bool = False, model: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Run the reliance study on the analysis in ``out_dir``: writes ``reliance.json`` and merges a ``reliance``
    entry into ``summary.json``. Pass a :class:`RelianceConfig` or its fields (``recipients=64``).
    ``trust_checkpoints``, ``trust_analysis`` and ``model`` are as in :func:`i2x.stages.context.open_context`."""
    cfg = config or RelianceConfig(**options)
    validate(cfg)
    with locked(out_dir):
        store = Store.open(out_dir, mode="r")
        summary = load_summary(out_dir)
        ctx = open_context(store, None, cfg.device, cfg.batch_size, trust_checkpoints, trust_analysis, model)
        result = _study(store, ctx, cfg, progress)
        write_json(Path(out_dir) / RELIANCE, result, indent=2)
        summary["reliance"] = _summary_entry(result)
        save_summary(out_dir, summary)
    return result


def _study(store: Store, ctx: Context, cfg: RelianceConfig, progress: bool) -> dict[str, Any]:
    """Presence statistics, deletion and transplant for every prototype, then the ranking and the verdict."""
    start = time.perf_counter()
    assign, labels, rows_index = store.read("analysis/assign"), store.read("labels"), store.read("sample_index")
    names, grid = store.class_names, store.grid
    k_count, m = int(assign.max()) + 1, len(names)
    stats = presence_stats(assign, labels, k_count, m)
    lifts = lift(stats["purity"], stats["prior"])
    top_class = lifts.argmax(axis=1)
    holders = [np.flatnonzero(stats["present"][:, k]) for k in range(k_count)]
    model, analysed = ctx.model, ctx.data.split(ctx.config.split)
    rng = np.random.default_rng(cfg.seed)
    recipients, recipient_labels, held_name = _recipient_pool(ctx, cfg, rng)
    plans = [_deletion_plan(assign, labels, holders[k], k, int(top_class[k]), grid, cfg, rng) for k in range(k_count)]
    timings: dict[str, float] = {}
    with CellReplacement(get_layer(model, store.attrs["layer"]), _mean_activation(store)) as replacement:
        t0 = time.perf_counter()
        expand = replacement.can_expand(model, recipients.to(ctx.device), grid)
        drops, clean = _run_deletions(model, replacement, expand, analysed, rows_index, labels, plans, cfg, progress)
        t1 = time.perf_counter()
        clean_logits = transplant_logits(model, recipients, recipients,
                                         torch.zeros(len(recipients), 1, *grid, dtype=torch.bool), cfg.batch_size)[:, 0]
        transplants = [
            _transplant(model, analysed, assign, rows_index, holders[k][labels[holders[k]] == top_class[k]], k,
                        int(top_class[k]), recipients, recipient_labels, clean_logits, grid, cfg, rng)
            for k in tqdm(range(k_count), desc="transplant", disable=not progress)]
        timings = {"deletion": round(t1 - t0, 3), "transplant": round(time.perf_counter() - t1, 3)}
    rows = []
    for k in range(k_count):
        chosen, _, counts = plans[k]
        c = int(top_class[k])
        deletion = _deletion_summary(drops[k], clean[k], chosen, counts, labels, c, m) if chosen.size else None
        rows.append(_row(k, names, stats, lifts, c, deletion, transplants[k],
                         _gallery(assign, labels, holders[k], k, c, cfg.gallery)))
    reliance_k = np.array([(r["deletion"] or {}).get("excess", 0.0) for r in rows])
    scores = suspicion(np.array([r["lift"] for r in rows]), stats["concentration"], reliance_k)
    for r, score in zip(rows, scores):
        r["suspicion"] = float(score)
    ranking = [int(i) for i in np.argsort(-scores, kind="stable")]
    text, found = verdict([rows[i] for i in ranking], cfg.z_threshold, cfg.separation, cfg.top)
    return {
        "config": asdict(cfg), "checkpoint": ctx.checkpoint("final").name, "layer": store.attrs["layer"],
        "grid": list(grid), "k": k_count, "assign_digest": assign_digest(assign), "held_out_split": held_name,
        "expanded_at_layer": expand, "footprint": FOOTPRINT, "fill": FILL, "formula": FORMULA,
        "verdict": text, "shortcut_found": found, "ranking": ranking, "prototypes": rows,
        "timings": timings, "seconds": round(time.perf_counter() - start, 3),
    }


def assign_digest(assign: np.ndarray) -> str:
    """A short fingerprint of the prototype assignments, so a report can tell reliance.json is stale."""
    return hashlib.sha256(np.ascontiguousarray(assign, dtype=np.int64).tobytes()).hexdigest()[:16]


def _recipient_pool(ctx: Context, cfg: RelianceConfig,
                    rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Held-out images transplants are pasted into: a random pool of the split not analysed (when there is one)."""
    others = [s for s in ctx.data.splits if s != ctx.config.split]
    name = "test" if "test" in others else (others[0] if others else ctx.config.split)
    split = ctx.data.split(name)
    pool = np.sort(rng.permutation(len(split))[: max(cfg.recipients * 4, 512)])  # type: ignore[arg-type]
    images, labels = _images(split, pool, cfg.batch_size)
    return images, labels, name


FORMULA = ("suspicion = lift * concentration * max(0, deletion excess); lift = (P(c|k) - P(c)) / (1 - P(c)) for k's "
           "purest class c; concentration = (log(h*w) - H) / (log(h*w) - log(a)), H the entropy of k's cell "
           "distribution and a the cells it covers per sample; deletion excess = mean drop of c's margin in class-c "
           "samples when k's cells are set to the mean activation, minus the drop for as many random cells")
FOOTPRINT = ("nearest upsampling of the cell mask to the input size: the block of input pixels each grid cell covers "
             "by the layer's downsampling (the centre of its receptive field)")
FILL = "the mean activation per channel over every sample and cell of the stored final-checkpoint features"


def _choose(pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(pool, size=min(size, pool.size), replace=False) if pool.size else pool


def _deletion_plan(assign: np.ndarray, labels: np.ndarray, holders: np.ndarray, k: int, c: int, grid: tuple[int, int],
                   cfg: RelianceConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which samples k is deleted from (up to ``max_samples`` class-c holders of k, the reliance toward c, and
    half as many holders of other classes) and the masks: k's cells, then ``random_draws`` sets of as many
    uniformly random cells. Returns rows [S], masks [S, 1 + draws, h, w] and k's cell counts [S]."""
    own_class = labels[holders] == c
    chosen = np.sort(np.concatenate([_choose(holders[own_class], cfg.max_samples, rng),
                                     _choose(holders[~own_class], cfg.max_samples // 2, rng)])).astype(np.int64)
    own = assign[chosen] == k                                                   # [S, h, w]
    counts = own.reshape(len(chosen), -1).sum(axis=1)
    masks = np.concatenate([own[:, None], random_cells(counts, cfg.random_draws, grid, rng)], axis=1)
    return chosen, masks, counts


def _run_deletions(model: nn.Module, replacement: CellReplacement, expand: bool, analysed: Dataset,
                   rows_index: np.ndarray, labels: np.ndarray,
                   plans: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: RelianceConfig,
                   progress: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run every planned deletion, grouped by sample so that each image passes the layer once (with expansion)
    for its clean margin and all its interventions. Returns per prototype the margin drops [S, 1 + draws] and
    the clean margins [S]."""
    h, w = plans[0][1].shape[2:] if plans else (1, 1)
    rows_p = np.concatenate([np.repeat(p[0], p[1].shape[1]) for p in plans])            # plan order
    masks_p = np.concatenate([p[1].reshape(-1, h, w) for p in plans])
    order = np.argsort(rows_p, kind="stable")
    uniq, per_row = np.unique(rows_p[order], return_counts=True)
    group = np.repeat(np.arange(uniq.size), per_row)
    entry_pos = np.arange(order.size) + group + 1            # sorted entries shift by one clean slot per row
    clean_pos = np.cumsum(per_row + 1) - per_row - 1
    masks = np.zeros((order.size + uniq.size, h, w), dtype=bool)
    masks[entry_pos] = masks_p[order]
    counts = torch.as_tensor(per_row + 1)
    margins = np.empty(masks.shape[0], dtype=np.float32)
    for lo, hi in tqdm(list(chunk_ranges(uniq.size, cfg.batch_size)), desc="deletion", disable=not progress):
        a, b = int(clean_pos[lo]), int(clean_pos[hi - 1] + per_row[hi - 1] + 1)
        images, _ = _images(analysed, rows_index[uniq[lo:hi]], cfg.batch_size)
        y = torch.as_tensor(labels[uniq[lo:hi]], dtype=torch.long)
        margins[a:b] = deletion_margins(model, replacement, images, y, torch.from_numpy(masks[a:b]),
                                        counts[lo:hi], cfg.batch_size, expand).numpy()
    clean_of_row = margins[clean_pos]
    after = np.empty(order.size, dtype=np.float32)
    after[order] = margins[entry_pos]
    clean_p = clean_of_row[np.searchsorted(uniq, rows_p)]
    drops_p = clean_p - after
    splits = np.cumsum([p[1].shape[0] * p[1].shape[1] for p in plans])[:-1]
    drops = [d.reshape(p[1].shape[:2]) for d, p in zip(np.split(drops_p, splits), plans)]
    cleans = [c.reshape(p[1].shape[:2])[:, 0] for c, p in zip(np.split(clean_p, splits), plans)]
    return drops, cleans


def _deletion_summary(drops: np.ndarray, clean: np.ndarray, chosen: np.ndarray, counts: np.ndarray,
                      labels: np.ndarray, c: int, m: int) -> dict[str, Any]:
    """Deletion results of one prototype: toward its class c (paired against random cells), per cell, per class
    and per sample. ``drops`` [S, 1 + draws] are margin drops for k's cells then the random draws."""
    y = labels[chosen]
    in_c = y == c
    toward = _paired(drops[in_c, 0], drops[in_c, 1:]) if in_c.any() else {}
    per_cell = drops / np.maximum(counts, 1)[:, None]
    n_c = np.bincount(y, minlength=m)

    def by_class(values: np.ndarray) -> list[float | None]:
        sums = np.bincount(y, weights=values, minlength=m)
        return [None if n == 0 else round(float(v / n), 6) for v, n in zip(sums, n_c)]

    return {**toward, "class_samples": int(in_c.sum()), "samples": int(len(chosen)), "cells": float(counts.mean()),
            "clean_margin": float(clean[in_c].mean()) if in_c.any() else None,
            "effect_per_cell": float(per_cell[in_c, 0].mean()) if in_c.any() else None,
            "random_per_cell": float(per_cell[in_c, 1:].mean()) if in_c.any() else None,
            "per_class": by_class(drops[:, 0]), "per_class_random": by_class(drops[:, 1:].mean(axis=1)),
            "per_sample": {"rows": chosen.tolist(), "drop": drops[:, 0].round(5).tolist(),
                           "random": drops[:, 1:].mean(axis=1).round(5).tolist(), "cells": counts.tolist()}}


def _transplant(model: nn.Module, analysed: Dataset, assign: np.ndarray, rows_index: np.ndarray, donors: np.ndarray,
                k: int, c: int, recipients: torch.Tensor, recipient_labels: torch.Tensor, clean_logits: torch.Tensor,
                grid: tuple[int, int], cfg: RelianceConfig, rng: np.random.Generator) -> dict[str, Any] | None:
    """Paste k's footprint from class-c donors into held-out images of other classes (and as many random cells from
    the same donors): flip rate to c and the change of c's margin."""
    eligible = np.flatnonzero(recipient_labels.numpy() != c)
    if donors.size == 0 or eligible.size == 0:
        return None
    pick = np.sort(_choose(eligible, cfg.recipients, rng))
    donor_rows = rng.permutation(donors)[np.arange(pick.size) % donors.size]
    own = assign[donor_rows] == k
    counts = own.reshape(pick.size, -1).sum(axis=1)
    masks = np.concatenate([own[:, None], random_cells(counts, cfg.random_draws, grid, rng)], axis=1)
    donor_images, _ = _images(analysed, rows_index[donor_rows], cfg.batch_size)
    logits = transplant_logits(model, recipients[pick], donor_images, torch.from_numpy(masks), cfg.batch_size)
    target = torch.full((pick.size,), c, dtype=torch.long)
    before = margin(clean_logits[pick], target).numpy()
    after = margin(logits.flatten(0, 1), target.repeat_interleave(masks.shape[1])).view(pick.size, -1).numpy()
    not_c = before <= 0
    flips = (after[not_c] > 0).astype(float)                                    # [R', 1 + draws]
    none = {"effect": 0.0, "random": 0.0, "excess": 0.0, "z": 0.0}
    flip = _paired(flips[:, 0], flips[:, 1:]) if not_c.any() else none
    change = _paired(after[:, 0] - before, after[:, 1:] - before[:, None])
    return {"recipients": int(pick.size), "donors": int(np.unique(donor_rows).size), "cells": float(counts.mean()),
            "flip_rate": flip["effect"], "random_flip_rate": flip["random"], "excess_flip": flip["excess"],
            "flip_z": flip["z"], "logit_change": change["effect"], "random_logit_change": change["random"],
            "random_logit_sd": change["random_sd"], "logit_excess": change["excess"], "logit_z": change["z"]}


def _gallery(assign: np.ndarray, labels: np.ndarray, holders: np.ndarray, k: int, c: int, size: int) -> list[int]:
    """Store rows to show for prototype k: samples of class c first, then by the share of cells k covers."""
    share = (assign[holders] == k).reshape(holders.size, -1).mean(axis=1)
    order = np.lexsort((-share, labels[holders] != c))
    return [int(i) for i in holders[order[:size]]]


def _row(k: int, names: list[str], stats: dict[str, np.ndarray], lifts: np.ndarray, c: int,
         deletion: dict[str, Any] | None, transplant: dict[str, Any] | None, gallery: list[int]) -> dict[str, Any]:
    """Everything reliance.json says about prototype k."""
    cells = stats["cells"][k]
    return {
        "id": k, "class": c, "class_name": names[c],
        "samples": int(stats["present"][:, k].sum()),
        "presence": [round(float(v), 4) for v in stats["rate"][k]],
        "purity": float(stats["purity"][k, c]), "lift": float(lifts[k, c]),
        "concentration": float(stats["concentration"][k]), "entropy": float(stats["entropy"][k]),
        "cells_per_sample": float(stats["size"][k]),
        "locations": (cells / max(int(cells.max()), 1)).round(4).tolist(),
        "deletion": deletion, "transplant": transplant, "gallery": gallery,
    }


def _summary_entry(result: dict[str, Any]) -> dict[str, Any]:
    """The compact ``reliance`` entry of summary.json: settings, verdict and the ranked suspects."""
    protos = {p["id"]: p for p in result["prototypes"]}
    keep = ("id", "class", "class_name", "suspicion", "purity", "lift", "concentration", "cells_per_sample", "samples")
    suspects = []
    for k in result["ranking"][: result["config"]["top"]]:
        p = protos[k]
        deletion = {key: v for key, v in (p["deletion"] or {}).items() if key != "per_sample"}
        suspects.append({**{key: p[key] for key in keep}, "deletion": deletion, "transplant": p["transplant"]})
    entry = {key: result[key] for key in ("config", "checkpoint", "verdict", "shortcut_found", "formula", "footprint",
                                          "fill", "held_out_split", "ranking", "seconds")}
    return {**entry, "suspects": suspects}
