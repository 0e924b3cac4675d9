"""Minimal evidence masks: `study` the stage, `selection` which samples and checkpoints it explains.

The modules import each other, never this package."""

from i2x.stages.evidence.study import EvidenceConfig, evidence

__all__ = ["EvidenceConfig", "evidence"]
