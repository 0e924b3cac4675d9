"""What a run analyses (checkpoints, model, data and how to read them): the settings recorded in the store, read by the context, provenance and extraction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from i2x.attribution import METHODS
from i2x.attribution.tokens import parse as parse_tokens
from i2x.errors import UserError
from i2x.io.checkpoints.order import ORDERS
from i2x.io.data import DATA_SPECS
from i2x.io.location import as_path
from i2x.io.models import MODEL_SPECS
from i2x.settings import device_option, name_list, number_list, option, trust_checkpoints_option

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
    limit: int | None = option(None, f"analyse a seeded sample of N samples of the split, each class in its share "
                               f"(at least {MIN_SAMPLES}: HDBSCAN's smallest confidence group)", low=MIN_SAMPLES,
                               metavar="N")
    every: int | None = option(None, "use every N-th checkpoint (the final one is always kept)", low=1, metavar="N")
    first: int | None = option(None, "use only the first N checkpoints", low=1, metavar="N")
    last: int | None = option(None, "use only the last N checkpoints", low=1, metavar="N")
    names: tuple[str, ...] | None = option(None, "use exactly these checkpoints (names as listed in the directory)",
                                           flag="--checkpoints", parse=name_list, metavar="A,B,...")
    trust_checkpoints: bool = trust_checkpoints_option()
    order: str = option("step", "checkpoint order: step (the step stored inside, else the numbers in the names, "
                        "epoch_2 before epoch_10), name, or mtime (file modification time)", choices=ORDERS)
    keep_duplicates: bool = option(False, "analyse checkpoints with identical weights (last.ckpt beside the final "
                                   "epoch's file, copies) as separate steps; default: once, keeping the numbered name")
    class_names: tuple[str, ...] | None = option(None, "name the classes, in label order (default: the data's own "
                                                 "names, else their indices)", parse=name_list, metavar="A,B,...")
    class_names_file: str | None = option(None, "name the classes from a text file, one name per line in label "
                                          "order (for names with commas)", metavar="FILE")
    skip_normalisation_check: bool = option(False, "analyse even when the first batch norm's running statistics say "
                                            "the model was trained with another normalisation (recorded and shown "
                                            "in the report)")
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
