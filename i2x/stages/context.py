"""The run context: the data, the model and the checkpoints an extraction config names.

Extraction builds it from the user's options; later stages (faithfulness, reliance, fine-tuning,
the report's images) rebuild the same context from the config recorded in the store, through
:func:`open_context` (a model with a checkpoint) or :func:`open_data` (the images only). Both treat
the analysis directory as untrusted input: a model or data spec that imports a Python file is
imported only when the user confirms it (``--model`` again, or ``--trust-analysis``) and the file's
sha256 still matches the one recorded at extraction (:mod:`i2x.stages.provenance`); checkpoints load with ``--trust-checkpoints``
only when this command was given it (or ``--trust-analysis`` and the extraction was trusted).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from i2x.attribution import prefer_channels_last
from i2x.errors import UserError
from i2x.io.checkpoints import Checkpoint, Listing, list_checkpoints, recorded_checkpoints, select
from i2x.io.checkpoints.state_dicts import is_finite, load_into
from i2x.io.data import DataOptions, ImageData, labels_of, load_data
from i2x.io.devices import resolve_device
from i2x.io.location import as_path
from i2x.io.masks import region_rows
from i2x.io.models import build_model
from i2x.io.store import Store
from i2x.io.workdir import usable_checkpoints
from i2x.settings import option, trust_analysis_option, trust_checkpoints_option
from i2x.stages.config import RunConfig
from i2x.stages.provenance import check_code, checkpoint_trust

#: The seed of ``--limit``'s stratified sample.
SAMPLE_SEED = 0
#: Fewer analysed samples of a class than this are named: HDBSCAN's smallest group (and MIN_SAMPLES) is 10.
MIN_PER_CLASS_SAMPLE = 10


def name_classes(config: RunConfig, data: ImageData) -> None:
    """Give ``data`` the classes' names from ``--class-names`` (or its file, once :meth:`RunConfig.resolved` read it),
    checked against the data's class count; without them the data's own names stay."""
    names = config.class_names
    if names is None:
        return
    flag = "--class-names (or --class-names-file)"
    if len(names) != data.num_classes:
        raise UserError(f"{flag}: {len(names)} names given but --data {config.data} has {data.num_classes} classes; "
                        "give one name per class, in label order")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"{flag}: {', '.join(twice)} named twice; every class needs its own name")
    data.class_names = list(names)


def stratified_sample(labels: np.ndarray, n: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """``n`` row indices drawn without replacement, seeded, each class in its share of ``labels`` (largest
    remainders round), in data-set order; a data set sorted by class still gives every class. Each class's rows are
    taken from one seeded order of that class, so a larger ``n`` keeps (nearly always) the samples of a smaller one."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / counts.sum()
    take = np.floor(quota).astype(int)
    extra = np.argsort(-(quota - take), kind="stable")[: n - take.sum()]
    take[extra] += 1
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(rows))


def sample_record(labels: np.ndarray, of: int, num_classes: int, limit: int | None) -> dict[str, Any]:
    """How the analysed samples were chosen and what they hold per class (the store's ``sample`` note)."""
    per_class = np.bincount(labels, minlength=num_classes).tolist()
    return {"n": int(labels.size), "of": int(of), "how": "stratified" if limit is not None and labels.size < of
            else "all", "seed": SAMPLE_SEED, "per_class": per_class}


def sample_warning(record: dict[str, Any], names: list[str]) -> str | None:
    """A line naming the classes the sample lacks or holds fewer than MIN_PER_CLASS_SAMPLE of, else None."""
    counts = record["per_class"]
    missing = [names[c] for c, k in enumerate(counts) if k == 0]
    thin = [f"{names[c]} ({k})" for c, k in enumerate(counts) if 0 < k < MIN_PER_CLASS_SAMPLE]
    parts = ([f"no sample of {', '.join(missing)}"] if missing else []) + (
        [f"fewer than {MIN_PER_CLASS_SAMPLE} samples of {', '.join(thin)}"] if thin else [])
    if not parts:
        return None
    return f"sample: {'; '.join(parts)}: results for those classes are missing or rest on too few samples"


