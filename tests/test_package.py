"""The package surface: every public name resolves, API names stay the API functions after their
submodules load, and ``import i2x`` itself loads nothing heavy (worker processes rely on that)."""

from __future__ import annotations

import subprocess
import sys
import types

import i2x
from i2x import api


def test_every_public_name_resolves_and_api_names_are_the_api_functions():
    for name in i2x.__all__:
        assert getattr(i2x, name) is not None
        assert name in dir(i2x)
    for name in ("extract", "analyze", "report", "finetune", "reliance", "faithfulness", "drift", "train", "run"):
        assert getattr(i2x, name) is getattr(api, name) and callable(getattr(i2x, name))


def test_one_list_of_api_names_matches_the_api_module():
    """``i2x.API`` is the one public list: every name in it is in ``i2x.api`` and ``import i2x`` gives the same
    object, and every function or class ``i2x.api`` defines is in it."""
    for name in i2x.API:
        assert getattr(i2x, name) is getattr(api, name), name
    defined = {name for name, value in vars(api).items() if not name.startswith("_")
               and isinstance(value, type | types.FunctionType) and value.__module__ == "i2x.api"}
    assert defined <= set(i2x.API), f"define these in i2x.API or make them private: {defined - set(i2x.API)}"
    assert not hasattr(api, "__all__"), "i2x.API is the one list of public names"


def test_the_commands_take_the_analysis_directory_first():
    """One argument order: the analysis directory, then the settings."""
    import inspect

    for name in ("extract", "run", "analyze", "report", "finetune", "reliance", "faithfulness", "drift", "evidence",
                 "benchmark"):
        first = next(iter(inspect.signature(getattr(api, name)).parameters))
        assert first in ("out", "out_dir"), f"{name}({first}, ...)"


def test_api_names_survive_their_submodules_being_imported():
    import i2x.reporting.build  # noqa: F401  (binds the subpackage as an attribute of i2x)
    from i2x import finetune as finetune_function
    from i2x.reporting import build

    assert isinstance(build, types.ModuleType)
    assert i2x.report is api.report and finetune_function is api.finetune
    assert isinstance(sys.modules["i2x.reporting"], types.ModuleType)


def test_import_loads_neither_torch_nor_the_analysis():
    code = "import sys, i2x; i2x.__version__; print(sorted(m for m in ('torch', 'hdbscan', 'sklearn', 'zarr') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
