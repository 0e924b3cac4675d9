"""Inputs of the attribution benchmark: its settings, the checkpoints and methods it covers and the
regions of interest (ROI) that leakage is measured against."""

from __future__ import annotations

from dataclasses import dataclass


from i2x.attribution import INTERVENTIONS, METHODS
from i2x.errors import UserError
from i2x.io.samples.roi import FORMATS as ROI_FORMATS
from i2x.io.store import Store
from i2x.metrics import leakage as lk
from i2x.settings import device_option, name_list, option
from i2x.stages.context import ModelAccess

#: Methods the benchmark adds to the stored CAM methods: the intervention methods (occlusion, dea).
EXTRA_METHODS = tuple(INTERVENTIONS)


@dataclass
class BenchmarkConfig(ModelAccess):
    """Settings of ``i2x benchmark``."""

    checkpoints: tuple[str, ...] = option(("first", "middle", "final"), "checkpoints to benchmark: first, middle, final, "
                                          "all or names, comma-separated", parse=name_list, metavar="A,B")
    every: int | None = option(None, "benchmark every N-th usable checkpoint (and the final one) instead", low=1,
                               metavar="N")
    methods: tuple[str, ...] | None = option(None, "methods: CAM methods, occlusion, dea (default: the stored CAM "
                                             "methods plus occlusion and dea)", parse=name_list, metavar="A,B")
    samples: int = option(256, "samples drawn at random from the store (maps, runtime, leakage, checkpoint "
                               "similarity)", low=1)
    detail_samples: int = option(32, "of those, samples for ROAD faithfulness, robustness and randomisation", low=1)
    percentiles: tuple[float, ...] = option((10, 30, 50, 70, 90),
                                            "ROAD percentiles p: remove the fraction 1 - p/100 of the map",
                                            parse=lambda s: tuple(float(v) for v in s.split(",")), low=0, high=100,
                                            low_open=True, metavar="P,Q")
    fractions: tuple[float, ...] = option((0.2, 0.5), "report the MoRF confidence drop at these removed fractions",
                                          parse=lambda s: tuple(float(v) for v in s.split(",")), low=0, high=1,
                                          metavar="F,G")
    noise: float = option(0.01, "std of ROAD's imputation noise", low=0)
    random_draws: int = option(3, "random removal orders for the faithfulness baseline", low=1)
    roi: str | None = option(None, f"region of interest for leakage: {ROI_FORMATS}", metavar="SPEC")
    pointing_tolerance: float = option(lk.POINTING_TOLERANCE, "pointing-game tolerance in input pixels", low=0)
    top_share: float = option(0.2, "share of cells in the top-k IoU of the robustness test", low=0, high=1,
                              low_open=True)
    sensitivity_samples: int = option(10, "draws of max-sensitivity (captum's default)", low=1)
    sensitivity_radius: float = option(0.02, "max-sensitivity radius, uniform noise in normalised input units",
                                       low=0)
    seed: int = option(0, "seed of the sample, random orders and noise")
    batch_size: int = option(128, "images per forward batch (on a CPU larger batches are slower: they outgrow "
                                  "the cache)", low=1)
    device: str = device_option()
    progress: bool = option(True, "show progress", cli=False)




def resolve_methods(cfg: BenchmarkConfig, store: Store) -> list[str]:
    """The methods to benchmark: the chosen ones, or the stored CAM methods plus occlusion and DEA."""
    methods = list(cfg.methods) if cfg.methods else [m for m in store.methods if m in METHODS] + list(EXTRA_METHODS)
    unknown = [m for m in methods if m not in METHODS and m not in EXTRA_METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {','.join(unknown) or '(none)'}: choose among "
                        f"{', '.join([*METHODS, *EXTRA_METHODS])}")
    return methods
