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

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from i2x.attribution import prefer_channels_last
from i2x.errors import UserError
from i2x.io.checkpoints import Checkpoint, Listing, list_checkpoints, recorded_checkpoints, select
from i2x.io.data import DataOptions, ImageData, labels_of, load_data
from i2x.io.devices import resolve_device
from i2x.io.location import as_path
from i2x.io.masks import region_rows
from i2x.io.models import build_model
from i2x.io.checkpoints.state_dicts import is_finite, load_into
from i2x.io.store import Store
from i2x.io.workdir import usable_checkpoints
from i2x.settings import option
from i2x.stages.provenance import check_code, checkpoint_trust
from i2x.stages.config import RunConfig


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
    if data.task == "segmentation":
        data = region_rows(data)  # a row per image and foreground class (i2x.stages.extract.regions)
    name_classes(config, data)
    dataset = data.split(config.split)
    index = np.arange(len(dataset))  # type: ignore[arg-type]
    if config.limit is not None:
        index = index[: config.limit]
        dataset = Subset(dataset, index.tolist()) if len(index) < len(data.split(config.split)) else dataset  # type: ignore[arg-type]
    if len(index) == 0:
        raise UserError(f"--split {config.split}: this split of --data {config.data} has no samples")
    labels = labels_of(data.split(config.split))[index]
    num_classes = config.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise UserError(f"--num-classes {num_classes}: the data has {data.num_classes} classes")
    model = build_model(config.model, num_classes=num_classes, in_channels=data.channels)
    check_forward(model, dataset, config.model, config.data, num_classes if data.task == "classification" else None)
    device = resolve_device(config.device)
    model.to(device)
    prefer_channels_last(model, dataset[0][0].unsqueeze(0).to(device))
    ckpts: list[Checkpoint] = []
    listing = None
    if with_checkpoints:
        listing = list_checkpoints(config.checkpoints, trust=config.trust_checkpoints, order=config.order,
                                   keep_duplicates=config.keep_duplicates)
        ckpts = select(listing.checkpoints, every=config.every, first=config.first, last=config.last, names=config.names)
    return Context(config, data, dataset, index, labels, model, device, ckpts, listing)


@dataclass
class ModelAccess:
    """Trust settings of a command that rebuilds the model from an analysis directory (see :func:`open_context`);
    the configs of those commands inherit them."""

    trust_checkpoints: bool = option(False, "allow checkpoints that need arbitrary pickled code to load (only for "
                                     "files you trust)")
    trust_analysis: bool = option(False, "let this analysis folder's recorded model and data specs import their "
                                  "Python files, and honour its recorded --trust-checkpoints (only for folders you "
                                  "trust)")
    model: str | None = option(None, "the model spec again (must match the recorded one) to allow its Python file",
                               metavar="SPEC")


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
