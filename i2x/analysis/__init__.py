"""Analysis stages as numpy-in, numpy-out estimators: prototypes, concepts, intensity, groups, mapping, structure,
cartography.

They hold no store I/O; inputs may be numpy or zarr arrays (read in chunks of samples).
"""

from i2x.analysis.cartography import REGIONS, cartography, cartography_regions, cartography_summary
from i2x.analysis.concepts import ConceptGrouping
from i2x.analysis.groups import ConfidenceGroups
from i2x.analysis.intensity import intensity, presence_share
from i2x.analysis.mapping import RidgeMapping
from i2x.analysis.prototypes import Prototypes, choose_k
from i2x.analysis.structure import Structure, accuracy, confusion, top_confused_pairs

__all__ = [
    "REGIONS",
    "ConceptGrouping",
    "ConfidenceGroups",
    "Prototypes",
    "RidgeMapping",
    "Structure",
    "accuracy",
    "cartography",
    "cartography_regions",
    "cartography_summary",
    "choose_k",
    "confusion",
    "intensity",
    "presence_share",
    "top_confused_pairs",
]
