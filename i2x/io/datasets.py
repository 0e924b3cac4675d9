"""The data set type of every ``--data`` spec and the checks its arrays pass before anything runs.

:class:`ImageData` holds the splits, class names and preprocessing; :func:`tensor_data` turns in-memory
arrays into one, validating labels (whole class indices, every class with ``MIN_PER_CLASS`` training
samples), channels, sizes and the normalisation (no NaN/Inf). :mod:`i2x.io.data` documents the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from i2x.errors import UserError

SPLITS = ("train", "test")
#: What a model learns from a data set: a class per image, or a class per pixel (a mask [H, W] per image).
CLASSIFICATION, SEGMENTATION = TASKS = ("classification", "segmentation")
MIN_PER_CLASS = 2  # training samples every class needs (one gives no class-internal variation to learn or map)


@dataclass
class ImageData:
    """A data set with train/test splits, class names and the preprocessing that was applied."""

    spec: str
    splits: dict[str, Dataset]
    class_names: list[str]
    channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    #: One of :data:`TASKS`: a label per image, or a class mask [H, W] per image (class 0 the background).
    task: str = CLASSIFICATION

    @property
    def segmentation(self) -> bool:
        """Whether the images come with class masks (a segmentation set) rather than labels."""
        return self.task == SEGMENTATION

    def split(self, name: str) -> Dataset:
        """The named split (``train`` or ``test``)."""
        if name not in self.splits:
            raise UserError(f"--split {name}: this data set has splits {', '.join(self.splits)}")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``[B, C, H, W]`` back to the [0, 1] pixel range (clipped), for display."""
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record of the data and its preprocessing."""
        return {
            "spec": self.spec,
            "class_names": list(self.class_names),
            "channels": self.channels,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "task": self.task,
            "sizes": {k: len(v) for k, v in self.splits.items()},  # type: ignore[arg-type]
        }


@dataclass
class DataOptions:
    """User overrides of the per-data-set defaults (None keeps the default)."""

    input_size: int | None = None
    channels: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


def tensor_data(
    spec: str,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: list[str],
    default_size: int | None,
    opts: DataOptions,
) -> ImageData:
    """Build an in-memory ImageData from uint8/float arrays ``[N, H, W]`` or ``[N, H, W, C]`` in [0, max]."""
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (x, y) in arrays.items():
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise UserError(f"--data {spec}: images of the {split} split have shape {x.shape}; expected N,H,W or N,H,W,C")
        if x.dtype.kind not in "biuf":
            raise UserError(f"--data {spec}: images of the {split} split are of dtype {x.dtype}; give numbers "
                            "(uint8 0..255 or floats 0..1)")
        if x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
            x = x.transpose(0, 2, 3, 1)  # stored channels-first (N,C,H,W), as torch writes them
        scale = 255.0 if x.dtype == np.uint8 or (x.size and x.max() > 1.5) else 1.0
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / scale).permute(0, 3, 1, 2)
        y = _class_indices(np.asarray(y), spec, split)
        if y.size != len(x):
            several = y.ndim > 1 and len(y) == len(x)  # [N, M]: several labels (or a one-hot row) per image
            raise UserError(
                f"--data {spec}: the {split} split has {len(x)} images but labels of shape {y.shape}; "
                + ("i2x needs exactly one class index per image (multi-label data is not supported)" if several else
                   f"give one class index per image ({y.size} labels for {len(x)} images)")
            )
        if y.size and y.min() < 0:
            raise UserError(f"--data {spec}: the {split} split has label {y.min()}; labels must be indices 0..M-1")
        check_finite(t, spec, split)
        prepared[split] = (t, torch.as_tensor(y.reshape(-1), dtype=torch.long))
    if len(prepared["train"][0]) == 0:
        raise UserError(f"--data {spec}: the train split has no images")
    class_names = check_classes(spec, {k: y.numpy() for k, (_, y) in prepared.items()}, class_names)
    native_c = prepared["train"][0].shape[1]
    channels = opts.channels or native_c
    shapes = {tuple(x.shape[-2:]) for x, _ in prepared.values() if len(x)}
    if opts.input_size or default_size:
        size = (opts.input_size or default_size, opts.input_size or default_size)
    elif len(shapes) == 1:
        size = next(iter(shapes))  # native, both sides kept (8x5 stays 8x5)
    else:
        raise UserError(f"--data {spec}: the splits' images differ in size ({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}); "
                        "give --input-size PX to resize them all to PX x PX")
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (x, y) in prepared.items():
        x = adapt_channels(x, channels, spec)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out[split] = (x, y)
    train_x = out["train"][0]
    mean = tuple(opts.mean) if opts.mean else tuple(train_x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(opts.std) if opts.std else tuple(train_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    check_stats(mean, std, channels)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    splits = {}
    for k, (x, y) in out.items():
        normalised = (x - m) / s
        check_finite(normalised, spec, k, " after normalisation")
        splits[k] = TensorDataset(normalised, y)
    return ImageData(spec, splits, class_names, channels, size, mean, std)


def _class_indices(y: np.ndarray, spec: str, split: str) -> np.ndarray:
    """Labels as int64 class indices; fractional, non-finite or non-numeric labels are refused (never truncated)."""
    where = f"--data {spec}: the {split} split"
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        kind = {"U": "strings", "S": "byte strings", "O": "Python objects"}.get(y.dtype.kind, f"dtype {y.dtype}")
        raise UserError(f"{where} has labels of {kind}; labels must be integer class indices 0..M-1 "
                        "(store the names in a class_names array)")
    flat = y.reshape(len(y), -1) if y.ndim else y.reshape(1, 1)
    bad = ~np.isfinite(flat) | (flat != np.round(flat))
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise UserError(f"{where}: sample {i} has label {flat[i][bad[i]][0]:g}; labels must be whole class indices "
                        "0..M-1 (i2x refuses to truncate them)")
    return y.astype(np.int64)


def check_classes(spec: str, labels: dict[str, np.ndarray], class_names: list[str]) -> list[str]:
    """Every class 0..M-1 needs MIN_PER_CLASS training samples and M >= 2; a label beyond the classes is refused
    naming its sample. Returns the class names (numbered ones added when the data names none)."""
    train = labels["train"]
    m = len(class_names) or int(train.max()) + 1
    for split, y in labels.items():
        beyond = np.flatnonzero(y >= m)
        if beyond.size:
            i = int(beyond[0])
            names = f"{len(class_names)} class names" if class_names else f"the train split's classes 0..{m - 1}"
            raise UserError(f"--data {spec}: the {split} split's sample {i} has label {int(y[i])}, beyond {names}; "
                            "fix or remove that sample")
    counts = np.bincount(train, minlength=m)
    names = class_names or [str(i) for i in range(m)]
    if m < 2:
        raise UserError(f"--data {spec}: the train split has a single class ({names[0]}); i2x explains how a classifier "
                        "separates classes and needs at least 2")
    thin = np.flatnonzero(counts < MIN_PER_CLASS)
    empty = np.flatnonzero(counts == 0)
    if not class_names and empty.size and counts[m - 1] < MIN_PER_CLASS:
        top = int(np.flatnonzero(train == m - 1)[0])
        gap = f"{empty[0]}" if empty.size == 1 else f"{empty[0]}..{empty[-1]}"
        raise UserError(f"--data {spec}: the train split's sample {top} has label {m - 1}, but label(s) {gap} never occur "
                        f"(a stray label?); labels must be class indices 0..M-1 with at least {MIN_PER_CLASS} training "
                        "samples each")
    if thin.size:
        shown = ", ".join(f"{names[c]} ({counts[c]})" for c in thin[:5]) + (f" (+{thin.size - 5} more)" if thin.size > 5 else "")
        raise UserError(f"--data {spec}: every class needs at least {MIN_PER_CLASS} training samples; too few in "
                        f"{shown}")
    return names


def check_finite(x: torch.Tensor, spec: str, split: str, when: str = "") -> None:
    """NaN/Inf pixels (in the file, or made by the normalisation) would turn every output into NaN: refuse them."""
    if not len(x):
        return
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if bad.any():
        i = int(torch.nonzero(bad)[0, 0])
        fix = "fix that image or --mean/--std" if when else "fix or remove that image"
        raise UserError(f"--data {spec}: the {split} split's sample {i} holds NaN or Inf{when}; {fix}")


def adapt_channels(x: torch.Tensor, channels: int, spec: str) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise UserError(f"--channels {channels}: cannot convert {x.shape[1]}-channel images of --data {spec}")


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"--mean/--std need {channels} value(s), one per channel; got {len(mean)} and {len(std)}")
    if not all(np.isfinite(v) for v in mean):
        raise UserError(f"--mean {','.join(map(str, mean))}: give finite numbers")
    if not all(np.isfinite(v) and v > 0 for v in std):
        raise UserError(f"--std {','.join(map(str, std))}: every value must be a positive finite number (it divides)")
