"""i2x: explain how an image classifier's reasoning forms during training.

The public API mirrors the CLI (``i2x.run``, ``i2x.extract``, ``i2x.analyze``, ``i2x.report``,
``i2x.finetune``, ``i2x.faithfulness``, ``i2x.drift``, ...) and re-exports the analysis stages as
scikit-learn-style estimators (``i2x.Prototypes``, ``i2x.ConfidenceGroups``, ``i2x.RidgeMapping``,
``i2x.Structure``). Internals live in the modules; only the names below are the public surface.

Names load on first use, so ``import i2x`` is instant and a worker process that unpickles one i2x
function (the parallel HDBSCAN steps) does not load torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

#: The API functions and classes of :mod:`i2x.api`. Several share their names with the submodules
#: that implement them (``i2x.extract`` is both), and importing a submodule binds it as an attribute
#: of the package, so these names are always looked up in :mod:`i2x.api` (see :class:`_Package`).
_API = frozenset({
    "AnalyzeConfig", "RelianceConfig", "RunConfig", "RunResult", "analyze", "compare_models", "demo", "doctor",
    "drift", "extract", "faithfulness", "finetune", "format_table", "load_summary", "reliance", "report", "run",
    "train",
})
#: Other public names -> the submodule that defines them.
_ELSEWHERE = {
    "ConfidenceGroups": "analysis", "Prototypes": "analysis", "RidgeMapping": "analysis", "Structure": "analysis",
    "cartography": "analysis", "intensity": "analysis", "Attributor": "attribution", "GradCAM": "cams",
    "GradCAMPlusPlus": "cams", "LayerCAM": "cams", "UserError": "errors", "Store": "store",
}

__all__ = ["__version__", *sorted(_API), *_ELSEWHERE]


class _Package(types.ModuleType):
    """The ``i2x`` module: API names resolve to :mod:`i2x.api`, the others load on first access."""

    def __getattribute__(self, name: str) -> Any:
        if name in _API:
            return getattr(importlib.import_module("i2x.api"), name)
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        if name not in _ELSEWHERE:
            raise AttributeError(f"module 'i2x' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"i2x.{_ELSEWHERE[name]}"), name)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(__all__))


sys.modules[__name__].__class__ = _Package
