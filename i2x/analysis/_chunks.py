"""Chunked reading of sample-major arrays (numpy or zarr), so memory stays flat in the number of samples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: Default number of array elements read per chunk (~32 MiB of float32).
DEFAULT_CHUNK_ELEMENTS = 8_000_000


def chunk_len(array: Any, axis: int, chunk: int | None = None) -> int:
    """Samples per read along `axis`: `chunk` if given, else about DEFAULT_CHUNK_ELEMENTS elements.

    When the array is chunked (zarr), the length is rounded to a whole number of its chunks
    along `axis`, so every read is chunk-aligned.
    """
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        return int(chunk)
    shape = tuple(array.shape)
    per_sample = max(1, int(np.prod(shape)) // max(1, shape[axis]))
    length = max(1, DEFAULT_CHUNK_ELEMENTS // per_sample)
    stored = getattr(array, "chunks", None)
    if isinstance(stored, tuple) and len(stored) == len(shape) and isinstance(stored[axis], int):
        length = max(stored[axis], length // stored[axis] * stored[axis])
    return length


def sample_slices(n: int, length: int) -> Iterator[slice]:
    """Consecutive slices [start, start+length) covering range(n)."""
    for start in range(0, n, length):
        yield slice(start, min(start + length, n))
