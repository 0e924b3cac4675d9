"""Segmentation runs: extraction of region targets into the store, one row per (image, class).

A segmentation model is explained through region targets (:mod:`i2x.attribution.regions`): store row n is an
image and a foreground class c present in its mask (:class:`i2x.io.masks.RegionRows`; ``labels[n]`` = c),
``probs[t, n, :]`` is the softmax of the classes' region scores and ``cam/<method>[t, n]`` the map of c's score
over the region: the ground-truth region of c (``--target true``, the default, fixed across checkpoints) or the
region the checkpoint predicts as c (``--target predicted``; the ground truth where it predicts none). The
store notes ``task: segmentation`` and each row's image index. Extraction here runs in one process.
:mod:`i2x.stages.benchmark.regions` benchmarks the methods on such a store.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from i2x.attribution import Attributor, get_methods
from i2x.attribution.regions import RegionModel, segmentation_layer
from i2x.errors import UserError
from i2x.io.lock import locked
from i2x.io.masks import RegionRows
from i2x.io.store import Store
from i2x.io.workdir import claim
from i2x.stages.context import Context
from i2x.stages.provenance import code_record
from i2x.stages.extract.result import ExtractResult, finite_or_nan
from i2x.io.datasets import SEGMENTATION

log = logging.getLogger(__name__)


def region_rows_of(ctx: Context) -> tuple[RegionRows, np.ndarray]:
    """The context's rows and the positions of its samples among them (``--limit`` takes the first rows)."""
    dataset = ctx.dataset
    if isinstance(dataset, Subset):
        return dataset.dataset, np.asarray(dataset.indices)  # type: ignore[return-value]
    assert isinstance(dataset, RegionRows)
    return dataset, np.arange(len(dataset))


def batch_of(rows: RegionRows, positions: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Images, classes and ground-truth regions of the rows at ``positions``."""
    samples = torch.as_tensor(rows.samples[positions])
    return (rows.images[samples].to(device), torch.as_tensor(rows.targets[positions]).to(device),
            rows.regions(positions).to(device))


# ---- extraction ---------------------------------------------------------------------------------
def extract_regions(ctx: Context, out: str | Path, overwrite: bool, progress: bool, start: float,
                    world: int = 1) -> ExtractResult:
    """Extract a segmentation run (module docstring) into ``out/store.zarr``, resuming done checkpoints."""
    if world > 1:
        raise UserError("segmentation runs are extracted in one process; run i2x extract without torchrun")
    rows, positions = region_rows_of(ctx)
    if not len(positions):
        raise UserError(f"--split {ctx.config.split}: no image of the split holds a foreground class")
    config = ctx.config
    wrapper = RegionModel(ctx.model).eval()
    example, classes, truth = batch_of(rows, positions[:1], ctx.device)
    if config.layer is None and ctx.checkpoints:
        ctx.load(ctx.checkpoints[-1])
    layer = config.layer or segmentation_layer(ctx.model, example, ctx.data.num_classes)
    predicted = config.target == "predicted"
    with wrapper.over(truth, classes, predicted), Attributor(wrapper, f"model.{layer}", get_methods(["gradcam"])) as a:
        probe = a.attribute(example, classes, want_features=True)
    assert probe.features is not None
    _, h, w, d = probe.features.shape
    config = ctx.config = replace(config, layer=layer)
    with ExitStack() as stack:
        claim(out, config.fingerprint(), overwrite)
        stack.enter_context(locked(out))
        store = Store.create_or_resume(
            out, config=config.fingerprint(), checkpoints=[{**c.describe(), "sha256": c.sha256()} for c in ctx.checkpoints],
            class_names=ctx.data.class_names, labels=ctx.labels, sample_index=ctx.sample_index, grid=(int(h), int(w)),
            channels=int(d), methods=list(config.methods), chunk_n=config.batch_size, overwrite=overwrite)
        store.note({"trust_checkpoints": config.trust_checkpoints, "code": code_record(config), "task": SEGMENTATION,
                    "row_images": rows.samples[positions].tolist(), "input_size": list(ctx.data.input_size)})
        result = ExtractResult(store.path, layer, (int(h), int(w)), samples=len(positions))
        methods = get_methods(list(config.methods))
        done = store.done()
        with Attributor(wrapper, f"model.{layer}", methods) as attributor:
            for t, ckpt in enumerate(tqdm(ctx.checkpoints, desc="checkpoints", disable=not progress)):
                if done[t]:
                    result.skipped.append(ckpt.name)
                    continue
                finite = ctx.load(ckpt)
                ctx.model.eval()
                for i0 in range(0, len(positions), config.batch_size):
                    i1 = min(i0 + config.batch_size, len(positions))
                    x, classes, truth = batch_of(rows, positions[i0:i1], ctx.device)
                    with wrapper.over(truth, classes, predicted):
                        res = attributor.attribute(x, classes, want_features=t == len(ctx.checkpoints) - 1)
                    store.array("probs")[t, i0:i1] = finite_or_nan(res.probs, finite)
                    for name, cam in res.cams.items():
                        store.cam(name)[t, i0:i1] = finite_or_nan(cam, finite)
                    if res.features is not None:
                        store.array("features")[i0:i1] = res.features.cpu().numpy()
                store.mark_done(t, finite)
                result.checkpoints.append(ckpt.name)
                if not finite:
                    result.diverged.append(ckpt.name)
    result.seconds = time.perf_counter() - start
    return result
