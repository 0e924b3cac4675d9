"""Regions of interest given per sample (``--roi`` of ``i2x benchmark`` and ``i2x evidence``), read and checked in
one place: masks ``[N, H, W]`` by data set index in a ``.npy`` file or an ``.npz`` (``FILE.npz:KEY``, the key
optional when the file holds one array), any size (resized to the input, nearest), a region where the value is
above 0.5 (True, 1, 255; soft masks in [0, 1] cut at 0.5); or a CSV of boxes ``index,x0,y0,x1,y1`` in input
pixels (x1, y1 exclusive). Object arrays are never unpickled; NaN, negative values and ROIs that hold no region
for any chosen sample are refused (they made leakage silently undefined)."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from i2x.errors import UserError

FORMATS = ("FILE.npy or FILE.npz[:KEY] (masks [N, H, W] by data set index, a region where the value is above 0.5) "
           "or FILE.csv (index,x0,y0,x1,y1 boxes in input pixels, x1/y1 exclusive)")
_NPY, _ZIP = b"\x93NUMPY", b"PK\x03\x04"
CHUNK = 256  # masks resized at a time


def read_roi(spec: str, index: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean ROI masks ``[len(index), H, W]`` at the input size ``size`` for the data set indices ``index``."""
    index = np.asarray(index, dtype=np.int64)
    if spec.lower().endswith(".csv"):
        roi = _boxes(spec, index, size)
    else:
        masks = _masks(spec)
        if len(masks) <= int(index.max(initial=0)):
            raise UserError(f"--roi {spec}: {len(masks)} masks, but the samples reach data set index "
                            f"{int(index.max())}; give one mask per data set sample (masks [N, H, W] by index)")
        roi = np.zeros((len(index), *size), dtype=bool)
        for lo in range(0, len(index), CHUNK):  # chunk by chunk: float32 copies of every mask would not fit
            part = torch.from_numpy(masks[index[lo:lo + CHUNK]].astype(np.float32))[:, None]
            roi[lo:lo + CHUNK] = F.interpolate(part, size=size, mode="nearest")[:, 0].numpy() > 0.5
    if roi.size and not roi.any():
        raise UserError(f"--roi {spec}: no region (no value above 0.5) for any of the {len(index)} samples; leakage "
                        "would be undefined for all of them")
    return roi


def _masks(spec: str) -> np.ndarray:
    """The ``[N, H, W]`` array of a .npy or .npz spec, checked: numbers or booleans, finite, not negative."""
    path, key = spec, None
    if ".npz:" in spec.lower():
        path, key = spec.rsplit(":", 1)
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--roi {spec}: no file {path}; give {FORMATS}")
    with open(file, "rb") as fh:
        head = fh.read(6)
    try:
        if head.startswith(_ZIP):
            with np.load(file, allow_pickle=False) as z:
                if key is None and len(z.files) != 1:
                    raise UserError(f"--roi {spec}: name the array (FILE.npz:KEY); keys: {', '.join(z.files)}")
                key = key if key is not None else z.files[0]
                if key not in z.files:
                    raise UserError(f"--roi {spec}: {path} has no key {key!r}; keys: {', '.join(z.files)}")
                masks = z[key]
        elif head == _NPY:
            masks = np.load(file, allow_pickle=False)
        else:
            raise UserError(f"--roi {spec}: not a NumPy .npy or .npz file (nor a .csv); give {FORMATS}")
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"--roi {spec}: holds Python objects (an object array), which i2x does not unpickle; save "
                            "the masks as a boolean or numeric array [N, H, W]") from None
        raise UserError(f"--roi {spec}: unreadable ({exc}); give {FORMATS}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"--roi {spec}: unreadable, truncated or corrupt ({exc})") from None
    if masks.dtype.kind not in "biuf":
        raise UserError(f"--roi {spec}: values of type {masks.dtype}; the masks must be boolean or numeric")
    if masks.ndim != 3 or 0 in masks.shape:
        raise UserError(f"--roi {spec}: shape {masks.shape}; need masks [N, H, W], one region per data set sample")
    if masks.dtype.kind == "f" and not np.isfinite(masks).all():
        raise UserError(f"--roi {spec}: holds NaN or infinite values; a mask is 1 (or True) inside the region and "
                        "0 outside")
    if masks.dtype.kind in "if" and (masks < 0).any():
        raise UserError(f"--roi {spec}: holds negative values; a mask is 1 (or True) inside the region and 0 outside")
    return masks


def _boxes(spec: str, index: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks from a CSV of boxes ``index,x0,y0,x1,y1`` in input pixels."""
    if not Path(spec).is_file():
        raise UserError(f"--roi {spec}: no such file; give {FORMATS}")
    out = np.zeros((len(index), *size), dtype=bool)
    where = {int(i): k for k, i in enumerate(index)}
    try:
        with open(spec, newline="") as f:
            for row in csv.DictReader(f):
                i, x0, y0, x1, y1 = (int(float(row[k])) for k in ("index", "x0", "y0", "x1", "y1"))
                if i in where:
                    out[where[i], max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    except (KeyError, ValueError, TypeError, OverflowError):
        raise UserError(f"--roi {spec}: each row needs finite numbers index,x0,y0,x1,y1 (a header row names them)") \
            from None
    except UnicodeDecodeError:
        raise UserError(f"--roi {spec}: not a text CSV file; give {FORMATS}") from None
    return out
