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

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from i2x.attribution import METHODS, prefer_channels_last
from i2x.attribution.tokens import parse as parse_tokens
from i2x.errors import UserError
from i2x.io.checkpoint_order import ORDERS
from i2x.io.checkpoints import Checkpoint, Listing, list_checkpoints, recorded_checkpoints, select
from i2x.io.data import DATA_SPECS, DataOptions, ImageData, labels_of, load_data
from i2x.io.devices import resolve_device
from i2x.io.location import as_path
from i2x.io.masks import region_rows
from i2x.io.models import MODEL_SPECS, build_model
from i2x.io.state_dicts import is_finite, load_into
from i2x.io.store import Store
from i2x.io.workdir import usable_checkpoints
from i2x.settings import device_option, name_list, number_list, option
from i2x.stages.provenance import check_code, checkpoint_trust


#: The fewest samples an analysis accepts: HDBSCAN's smallest confidence group (min_cluster_size 10).
MIN_SAMPLES = 10


@dataclass
class RunConfig:
    """What to analyse: checkpoints, model, data and how to read them (recorded in the store)."""

    checkpoints: str = option(help="directory of training snapshots", cli=False)
    model: str = option("small-cnn", f"architecture: {MODEL_SPECS.usage()} (no weights are ever downloaded)",
                        metavar="SPEC")
    data: str = option("digits", f"data set: {DATA_SPECS.usage()}", metavar="SPEC")
    split: str = option("train", "data split to analyse")
    layer: str | None = option(None, "target layer by dotted name (e.g. layer4, features.7); default: the last "
                               "module whose output is a 4-D map with at least 3x3 cells", metavar="NAME")
    methods: tuple[str, ...] = option(help="CAM methods, from the registered ones; occlusion and dea only when "
                                      "named (a forward per grid cell)", parse=name_list, metavar="A,B",
                                      default_factory=lambda: tuple(METHODS))
    target: str = option("true", "class each CAM explains: the true label (comparable across checkpoints) or the "
                         "predicted class (segmentation data: the class's ground-truth or predicted region)",
                         choices=("true", "predicted"))
    batch_size: int = option(256, "samples per batch", low=1, metavar="B")
    device: str = device_option()
    input_size: int | None = option(None, "resize images to PX x PX (default per data set)", low=1, metavar="PX")
    channels: int | None = option(None, "number of input channels (default per data set)", low=1, metavar="C")
    mean: tuple[float, ...] | None = option(None, "normalisation mean per channel", parse=number_list,
                                            metavar="M[,M,M]")
    std: tuple[float, ...] | None = option(None, "normalisation std per channel", parse=number_list, metavar="S[,S,S]",
                                           low=0, low_open=True)
    num_classes: int | None = option(None, "output classes (default: the data's class count)", low=1, metavar="M")
    limit: int | None = option(None, f"analyse only the first N samples of the split (at least {MIN_SAMPLES}: "
                               "HDBSCAN's smallest confidence group)", low=MIN_SAMPLES, metavar="N")
    every: int | None = option(None, "use every N-th checkpoint (the final one is always kept)", low=1, metavar="N")
    first: int | None = option(None, "use only the first N checkpoints", low=1, metavar="N")
    last: int | None = option(None, "use only the last N checkpoints", low=1, metavar="N")
    names: tuple[str, ...] | None = option(None, "use exactly these checkpoints (names as listed in the directory)",
                                           flag="--checkpoints", parse=name_list, metavar="A,B,...")
    trust_checkpoints: bool = option(False, "allow checkpoints that need arbitrary pickled code to load (only for "
                                     "files you trust)")
    order: str = option("step", "checkpoint order: step (the step stored inside, else the numbers in the names, "
                        "epoch_2 before epoch_10), name, or mtime (file modification time)", choices=ORDERS)
    keep_duplicates: bool = option(False, "analyse checkpoints with identical weights (last.ckpt beside the final "
                                   "epoch's file, copies) as separate steps; default: once, keeping the numbered name")
    class_names: tuple[str, ...] | None = option(None, "name the classes, in label order (default: the data's own "
                                                 "names, else their indices)", parse=name_list, metavar="A,B,...")
    class_names_file: str | None = option(None, "name the classes from a text file, one name per line in label "
                                          "order (for names with commas)", metavar="FILE")
    tokens: str | None = option(None, "how the layer's output holds its grid: auto (conv maps, transformer tokens "
                                "with their prefix tokens and channels-last maps are detected), P prefix tokens, "
                                "P and the grid (1x8x8), bchw or bhwc", metavar="auto|P|PxHxW|bhwc",
                                check=parse_tokens)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checkpoints"] = str(as_path(self.checkpoints).resolve())
        d["methods"] = list(self.methods)
        for key in ("mean", "std", "names", "class_names"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("methods", "mean", "std", "names", "class_names"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change what is computed (device and batch size do not)."""
        d = self.to_dict()
        for key in ("device", "batch_size", "trust_checkpoints", "class_names_file"):  # the file's names stay
            d.pop(key)
        return d

    def resolved(self) -> "RunConfig":
        """This config with ``--class-names-file`` read into ``class_names`` (what the store records)."""
        if self.class_names_file is None:
            return self
        if self.class_names is not None:
            raise UserError("--class-names and --class-names-file both name the classes; give one of them")
        try:
            lines = Path(self.class_names_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--class-names-file {self.class_names_file}: cannot read it as UTF-8 text ({exc})") from exc
        names = tuple(line.strip() for line in lines if line.strip())
        if not names:
            raise UserError(f"--class-names-file {self.class_names_file}: no name in it; write one class name a line")
        return replace(self, class_names=names, class_names_file=None)


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
        data = region_rows(data)  # a row per image and foreground class (i2x.stages.segmentation)
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
    check_forward(model, dataset, config.model, config.data)
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


def check_forward(model: nn.Module, dataset: Dataset, model_spec: str, data_spec: str) -> None:
    """Run the fresh model on one image, so a model that cannot take the data's image size or channel
    count fails here with a message rather than deep inside extraction."""
    x = dataset[0][0].unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"--model {model_spec} cannot run on the images of --data {data_spec} (C x H x W = "
            f"{' x '.join(map(str, x.shape[1:]))}): {cause}; choose another --input-size or --channels"
        ) from exc
    finally:
        model.train(was_training)


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
