"""i2x: explain how an image classifier's reasoning forms during training.

The public API mirrors the CLI (``i2x.run``, ``i2x.extract``, ``i2x.analyze``, ``i2x.report``,
``i2x.finetune``, ``i2x.faithfulness``, ``i2x.drift``, ...) and re-exports the analysis stages as
scikit-learn-style estimators (``i2x.Prototypes``, ``i2x.ConfidenceGroups``, ``i2x.RidgeMapping``,
``i2x.Structure``). Internals live in the modules; only the names below are the public surface.
"""

__version__ = "0.1.0"

# The API functions share names with the modules that implement them (i2x.finetune is both); importing
# the API last binds the package attributes to the functions.
from .analysis import ConfidenceGroups, Prototypes, RidgeMapping, Structure, cartography, intensity  # noqa: E402
from .attribution import Attributor  # noqa: E402
from .cams import GradCAM, GradCAMPlusPlus, LayerCAM  # noqa: E402
from .errors import UserError  # noqa: E402
from .store import Store  # noqa: E402
from .api import (  # noqa: E402
    AnalyzeConfig, RelianceConfig, RunConfig, RunResult, analyze, compare_models, demo, doctor, drift, extract,
    faithfulness, finetune, format_table, load_summary, reliance, report, run, train,
)

__all__ = [
    "__version__", "train", "extract", "analyze", "report", "run", "demo", "doctor", "finetune", "format_table",
    "faithfulness", "drift", "compare_models", "reliance", "RelianceConfig", "load_summary", "RunConfig", "AnalyzeConfig", "RunResult",
    "Prototypes", "ConfidenceGroups", "RidgeMapping", "Structure", "intensity", "cartography", "Store",
    "UserError", "Attributor", "GradCAM", "GradCAMPlusPlus", "LayerCAM",
]