def sample_line(record: dict[str, Any]) -> str:
    """``100 of 4,708, stratified`` (or ``all 624``)."""
    if record["how"] == "stratified":
        return f"{record['n']:,} of {record['of']:,}, stratified (seed {record['seed']})"
    return f"all {record['n']:,}"


@dataclass
class Context:
    """Data, split, model and ordered checkpoints of one run."""

    config: RunConfig
    data: ImageData
    dataset: Dataset
    sample_index: np.ndarray
    labels: np.ndarray
    model: nn.Module
    device: torch.device
    checkpoints: list[Checkpoint] = field(default_factory=list)
    listing: Listing | None = None
    sample_total: int = 0  # samples in the split, of which ``sample_index`` holds the analysed ones

    def load(self, checkpoint: Checkpoint) -> bool:
        """Load ``checkpoint`` into the model in place; returns False if its weights hold NaN/Inf."""
        state = load_into(self.model, checkpoint, trust=self.config.trust_checkpoints)
        self.model.to(self.device)
        return is_finite(state)

    def checkpoint(self, name: str) -> Checkpoint:
        """The checkpoint called ``name`` (``final`` and ``first`` are accepted too)."""
        if name == "final":
            return self.checkpoints[-1]
        if name == "first":
            return self.checkpoints[0]
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise UserError(f"checkpoint {name!r} not found; available: {', '.join(c.name for c in self.checkpoints)}")


def build_context(config: RunConfig, with_checkpoints: bool = True) -> Context:
    """Open the data and build the model (fresh weights) that ``config`` names, and list the checkpoints."""
    config = config.resolved()
    if with_checkpoints and not as_path(config.checkpoints).is_dir():
        raise UserError(f"checkpoint directory {config.checkpoints} does not exist or is not a directory")
    opts = DataOptions(config.input_size, config.channels, config.mean, config.std)
    data = load_data(config.data, opts)
    if data.segmentation:
        data = region_rows(data)  # a row per image and foreground class (i2x.stages.extract.regions)
    name_classes(config, data)
    if not data.segmentation:  # the store records the numbers used, never "the default"
        square = data.input_size[0] == data.input_size[1]
        config = replace(config, mean=tuple(data.mean), std=tuple(data.std), channels=data.channels,
                         input_size=data.input_size[0] if square else config.input_size)
    dataset = data.split(config.split)
    all_labels = labels_of(dataset)
    index = np.arange(len(all_labels))
    if config.limit is not None and config.limit < len(index):
        index = stratified_sample(all_labels, config.limit)
        dataset = Subset(dataset, index.tolist())  # type: ignore[arg-type]
    if len(index) == 0:
        raise UserError(f"--split {config.split}: this split of --data {config.data} has no samples")
    labels = all_labels[index]
    model = fresh_model(config.model, config.data, data, config.num_classes, dataset)
    device = resolve_device(config.device)
    model.to(device)
    prefer_channels_last(model, dataset[0][0].unsqueeze(0).to(device))
    ckpts: list[Checkpoint] = []
    listing = None
    if with_checkpoints:
        listing = list_checkpoints(config.checkpoints, trust=config.trust_checkpoints, order=config.order,
                                   keep_duplicates=config.keep_duplicates)
        ckpts = select(listing.checkpoints, every=config.every, first=config.first, last=config.last, names=config.names)
    return Context(config, data, dataset, index, labels, model, device, ckpts, listing, len(all_labels))


@dataclass
class ModelAccess:
    """Trust settings of a command that rebuilds the model from an analysis directory (see :func:`open_context`);
    the configs of those commands inherit them."""

    trust_checkpoints: bool = trust_checkpoints_option()
    model: str | None = option(None, "confirm the analysis's package.module:factory or file.py:factory model spec (the "
                               "same one) so it may be imported; its file must still match the sha256 recorded at "
                               "extraction", metavar="SPEC")
    trust_analysis: bool = trust_analysis_option()


