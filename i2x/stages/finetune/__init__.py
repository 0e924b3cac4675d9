"""Curated fine-tuning: `config` settings and plan, `study` the study, `curation` which samples the curated set leaves
out, `controls` random and cartography exclusions matched to it, `runs` each run trained, evaluated and reused,
`results` the table, paired differences and verdict.

The modules import each other, never this package."""

from i2x.stages.finetune.config import FinetuneConfig
from i2x.stages.finetune.results import FinetuneResult, format_table
from i2x.stages.finetune.study import finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "format_table"]
