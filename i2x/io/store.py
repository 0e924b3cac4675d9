"""The store's layout: every array name, its dimensions and attributes live here, and only here.

A store is a Zarr v3 group ``DIR/store.zarr``. Every array carries ``dimension_names`` so
``xarray.open_zarr(path)`` (root) and ``xarray.open_zarr(path, group="cam")`` /
``group="analysis"`` open it. Dimensions:

====  =====================================================================
t     checkpoint, in training order
n     sample of the analysed split (``sample_index`` maps it to the data set)
m     class
h, w  the target layer's spatial grid
d     the target layer's channels
k     prototype
p     PCA component
s     step between consecutive checkpoints (t -> t+1), s = 0 .. T-2
g     HDBSCAN group slot within a step (``group_ids`` gives the group label)
u     checkpoint of the evidence study (``evidence/checkpoints`` maps it to t)
e     sample of the evidence study (``evidence/rows`` maps it to n)
y, x  input pixel row and column
q     cell of a sample's fingerprint (:mod:`i2x.io.samples.fingerprint`: its pixels as a grey 8x8 thumbnail)
====  =====================================================================

Extraction writes the root arrays; ``done[t]`` turns 1 only after every array of checkpoint t
is written, so an interrupted run resumes at the first checkpoint not done. The analysis writes
the ``analysis/`` group, the evidence study (``i2x evidence``) the ``evidence/`` group. Root attributes
record the i2x version, the extraction config, the checkpoints (name, step, sha256), class names, layer,
grid, ``checkpoint_order`` (the order used and the duplicates skipped) and ``layer_layout`` (how the layer
holds its grid: a conv map, transformer tokens with their prefix count, or a channels-last map).

``DIR`` may be a URL (``s3://bucket/analysis``): the store is then written there through fsspec
(:class:`zarr.storage.FsspecStore`), chunk by chunk, and resumes there like a local one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync

from i2x.version import __version__
from i2x.errors import UserError
from i2x.io.datasets import CLASSIFICATION, SEGMENTATION
from i2x.io.location import CLOSE_SECONDS, RemotePath, as_path, opened

STORE_NAME = "store.zarr"

#: name -> dimension names. ``cam/<method>`` arrays share the ``cam/*`` entry (``evidence/iou/<method>`` and
#: ``film/answer/<method>`` likewise).
ARRAYS: dict[str, tuple[str, ...]] = {
    "labels": ("n",),
    "sample_index": ("n",),
    "fingerprint": ("n", "q"),
    "probs": ("t", "n", "m"),
    "cam/*": ("t", "n", "h", "w"),
    "features": ("n", "h", "w", "d"),
    "done": ("t",),
    "finite": ("t",),
    "analysis/pca_mean": ("d",),
    "analysis/pca_components": ("p", "d"),
    "analysis/centroids": ("k", "p"),
    "analysis/assign": ("n", "h", "w"),
    "analysis/intensity": ("t", "n", "k"),
    "analysis/present": ("n", "k"),
    "analysis/share": ("n", "k"),
    "analysis/groups": ("s", "n"),
    "analysis/beta": ("s", "k", "m"),
    "analysis/beta_se": ("s", "k", "m"),
    "analysis/alpha": ("s",),
    "analysis/r2": ("s",),
    "analysis/group_ids": ("s", "g"),
    "analysis/group_beta": ("s", "g", "k", "m"),
    "analysis/accuracy": ("t",),
    "analysis/loss": ("t",),
    "analysis/confusion": ("t", "true", "pred"),
    "analysis/confidence": ("n",),
    "analysis/variability": ("n",),
    "analysis/correctness": ("n",),
    "analysis/forgetting": ("n",),
    "film/rows": ("r",),
    "film/columns": ("c",),
    "film/answer/*": ("c", "a", "h", "w"),
    "evidence/checkpoints": ("u",),
    "evidence/rows": ("e",),
    "evidence/masks": ("u", "e", "y", "x"),
    "evidence/soft": ("u", "e", "y", "x"),
    "evidence/target": ("u", "e"),
    "evidence/threshold": ("u", "e"),
    "evidence/area": ("u", "e"),
    "evidence/kept": ("u", "e"),
    "evidence/kl": ("u", "e"),
    "evidence/robust": ("u", "e"),
    "evidence/leakage": ("u", "e"),
    "evidence/iou/*": ("u", "e"),
}

#: Array families whose members share one layout entry: ``cam/gradcam`` -> ``cam/*``.
_FAMILIES = ("cam/", "evidence/iou/", "film/answer/")


def dims_of(name: str) -> tuple[str, ...]:
    """The dimension names of array ``name`` (``cam/gradcam`` -> ``cam/*``, ``evidence/iou/gradcam`` -> ``evidence/iou/*``)."""
    key = next((f + "*" for f in _FAMILIES if name.startswith(f)), name)
    if key not in ARRAYS:
        raise KeyError(f"{name} is not an array of the i2x store layout")
    return ARRAYS[key]


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so comparisons match what the store holds."""
    return json.loads(json.dumps(value))


class Store:
    """Read and write one i2x store through the layout above."""

    def __init__(self, root: zarr.Group, path: Path | RemotePath) -> None:
        self.root = root
        self.path = path

    # ---- opening -------------------------------------------------------------------------
    @staticmethod
    def location(out_dir: str | Path | RemotePath) -> Path | RemotePath:
        """Where the store of an output directory lives."""
        return as_path(out_dir) / STORE_NAME

    @classmethod
    def open(cls, out_dir: str | Path, mode: str = "r") -> "Store":
        """Open the store of an analysis directory; a missing or unfinished store is a UserError."""
        path = cls.location(out_dir)
        if not (path / "zarr.json").is_file():
            raise UserError(f"{out_dir}: no i2x store here ({path} is missing); run `i2x extract` or `i2x run` first")
        root = zarr.open_group(_zarr_store(path, mode), mode=mode)
        if not root.attrs.get("layout_complete"):
            raise UserError(f"{path}: the store was not fully created; rerun `i2x extract` with the same options")
        return cls(root, path)

    @classmethod
    def create_or_resume(
        cls,
        out_dir: str | Path,
        *,
        config: dict[str, Any],
        checkpoints: list[dict[str, Any]],
        class_names: list[str],
        labels: np.ndarray,
        sample_index: np.ndarray,
        grid: tuple[int, int],
        channels: int,
        methods: list[str],
        chunk_n: int,
        overwrite: bool = False,
    ) -> "Store":
        """Create the store, or reopen it to resume when it was made with the same config and checkpoints.

        A store made with a different config is an error unless ``overwrite``. Attributes that describe
        how the run was read, and do not decide whether it resumes, go through :meth:`note`.
        """
        path = cls.location(out_dir)
        attrs = {
            "i2x_version": __version__,
            "config": _jsonable(config),
            "checkpoints": _jsonable(checkpoints),
            "class_names": list(class_names),
            "layer": config["layer"],
            "grid": list(grid),
            "methods": list(methods),
        }
        if (path / "zarr.json").is_file() and not overwrite:
            root = zarr.open_group(_zarr_store(path, "a"), mode="a")
            if root.attrs.get("layout_complete"):
                old = {k: root.attrs.get(k) for k in ("config", "checkpoints", "class_names", "layer", "grid", "methods")}
                new = {k: attrs[k] for k in old}
                if old != new:
                    changed = [k for k in old if old[k] != new[k]]
                    raise UserError(
                        f"{path} was made with different {' and '.join(changed)}; use --overwrite to replace it, "
                        "or choose another --out"
                    )
                return cls(root, path)
        if isinstance(path, RemotePath):
            path.remove_tree()
        elif path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(_zarr_store(path, "w"), mode="w")
        n, t, m = len(labels), len(checkpoints), len(class_names)
        h, w = grid
        cn = max(1, min(chunk_n, n))
        store = cls(root, path)
        store._new("labels", (n,), "int64", (n,))[:] = labels
        store._new("sample_index", (n,), "int64", (n,))[:] = sample_index
        store._new("probs", (t, n, m), "float32", (1, cn, m))
        for method in methods:
            store._new(f"cam/{method}", (t, n, h, w), "float32", (1, cn, h, w))
        store._new("features", (n, h, w, channels), "float16", (cn, h, w, channels))
        store._new("done", (t,), "uint8", (t,))
        store._new("finite", (t,), "uint8", (t,), fill_value=1)
        root.attrs.update({**attrs, "chunk_n": cn, "layout_complete": True})
        return store

    def _new(self, name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...], fill_value: Any = 0) -> zarr.Array:
        chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))
        return self.root.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
            dimension_names=dims_of(name), overwrite=True,
        )

    def note(self, attrs: dict[str, Any]) -> None:
        """Record root attributes that do not decide whether a store resumes (trust setting, code digests)."""
        self.root.attrs.update(_jsonable(attrs))

    # ---- extraction results -------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def task(self) -> str:
        """What the extracted model learns (:data:`i2x.io.datasets.TASKS`); stores older than the field hold
        classifiers."""
        return str(self.root.attrs.get("task", CLASSIFICATION))

    @property
    def segmentation(self) -> bool:
        """Whether the store holds a segmentation run (rows are image and class pairs, region targets)."""
        return self.task == SEGMENTATION

    @property
    def class_names(self) -> list[str]:
        return list(self.root.attrs["class_names"])

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.root.attrs["checkpoints"])

    @property
    def methods(self) -> list[str]:
        return list(self.root.attrs["methods"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.root.attrs["config"])

    @property
    def chunk_n(self) -> int:
        return int(self.root.attrs["chunk_n"])

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.root.attrs["grid"]
        return int(h), int(w)

    def array(self, name: str) -> zarr.Array:
        """The zarr array ``name`` (lazy: slice it to read)."""
        dims_of(name)
        if name not in self.root:
            raise UserError(f"{self.path}: array {name} is missing; run the stage that writes it first")
        return self.root[name]

    def cam(self, method: str) -> zarr.Array:
        """The raw CAM array of ``method``: ``[t, n, h, w]``."""
        if method not in self.methods:
            raise UserError(f"--method {method}: the store holds {', '.join(self.methods)}; extract it first")
        return self.array(f"cam/{method}")

    def done(self) -> np.ndarray:
        """Boolean per checkpoint: all of its arrays are written."""
        return self.array("done")[:].astype(bool)

    def mark_done(self, t: int, finite: bool = True) -> None:
        """Record that checkpoint ``t`` is complete (call only after its arrays are written)."""
        self.array("finite")[t] = int(finite)
        self.array("done")[t] = 1

    def require_complete(self) -> None:
        """Refuse to analyse a store whose extraction is unfinished."""
        done = self.done()
        if not done.all():
            missing = [self.checkpoints[i]["name"] for i in np.flatnonzero(~done)]
            raise UserError(
                f"{self.path}: extraction is unfinished ({len(missing)} checkpoint(s) not done, e.g. {missing[0]}); "
                "rerun the same `i2x extract` command to resume"
            )

    # ---- analysis results ---------------------------------------------------------------
    def write(self, name: str, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> zarr.Array:
        """Write a whole array of the layout (replacing any previous one)."""
        data = np.asarray(data)
        dims = dims_of(name)
        if data.ndim != len(dims):
            raise ValueError(f"{name} has dims {dims} but the data is {data.ndim}-D")
        arr = self._new(name, data.shape, str(data.dtype), chunks or data.shape)
        arr[...] = data
        return arr

    def create(self, name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]) -> zarr.Array:
        """Create an empty array of the layout, to be filled chunk by chunk."""
        return self._new(name, shape, dtype, chunks)

    def read(self, name: str) -> np.ndarray:
        """Read a whole array into memory."""
        return self.array(name)[...]

    def has(self, name: str) -> bool:
        return name in self.root

    def set_analysis_attrs(self, attrs: dict[str, Any]) -> None:
        """Record the analysis settings and results summary on the ``analysis`` group."""
        group = self.root.require_group("analysis")
        group.attrs.update(_jsonable(attrs))

    def analysis_attrs(self) -> dict[str, Any]:
        if "analysis" not in self.root:
            raise UserError(f"{self.path}: no analysis yet; run `i2x analyze` first")
        return dict(self.root["analysis"].attrs)

    def clear_group(self, group: str) -> None:
        """Drop a group of results (``analysis``, ``evidence``) before a stage writes it anew."""
        if group in self.root:
            del self.root[group]

    def clear_analysis(self) -> None:
        """Drop a previous analysis before writing a new one."""
        self.clear_group("analysis")


def _zarr_store(path: Path | RemotePath, mode: str) -> Any:
    """What zarr opens: a local folder by its path, a URL through fsspec (read-only when ``mode`` is ``r``)."""
    if isinstance(path, RemotePath):
        store = zarr.storage.FsspecStore.from_url(path.url, read_only=mode == "r",
                                                  storage_options={"use_listings_cache": False})
        opened(store.fs, lambda coro: zarr_sync(coro, timeout=CLOSE_SECONDS))  # its connections live on zarr's loop
        return store
    return str(path)


def chunk_ranges(n: int, chunk: int, rank: int = 0, world: int = 1) -> Iterable[tuple[int, int]]:
    """Chunk-aligned ``[start, stop)`` sample ranges; rank ``r`` of ``world`` takes every world-th chunk."""
    for i, start in enumerate(range(0, n, chunk)):
        if i % world == rank:
            yield start, min(start + chunk, n)
