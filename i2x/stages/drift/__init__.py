"""Drift of the maps between checkpoints: `study` one run, `runs` several runs side by side.

The modules import each other, never this package."""

from i2x.stages.drift.study import DriftConfig, drift

__all__ = ["DriftConfig", "drift"]
