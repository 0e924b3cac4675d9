"""Extraction: replay every checkpoint and write probabilities, raw CAMs and final features to the store.

Per checkpoint and batch, one forward and one backward (:class:`i2x.attribution.Attributor`) give
``probs[t, n, m]``, every requested ``cam/<method>[t, n, h, w]`` and, for the final checkpoint,
``features[n, h, w, d]`` (float16). Batches are written as chunk-aligned slices straight from the
device, so memory does not grow with the number of samples or checkpoints. ``done[t]`` is set
only after all of checkpoint t is written; rerunning skips done checkpoints (resume after a crash).

Under ``torchrun`` each rank takes every world-th chunk of samples and writes it into the same
store (chunk-aligned, so no two ranks write one zarr chunk); rank 0 creates the store and marks a
checkpoint done once every rank has written its share. The result equals a single-process run bit
for bit: every batch holds the same samples either way. A rank that fails makes every rank stop
with an error (:meth:`i2x.io.distributed.Dist.together`) instead of waiting forever.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from i2x.attribution import Attributor, find_target_layer, get_methods, tokens
from i2x.attribution.tokens import Layout
from i2x.errors import UserError
from i2x.io.data import iter_batches
from i2x.io.devices import resolve_device
from i2x.io.distributed import Dist, local_device, session
from i2x.io.lock import locked
from i2x.io.samples.fingerprint import fingerprints
from i2x.io.store import Store, chunk_ranges
from i2x.io.workdir import claim
from i2x.settings import validate
from i2x.stages.config import RunConfig
from i2x.io.location import as_path
from i2x.stages.context import Context, build_context, sample_line, sample_record, sample_warning
from i2x.stages.normalisation import check_normalisation, preprocessing_line, preprocessing_record
from i2x.stages.extract.regions import extract_regions
from i2x.stages.extract.result import ExtractResult, finite_or_nan
from i2x.stages.provenance import code_record

log = logging.getLogger(__name__)


def _probe(ctx: Context, layer: str | None) -> tuple[str, tuple[int, int], int, Layout]:
    """Choose the target layer (D1 in docs/ARCHITECTURE.md) and read its grid and channel count from one forward."""
    example = ctx.dataset[0][0].unsqueeze(0).to(ctx.device)
    was_training = ctx.model.training
    ctx.model.eval()
    override = tokens.parse(ctx.config.tokens)
    if layer is None and ctx.checkpoints:
        ctx.load(ctx.checkpoints[-1])  # a transformer's default layer depends on which tokens reach the logits
    name = layer or find_target_layer(ctx.model, example, override)
    with Attributor(ctx.model, name, get_methods(["gradcam"]), override) as attributor:
        result = attributor.attribute(example, "predicted", want_features=True)
        layout = attributor.layout_
    ctx.model.train(was_training)
    assert result.features is not None
    _, h, w, d = result.features.shape
    if min(h, w) < 2:
        default = find_target_layer(ctx.model, example) if layer else None
        advice = f"; the default layer is {default}" if default and default != name else ""
        raise UserError(
            f"--layer {name}: its output grid is {h}x{w} (a global pool or a late stage), and a map needs at "
            f"least 2x2 cells; choose an earlier layer, or leave --layer out{advice}"
        )
    assert layout is not None
    return name, (int(h), int(w)), int(d), layout


def _check_preprocessing(ctx: Context) -> dict:
    """Check the preprocessing against the final checkpoint's first batch norm (:mod:`i2x.stages.normalisation`)
    and return the store's record of it; a mismatch another normalisation fits is a UserError."""
    ctx.load(ctx.checkpoints[-1])
    folders = [p for p in {as_path(ctx.config.checkpoints), ctx.checkpoints[-1].path.parent} if isinstance(p, Path)]
    if ctx.config.model.startswith("hf:"):
        folders.append(Path(ctx.config.model[3:]))
    check = check_normalisation(ctx.model, ctx.dataset, ctx.data, ctx.device, [p for p in folders if p.is_dir()],
                                skip=ctx.config.skip_normalisation_check, batch=ctx.config.batch_size)
    return preprocessing_record(ctx.data, check)


def extraction_notes(store: Store) -> list[str]:
    """The lines every extraction prints about its inputs: the preprocessing and its check, the sample."""
    attrs = store.attrs
    notes = []
    if "preprocessing" in attrs:
        record = attrs["preprocessing"]
        notes += [f"preprocessing: {preprocessing_line(record)}", record["check"]["line"], *record["check"]["notes"]]
    if "sample" in attrs:
        notes.append(f"samples: {sample_line(attrs['sample'])}")
        warning = sample_warning(attrs["sample"], store.class_names)
        notes += [warning] if warning else []
    return notes


