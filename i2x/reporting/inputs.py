"""What every section builder reads: the store, the summary, optional analysis files and the input images.

Arrays are read once and cached; the input images come from the data set recorded in the store
(:func:`i2x.stages.context.open_data`: no model is built). If the data set can no longer be opened,
or it names code the user has not confirmed, the report is still built, without pictures, and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from i2x.io.data import ImageData
from i2x.stages.context import open_data
from i2x.stages.config import RunConfig
from i2x.errors import UserError
from i2x.io.location import RemotePath, as_path, command_path
from i2x.io.store import Store
from i2x.io.workdir import load_summary, read_json
from i2x.reporting.charts import ChartSet
from i2x.reporting.images import png_uri, prototype_patches
from i2x.reporting.page import scrub_paths


class KeyLog(dict):
    """A dict that notes which of its top-level keys were read, so the page can record what each section used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __iter__(self):
        self.read.update(super().keys())
        return super().__iter__()

    def items(self):
        self.read.update(super().keys())
        return super().items()

    def values(self):
        self.read.update(super().keys())
        return super().values()


@dataclass
class Patch:
    """One example patch of a prototype: its picture and where it came from."""

    uri: str
    row: int
    sample: int
    label: int
    cam: float


@dataclass
class ReportInputs:
    """The analysis directory as the section builders see it (see :mod:`i2x.reporting.sections`)."""

    out_dir: Path | RemotePath
    store: Store
    summary: dict[str, Any]
    charts: ChartSet = field(default_factory=ChartSet)
    patches_per_prototype: int | None = None  # None: 6, or 4 when there are more than 48 prototypes
    trust_analysis: bool = False  # import a data spec's Python file (the user confirmed the analysis)
    asked: list[str] = field(default_factory=list)  # files optional_json was asked for (the page records them)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, out_dir: str | Path, trust_analysis: bool = False) -> "ReportInputs":
        """Open ``DIR/store.zarr`` and ``DIR/summary.json`` (UserErrors say which stage to run)."""
        out = as_path(out_dir)
        store = Store.open(out)
        summary = KeyLog(load_summary(out))
        store.analysis_attrs()
        return cls(out, store, summary, trust_analysis=trust_analysis)

    # ---- plain facts -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.store.class_names

    @property
    def shown_dir(self) -> str:
        """The analysis directory as commands on the page name it (:func:`i2x.reporting.page.command_path`)."""
        return command_path(self.out_dir)

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return self.store.checkpoints

    @property
    def steps(self) -> list[list[int]]:
        """Step s runs between checkpoints ``steps[s][0]`` and ``steps[s][1]`` (usable ones only)."""
        return [list(map(int, s)) for s in self.summary["steps"]]

    @property
    def final(self) -> int:
        """Index of the last usable (finite) checkpoint."""
        return int(np.flatnonzero(self.read("finite"))[-1])

    def step_label(self, s: int) -> str:
        a, b = self.steps[s]
        return f"{self.checkpoints[a]['name']} → {self.checkpoints[b]['name']}"

    def train_step(self, t: int) -> int:
        """The training step recorded for checkpoint ``t`` (its index if none was recorded)."""
        step = self.checkpoints[t].get("step")
        return int(step) if step is not None else t

    def optional_json(self, relative: str) -> dict[str, Any] | None:
        """A JSON file of the analysis directory, or None if it is absent (its section is then skipped);
        an unreadable one raises a UserError, which the report shows as the section being unavailable."""
        self.asked.append(relative)
        path = self.out_dir / relative
        return read_json(path, "the study") if path.exists() else None

    # ---- arrays ---------------------------------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        """A whole store array, read once."""
        if name not in self._arrays:
            self._arrays[name] = self.store.read(name)
        return self._arrays[name]

    @property
    def method(self) -> str:
        return str(self.summary["method"])

    @cached_property
    def final_cam(self) -> np.ndarray:
        """Raw CAM of the analysis method at the final usable checkpoint, ``[n, h, w]``."""
        return np.asarray(self.store.cam(self.method)[self.final])

    # ---- images ---------------------------------------------------------------------------
    @cached_property
    def _context(self) -> tuple[tuple[RunConfig, ImageData] | None, str | None]:
        """((the run config, its data set), None) or (None, why the data set cannot be opened)."""
        try:
            opened = open_data(self.store, self.trust_analysis)
        except (UserError, OSError) as exc:
            return None, str(exc)
        return opened, None

    @property
    def images_unavailable(self) -> str | None:
        """Why the input images cannot be shown (paths shown relative or by name), or None when they can."""
        why = self._context[1]
        return None if why is None else scrub_paths(why, self.out_dir)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The model's input size (H, W), or None when the data set cannot be opened."""
        opened = self._context[0]
        return None if opened is None else (int(opened[1].input_size[0]), int(opened[1].input_size[1]))

    def images(self, rows: np.ndarray) -> np.ndarray:
        """Input images of store rows ``rows`` in the [0, 1] pixel range, ``[B, C, H, W]`` float32."""
        opened, why = self._context
        if opened is None:
            raise UserError(f"input images unavailable: {why}")
        config, data = opened
        split = data.split(config.split)
        index = self.read("sample_index")[np.asarray(rows, dtype=np.int64)]
        batch = torch.stack([split[int(i)][0] for i in index]) if len(index) else torch.zeros(0)
        return data.denormalize(batch).numpy().astype(np.float32)

    def patches_per(self, k: int) -> int:
        """Example patches per prototype card (fewer when there are many cards, to bound the page size)."""
        return self.patches_per_prototype or (6 if k <= 48 else 4)

    @cached_property
    def prototype_patches(self) -> dict[int, list[Patch]]:
        """Per prototype, the samples where it occurs most strongly: at each sample its assigned cell with the
        highest final-checkpoint CAM, samples ranked by that CAM value (``patches_per(K)`` of them)."""
        if self.images_unavailable:
            return {}
        assign = self.read("analysis/assign")
        k = int(self.summary["k"])
        n, h, w = assign.shape
        cam = np.nan_to_num(self.final_cam, nan=-np.inf).reshape(-1)
        key = (np.arange(n)[:, None] * k + assign.reshape(n, -1)).reshape(-1)  # (sample, prototype) of each cell
        order = np.argsort(-cam, kind="stable")
        pairs, first = np.unique(key[order], return_index=True)
        best_cell = order[first]  # flat index of the strongest cell of each (sample, prototype)
        proto, value = pairs % k, cam[best_cell]
        ranked = np.lexsort((-value, proto))
        starts = np.searchsorted(proto[ranked], np.arange(k))
        rank = np.arange(ranked.size) - starts[proto[ranked]]
        keep = ranked[rank < self.patches_per(k)]
        cells = best_cell[keep]
        rows, (ci, cj) = cells // (h * w), np.divmod(cells % (h * w), w)
        unique_rows, inverse = np.unique(rows, return_inverse=True)
        pics = prototype_patches(self.images(unique_rows)[inverse], np.stack([ci, cj], axis=1), (h, w))
        labels, index = self.read("labels"), self.read("sample_index")
        out: dict[int, list[Patch]] = {i: [] for i in range(k)}
        for pic, kk, row, val in zip(pics, proto[keep], rows, value[keep]):
            out[int(kk)].append(Patch(png_uri(pic), int(row), int(index[row]), int(labels[row]), float(val)))
        return out
