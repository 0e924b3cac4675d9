"""The analysis stage (prototypes, intensity, groups, mapping, structure): `config` its settings, `pipeline` the steps
in order, `steps` the steps that write the store's analysis/ group, `summary` summary.json.

The modules import each other, never this package."""

from i2x.stages.analyze.config import AnalyzeConfig
from i2x.stages.analyze.pipeline import AnalyzeResult, analyze

__all__ = ["AnalyzeConfig", "AnalyzeResult", "analyze"]
