"""Revision of a found shortcut and its re-evaluation: `config` settings, `concept` the artefact's mask from the
suspect concept, `measure` clean and attacked accuracy, gap, flip rate and CAM share, `methods` the fixes and their
controls, `results` statistics over seeds, paired differences and the table, `study` the study.

The modules import each other, never this package."""

from i2x.stages.revision.config import RevisionConfig
from i2x.stages.revision.results import format_table
from i2x.stages.revision.study import revise

__all__ = ["RevisionConfig", "format_table", "revise"]