def extract(config: RunConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> ExtractResult:
    """Run the extraction that ``config`` describes into ``out/store.zarr`` (resuming if possible)."""
    start_time = time.perf_counter()
    if not config.checkpoints:
        raise UserError("give the checkpoint directory (CKPT_DIR)")
    validate(config)
    methods = get_methods(list(config.methods))
    device = local_device(resolve_device(config.device))
    with session(device) as dist, ExitStack() as stack:
        store: Store | None = None
        with dist.together("loading the data, the model and the checkpoints, or creating the store"):
            ctx = build_context(config)
            ctx.device = device
            ctx.model.to(device)
            if ctx.data.segmentation:  # region targets, one process: i2x.stages.extract.regions

                return extract_regions(ctx, out, overwrite, progress, start_time, dist.world)
            preprocessing = _check_preprocessing(ctx) if ctx.checkpoints else None
            layer, grid, channels, layout = _probe(ctx, config.layer)
            config = ctx.config = replace(ctx.config, layer=layer)  # the caller's config stays as given
            if len(ctx.labels) == 0:
                raise UserError(f"--split {config.split}: the split has no samples")
            if dist.is_main:
                log.info("target layer %s, grid %dx%d, %d channels", layer, grid[0], grid[1], channels)
                if progress and ctx.listing is not None:
                    print(ctx.listing.summary(), flush=True)
                claim(out, config.fingerprint(), overwrite)
                stack.enter_context(locked(out))
                store = _create_store(ctx, config, out, grid, channels, list(methods), overwrite)
                sample = sample_record(ctx.labels, ctx.sample_total, ctx.data.num_classes, config.limit)
                store.note({"trust_checkpoints": config.trust_checkpoints, "code": code_record(config),
                            "sample": sample, **({"preprocessing": preprocessing} if preprocessing else {}),
                            "input_size": list(ctx.data.input_size), "layer_layout": layout.to_dict(),
                            **({"checkpoint_order": ctx.listing.describe()} if ctx.listing is not None else {})})
                if not store.has("fingerprint"):  # what runs compared with this one must hold too
                    store.write("fingerprint", fingerprints(ctx.data, ctx.dataset, config.batch_size))
        with dist.together("opening the store"):
            store = store or Store.open(out, mode="a")
        result = ExtractResult(store.path, layer, grid, samples=len(ctx.labels),
                               order=ctx.listing.summary() if ctx.listing is not None else "",
                               notes=extraction_notes(store))
        _extract_all(ctx, store, layer, methods, dist, result, progress)
    result.seconds = time.perf_counter() - start_time
    return result


def _create_store(ctx: Context, config: RunConfig, out: str | Path, grid: tuple[int, int], channels: int,
                  methods: list[str], overwrite: bool) -> Store:
    """Create the store (or reopen it to resume), recording the config and the checkpoints' fingerprints."""
    checkpoints = [
        {**c.describe(), "sha256": c.sha256(), **({"metrics": c.meta["metrics"]} if "metrics" in c.meta else {})}
        for c in ctx.checkpoints
    ]
    return Store.create_or_resume(
        out,
        config=config.fingerprint(),
        checkpoints=checkpoints,
        class_names=ctx.data.class_names,
        labels=ctx.labels,
        sample_index=ctx.sample_index,
        grid=grid,
        channels=channels,
        methods=methods,
        chunk_n=config.batch_size,
        overwrite=overwrite,
    )


def _extract_all(ctx: Context, store: Store, layer: str, methods: dict, dist: Dist, result: ExtractResult,
                 progress: bool) -> None:
    """Loop over the checkpoints that are not done yet and write each one's arrays."""
    done = store.done()
    ranges = list(chunk_ranges(len(ctx.labels), store.chunk_n, dist.rank, dist.world))
    bar = tqdm(list(enumerate(ctx.checkpoints)), desc="checkpoints", disable=not (progress and dist.is_main))
    with Attributor(ctx.model, layer, methods, tokens.parse(ctx.config.tokens)) as attributor:
        for t, ckpt in bar:
            if done[t]:
                result.skipped.append(ckpt.name)
                continue
            bar.set_postfix_str(ckpt.name)
            with dist.together(f"extracting {ckpt.name}"):
                finite = _extract_checkpoint(ctx, store, attributor, t, ranges, progress and dist.is_main)
            if dist.is_main:  # every rank has written its share of checkpoint t (the vote above)
                store.mark_done(t, finite)
            if not finite:
                result.diverged.append(ckpt.name)
            result.checkpoints.append(ckpt.name)


def _extract_checkpoint(ctx: Context, store: Store, attributor: Attributor, t: int, ranges: list[tuple[int, int]],
                        progress: bool) -> bool:
    """Write this rank's chunks of checkpoint ``t``; returns False if its weights hold NaN/Inf."""
    ckpt = ctx.checkpoints[t]
    finite = ctx.load(ckpt)
    ctx.model.eval()
    if not finite:
        log.warning("%s: weights hold NaN/Inf; its probabilities and maps are stored as NaN", ckpt.name)
    labels = torch.as_tensor(ctx.labels)
    target = "true" if ctx.config.target == "true" else "predicted"
    want_features = t == len(ctx.checkpoints) - 1
    probs_arr = store.array("probs")
    cam_arrs = {m: store.cam(m) for m in attributor.methods}
    feat_arr = store.array("features")
    for start, stop in tqdm(ranges, desc=f"  {ckpt.name}", leave=False, disable=not progress):
        for (i0, i1), (x, _y) in _chunk_batches(ctx, start, stop):
            out = attributor.attribute(x, target, labels=labels[i0:i1], want_features=want_features)
            probs_arr[t, i0:i1] = finite_or_nan(out.probs, finite)
            for name, cam in out.cams.items():
                cam_arrs[name][t, i0:i1] = finite_or_nan(cam, finite)
            if out.features is not None:
                feat_arr[i0:i1] = out.features.cpu().numpy()
    return finite


def _chunk_batches(ctx: Context, start: int,
                   stop: int) -> Iterator[tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]]:
    """Yield ``((i0, i1), (x, y))`` batches covering one chunk of samples."""
    bs = ctx.config.batch_size
    i = start
    for x, y in iter_batches(ctx.dataset, start, stop, bs):
        yield (i, i + len(y)), (x, y)
        i += len(y)


