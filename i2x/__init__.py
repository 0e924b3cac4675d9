"""i2x: explain how an image classifier's reasoning forms during training.

The public API mirrors the CLI (``i2x.run``, ``i2x.extract``, ``i2x.analyze``, ``i2x.report``,
``i2x.finetune``, ...) and re-exports the analysis stages as scikit-learn-style estimators
(``i2x.Prototypes``, ``i2x.ConfidenceGroups``, ``i2x.RidgeMapping``, ``i2x.Structure``).
Names load lazily, so ``import i2x`` and ``i2x --help`` stay quick.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "i2x.api", "extract": "i2x.api", "analyze": "i2x.api", "report": "i2x.api", "run": "i2x.api",
    "demo": "i2x.api", "doctor": "i2x.api", "finetune": "i2x.api", "faithfulness": "i2x.api", "drift": "i2x.api",
    "reliance": "i2x.api", "load_summary": "i2x.api", "RunConfig": "i2x.api", "AnalyzeConfig": "i2x.api",
    "RunResult": "i2x.api",
    "Prototypes": "i2x.analysis", "ConfidenceGroups": "i2x.analysis", "RidgeMapping": "i2x.analysis",
    "Structure": "i2x.analysis", "intensity": "i2x.analysis", "cartography": "i2x.analysis",
    "Store": "i2x.store", "UserError": "i2x.errors", "Attributor": "i2x.attribution",
    "GradCAM": "i2x.cams", "GradCAMPlusPlus": "i2x.cams", "LayerCAM": "i2x.cams",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'i2x' has no attribute {name!r}")
