"""Extraction: `stage` the classification path (one forward and backward per batch), `regions` the region targets of
segmentation runs, `result` what both return and how outputs are written.

The modules import each other, never this package."""

from i2x.stages.extract.result import ExtractResult
from i2x.stages.extract.stage import extract

__all__ = ["ExtractResult", "extract"]
