"""Segmentation data: images with a class mask per pixel, and the (image, class) rows i2x explains.

A segmentation :class:`ImageData` (``task="segmentation"``) yields ``(image [C, H, W], mask [H, W])``,
the mask holding class indices 0..M-1 with class 0 the background. It comes from

* ``segfolder:PATH``: ``PATH/{train,test}/images/NAME.png`` with the mask ``PATH/{train,test}/masks/NAME.png``
  (same name, any image suffix; one 8-bit class index per pixel), class names from ``PATH/classes.txt``;
* ``npz:PATH`` holding mask keys: ``x_train``/``mask_train``/``x_test``/``mask_test`` (or ``train_images``/
  ``train_masks``/...), class names from a ``class_names`` array or a ``classes.txt`` beside the file;
* a factory (``planted:shapes``).

A class name file holds one name per line in index order (the background first). Masks are resized with
nearest-neighbour interpolation; a mask value beyond the class names, or a mask whose size differs from its
image's, is a UserError naming the sample. i2x explains a segmentation model one *row* at a time: a row is an
image and a foreground class present in its mask (:class:`RegionRows`), the row's label is that class.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from i2x.errors import UserError
from i2x.io.datasets import SEGMENTATION, DataOptions, ImageData, adapt_channels, check_finite, check_stats

CLASS_FILE = "classes.txt"


def read_class_names(path: Path, spec: str) -> list[str]:
    """Class names from a text file, one per line in index order (blank lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--data {spec}: cannot read {path} as UTF-8 text ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def mask_data(spec: str, arrays: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str],
              default_size: int | None, opts: DataOptions) -> ImageData:
    """A segmentation ImageData from images ``[N, H, W(, C)]`` (uint8 or floats in [0, 1]) and masks ``[N, H, W]``."""
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (x, m) in arrays.items():
        x, m = np.asarray(x), np.asarray(m)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.dtype.kind not in "biuf":
            raise UserError(f"--data {spec}: images of the {split} split have shape {x.shape} and dtype {x.dtype}; "
                            "expected numbers N,H,W or N,H,W,C")
        if m.dtype.kind not in "biu":
            raise UserError(f"--data {spec}: masks of the {split} split are of dtype {m.dtype}; masks hold integer "
                            "class indices per pixel")
        if m.shape != x.shape[:3]:
            raise UserError(f"--data {spec}: the {split} split has images {x.shape[:3]} but masks {m.shape}; "
                            "give one mask of the image's size per image")
        scale = 255.0 if x.dtype == np.uint8 or (x.size and x.max() > 1.5) else 1.0
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / scale).permute(0, 3, 1, 2)
        check_finite(t, spec, split)
        prepared[split] = (t, torch.from_numpy(m.astype(np.int64)))
    if "train" not in prepared or not len(prepared["train"][0]):
        raise UserError(f"--data {spec}: the train split has no images")
    names = class_names or [str(i) for i in range(int(prepared["train"][1].max()) + 1)]
    for split, (_, m) in prepared.items():
        beyond = torch.nonzero((m >= len(names)).flatten(1).any(1) | (m < 0).flatten(1).any(1))
        if len(beyond):
            i = int(beyond[0, 0])
            if (m[i] < 0).any():  # said "holds class 1" (its largest value) for a mask holding -1
                raise UserError(f"--data {spec}: the {split} split's mask {i} holds the value {int(m[i].min())}; mask "
                                "values are class indices 0..M-1 (0 the background): fix that mask")
            raise UserError(f"--data {spec}: the {split} split's mask {i} holds class {int(m[i].max())}, beyond the "
                            f"{len(names)} class names; fix that mask or the class names")
    if len(torch.unique(prepared["train"][1])) < 2:
        raise UserError(f"--data {spec}: the training masks hold a single class; a segmentation set needs the "
                        "background and at least one class")
    channels = opts.channels or prepared["train"][0].shape[1]
    side = opts.input_size or default_size
    size = (side, side) if side else tuple(prepared["train"][0].shape[-2:])
    out = {}
    for split, (x, m) in prepared.items():
        x = adapt_channels(x, channels, spec)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            m = F.interpolate(m[:, None].float(), size=size, mode="nearest")[:, 0].long()
        out[split] = (x, m)
    train_x = out["train"][0]
    mean = tuple(opts.mean) if opts.mean else tuple(train_x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(opts.std) if opts.std else tuple(train_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    check_stats(mean, std, channels)
    mu, sd = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    splits: dict[str, Dataset] = {}
    for split, (x, m) in out.items():
        normalised = (x - mu) / sd
        check_finite(normalised, spec, split, " after normalisation")
        splits[split] = TensorDataset(normalised, m)
    return ImageData(spec, splits, names, channels, size, mean, std, task=SEGMENTATION)  # type: ignore[arg-type]


def npz_masks(spec: str, npz: np.lib.npyio.NpzFile, path: Path, opts: DataOptions) -> ImageData | None:
    """The segmentation set of an npz archive with mask keys, or None when it holds none."""
    keys = set(npz.files)
    for layout in ({"train": ("x_train", "mask_train"), "test": ("x_test", "mask_test")},
                   {"train": ("train_images", "train_masks"), "test": ("test_images", "test_masks")}):
        if all(xk in keys and mk in keys for xk, mk in layout.values()):
            arrays = {s: (npz[xk], npz[mk]) for s, (xk, mk) in layout.items()}
            names = [str(n) for n in npz["class_names"]] if "class_names" in keys else \
                read_class_names(path.parent / CLASS_FILE, spec) if (path.parent / CLASS_FILE).is_file() else []
            return mask_data(spec, arrays, names, None, opts)
    return None


def segfolder(path: str, opts: DataOptions) -> ImageData:
    """``PATH/{train,test}/images/*`` with masks of the same name in ``PATH/{train,test}/masks/``."""
    from PIL import Image

    spec, root = f"segfolder:{path}", Path(path)
    if not (root / "train" / "images").is_dir():
        raise UserError(f"--data {spec}: expected {root / 'train' / 'images'} with masks in {root / 'train' / 'masks'}")
    channels = 1 if opts.channels == 1 else 3
    arrays = {}
    for split in ("train", "test"):
        folder = root / split
        if not (folder / "images").is_dir():
            continue
        masks = {p.stem: p for p in (folder / "masks").glob("*") if p.is_file()} if (folder / "masks").is_dir() else {}
        images, labels = [], []
        for image in sorted(p for p in (folder / "images").glob("*") if p.is_file()):
            if image.stem not in masks:
                raise UserError(f"--data {spec}: {image} has no mask {folder / 'masks' / image.stem}.*; every image "
                                "needs a mask of the same name")
            try:
                images.append(np.asarray(Image.open(image).convert("L" if channels == 1 else "RGB")))
                labels.append(np.asarray(Image.open(masks[image.stem])))
            except OSError as exc:
                raise UserError(f"--data {spec}: {image} or its mask is not a readable image ({exc})") from None
            if labels[-1].shape != images[-1].shape[:2]:
                raise UserError(f"--data {spec}: the mask of {image} is {labels[-1].shape}, the image "
                                f"{images[-1].shape[:2]}; give masks of the image's size (one class index per pixel)")
        arrays[split] = (images, labels)
    arrays.setdefault("test", arrays["train"])
    sizes = {im.shape[:2] for ims, _ in arrays.values() for im in ims}
    if len(sizes) > 1 and not opts.input_size:
        raise UserError(f"--data {spec}: the images differ in size; give --input-size PX")
    stacked = {s: (np.stack(ims), np.stack(ms)) for s, (ims, ms) in arrays.items() if ims} if len(sizes) == 1 else \
        {s: _resized(ims, ms, opts.input_size) for s, (ims, ms) in arrays.items() if ims}
    names = read_class_names(root / CLASS_FILE, spec) if (root / CLASS_FILE).is_file() else []
    return mask_data(spec, stacked, names, None, opts)


def _resized(images: list[np.ndarray], masks: list[np.ndarray], side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images of different sizes brought to side x side (bilinear images, nearest masks)."""
    from PIL import Image

    assert side is not None
    return (np.stack([np.asarray(Image.fromarray(i).resize((side, side), Image.BILINEAR)) for i in images]),
            np.stack([np.asarray(Image.fromarray(m).resize((side, side), Image.NEAREST)) for m in masks]))


class RegionRows(Dataset):
    """The rows of a segmentation split: ``(image, class)`` for every image and foreground class in its mask.

    ``samples[r]`` is the image index of row r, ``targets[r]`` its class; :meth:`regions` gives the rows'
    ground-truth regions (boolean ``[B, H, W]``).
    """

    def __init__(self, split: TensorDataset, min_pixels: int = 1) -> None:
        self.images, self.masks = split.tensors
        counts = F.one_hot(self.masks.flatten(1), int(self.masks.max()) + 1).sum(1)  # [N, M] pixels per class
        counts[:, 0] = 0  # the background is no target
        sample, cls = torch.nonzero(counts >= min_pixels, as_tuple=True)
        self.samples, self.targets = sample.numpy(), cls.numpy()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, r: int) -> tuple[torch.Tensor, int]:
        return self.images[self.samples[r]], int(self.targets[r])

    def regions(self, rows: np.ndarray | list[int]) -> torch.Tensor:
        """Ground-truth regions ``[B, H, W]`` (bool) of the rows."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.masks[torch.as_tensor(self.samples[rows])] == torch.as_tensor(self.targets[rows])[:, None, None]


def region_rows(data: ImageData) -> ImageData:
    """The same data with each split as :class:`RegionRows` (what extraction and the studies read)."""
    splits = {k: RegionRows(v) for k, v in data.splits.items()}  # type: ignore[arg-type]
    return replace(data, splits=splits)
