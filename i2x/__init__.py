"""i2x: explain how an image classifier's reasoning forms during training.

The public API mirrors the CLI (``i2x.run``, ``i2x.extract``, ``i2x.analyze``, ``i2x.report``,
``i2x.finetune``, ``i2x.faithfulness``, ``i2x.drift``, ``i2x.evidence``, ...) and re-exports the analysis stages as
scikit-learn-style estimators (``i2x.Prototypes``, ``i2x.ConfidenceGroups``, ``i2x.RidgeMapping``,
``i2x.Structure``) and the CAM methods. Internals live in the subpackages (see docs/ARCHITECTURE.md).

Names load on first use (PEP 562), so ``import i2x`` is instant and a worker process that unpickles
one i2x function (the parallel HDBSCAN steps) does not load torch. No subpackage shares its name
with an API function, so importing a subpackage never hides one.
"""

from __future__ import annotations

import importlib
from typing import Any

from i2x.version import __version__

#: The API (:mod:`i2x.api`): one function per command and the settings they take; the one list of public names,
#: checked against ``i2x.api`` by tests/test_package.py.
API = (
    "AnalyzeConfig", "BenchmarkConfig", "DemoConfig", "DriftConfig", "EvidenceConfig", "FaithfulnessConfig",
    "FinetuneConfig", "FinetuneResult", "RelianceConfig", "RunConfig", "RunResult", "TrainConfig", "UserError",
    "analyze", "benchmark", "compare", "compare_drift", "compare_models", "demo", "doctor", "drift", "evidence",
    "extract", "faithfulness", "finetune", "format_table", "launch", "load_summary", "mark_report", "reliance",
    "report", "revise", "run", "train", "RevisionConfig",
)

#: Public name -> the module that defines it.
_PUBLIC = {
    **{name: "i2x.api" for name in API},
    **{name: "i2x.analysis" for name in (
        "ConfidenceGroups", "Prototypes", "RidgeMapping", "Structure", "cartography", "intensity")},
    **{name: "i2x.attribution" for name in ("Attributor", "GradCAM", "GradCAMPlusPlus", "LayerCAM")},
    "Store": "i2x.io.store",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'i2x' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