def fresh_model(model_spec: str, data_spec: str, data: ImageData, num_classes: int | None,
                probe: Dataset) -> nn.Module:
    """The model ``model_spec`` names with fresh weights, sized to ``data`` (``num_classes`` may add classes the data
    lacks, never drop some) and tried on one image of ``probe``: the one place a model is built for data."""
    num_classes = num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise UserError(f"--num-classes {num_classes}: the data has {data.num_classes} classes")
    model = build_model(model_spec, num_classes=num_classes, in_channels=data.channels)
    check_forward(model, probe, model_spec, data_spec, None if data.segmentation else num_classes)
    return model


def check_forward(model: nn.Module, dataset: Dataset, model_spec: str, data_spec: str,
                  num_classes: int | None = None) -> None:
    """Run the fresh model on one image, so a model that cannot take the data's image size or channel
    count fails here with a message rather than deep inside extraction; with ``num_classes`` (a classifier) it
    must return that many scores per image (a factory that ignores num_classes trained to accuracy 0)."""
    x = dataset[0][0].unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"--model {model_spec} cannot run on the images of --data {data_spec} (C x H x W = "
            f"{' x '.join(map(str, x.shape[1:]))}): {cause}; choose another --input-size or --channels"
        ) from exc
    finally:
        model.train(was_training)
    if num_classes is not None and isinstance(out, torch.Tensor) and tuple(out.shape) != (1, num_classes):
        got = " x ".join(map(str, out.shape[1:])) or "a scalar"
        what = "a map per class, as a segmentation model does" if out.ndim == 4 else f"outputs of shape {got}"
        raise UserError(f"--model {model_spec} returns {what} per image, but --data {data_spec} is a classification "
                        f"set of {num_classes} classes: the model must return {num_classes} class scores (a factory "
                        "should build its last layer from num_classes)")


def open_context(store: Store, t: int | None = None, device: str = "auto", batch_size: int = 256,
                 trust_checkpoints: bool = False, trust_analysis: bool = False, model: str | None = None) -> Context:
    """Rebuild data and model from the store's config and load checkpoint t (default: the last usable one),
    after checking the code it names, that the data gives the stored labels and the file the stored sha256.
    ``checkpoints`` are the store's, found by name (:func:`i2x.io.checkpoints.recorded_checkpoints`)."""
    config = RunConfig.from_dict({**store.config, "device": device, "batch_size": batch_size,
                                  "trust_checkpoints": checkpoint_trust(store, trust_checkpoints, trust_analysis)})
    check_code(store, config, trust_analysis, model)
    ctx = build_context(config, with_checkpoints=False)
    ctx.checkpoints = recorded_checkpoints(config.checkpoints, store.checkpoints)
    labels = store.read("labels")
    if len(ctx.labels) != len(labels) or not np.array_equal(ctx.labels, labels):
        raise UserError(f"{store.path}: the data set {config.data!r} no longer gives the stored labels; "
                        "point the config at the same data or rerun `i2x run`")
    record = store.checkpoints[int(usable_checkpoints(store)[-1]) if t is None else t]
    ckpt = ctx.checkpoint(record["name"])
    if not ckpt.path.is_file():
        raise UserError(f"{ckpt.path}: checkpoint {ckpt.name} is gone (the analysis reads its checkpoints from "
                        f"{config.checkpoints}); put it back there or rerun `i2x run`")
    if record.get("sha256") and ckpt.sha256() != record["sha256"]:
        raise UserError(f"{ckpt.path}: the file changed since extraction (sha256 differs); rerun `i2x run --overwrite`")
    ctx.load(ckpt)
    ctx.model.eval()
    return ctx


def open_data(store: Store, trust_analysis: bool = False) -> tuple[RunConfig, ImageData]:
    """The store's config and its data set, without building the model (the report's pictures need no model)."""
    config = RunConfig.from_dict(store.config)
    check_code(store, config, trust_analysis, kinds=("data",))
    opts = DataOptions(config.input_size, config.channels, config.mean, config.std)
    data = load_data(config.data, opts)
    name_classes(config, data)
    return config, data
