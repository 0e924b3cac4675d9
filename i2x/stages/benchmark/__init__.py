"""The attribution benchmark: `inputs` settings, checkpoints, methods and ROI files, `study` the loop, `maps` every
method's maps, `faithfulness` ROAD against random orders, `robustness` perturbations, `sanity` randomisation and
similarity, `regions` the benchmark of segmentation runs.

The modules import each other, never this package."""

from i2x.stages.benchmark.inputs import BenchmarkConfig
from i2x.stages.benchmark.study import benchmark

__all__ = ["BenchmarkConfig", "benchmark"]
