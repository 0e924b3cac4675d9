"""The package's shape: imports only go down the layers of docs/ARCHITECTURE.md, and a new CAM method is one
small class plus one registration that then appears in the CLI, the store and the report."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import i2x
from i2x.attribution import CamMethod, get_layer, register, unregister
from i2x.io.store import Store
from i2x.io.workdir import load_summary
from i2x.stages.context import open_context

from fixtures_pipeline import tiny_run  # noqa: E402,F401  (pytest fixture)

ROOT = Path(i2x.__file__).parent

#: Layer of each top-level part of the package; a module may import its own part and lower layers only.
LAYERS = {
    "errors": 0, "version": 0, "settings": 0,  # the base: may import each other
    "io": 1,
    "metrics": 2, "planted": 2,
    "attribution": 3, "analysis": 3,
    "stages": 4,
    "reporting": 5,
    "api": 6,
    "cli": 7,
    "__main__": 8, "__init__": 8,
}


def _part(module: str) -> str:
    """``i2x.io.store`` -> ``io``; ``i2x`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts) if parts != ["i2x", "__init__"] else "i2x"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every i2x import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "i2x"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "i2x":
                continue
            for alias in node.names:  # `from i2x import api` imports the module i2x.api
                sub = ROOT.parent.joinpath(*module.split("."), alias.name)
                is_module = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                found.append((node.lineno, f"{module}.{alias.name}" if is_module else module))
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS and docs/ARCHITECTURE.md: {parts - set(LAYERS)}"


def test_imports_only_go_down():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _part(_module_name(path))
        for line, module in _imports(path):
            there = _part(module)
            if there != here and LAYERS[there] >= LAYERS[here] and LAYERS[here] > 0:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} imports {module} ({here} may not import {there})")
    assert not upward, "\n".join(dict.fromkeys(upward))


def test_the_import_direction_check_catches_an_upward_import(tmp_path):
    """The check itself can fail: an io module importing a stage is reported."""
    fake = ROOT / "io" / "_probe_upward.py"
    fake.write_text("from i2x.stages.context import RunConfig\n")
    try:
        with pytest.raises(AssertionError, match="io may not import stages"):
            test_imports_only_go_down()
    finally:
        fake.unlink()


def _import_graph() -> dict[str, set[str]]:
    """Module -> the i2x modules it imports, at any depth of the file (type-only and function-level imports too)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for _, m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    """No module reaches itself through imports, counting imports made only for type hints or inside functions: a
    stage's settings live in its family's config module, which imports none of its siblings."""
    circles = _circles(_import_graph())
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_catches_a_type_only_circle():
    fake = ROOT / "stages" / "reliance" / "_probe_circle.py"
    fake.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from i2x.stages.reliance import reliance\n")
    init = ROOT / "stages" / "reliance" / "__init__.py"
    original = init.read_text()
    init.write_text(original + "from i2x.stages.reliance import _probe_circle  # noqa: F401\n")
    try:
        with pytest.raises(AssertionError, match="_probe_circle"):
            test_no_import_circles()
    finally:
        init.write_text(original)
        fake.unlink()


def test_no_folder_is_crowded():
    """A family of modules gets its own subpackage: no folder of the package holds more than 16 modules."""
    crowded = {str(d.relative_to(ROOT.parent)): n for d in ROOT.rglob("*") if d.is_dir() and d.name != "__pycache__"
               for n in [len([p for p in d.glob("*.py") if p.name != "__init__.py"])] if n > 16}
    assert not crowded, f"folders with more than 16 modules: {crowded}"


# ---- a new CAM method is one small class plus one registration ------------------------------------------
class XGradCAM(CamMethod):
    """XGrad-CAM (Fu et al., 2020): channel weight = sum_ij (A_ij / sum_ab A_ab) g_ij. Not shipped by i2x."""

    name = "xgradcam"
    summary = "XGrad-CAM: gradients weighted by the normalised activations"

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=(2, 3), keepdim=True) + 1e-7
        return (activations / total * grads).sum(dim=(2, 3), keepdim=True)


@pytest.fixture()
def xgradcam():
    register(XGradCAM)
    try:
        yield XGradCAM
    finally:
        unregister(XGradCAM.name)


def test_a_registered_cam_method_reaches_the_cli_the_store_and_the_report(xgradcam, tiny_run, tmp_path, capsys):
    from i2x.cli import main

    config = Store.open(tiny_run).config
    out = tmp_path / "x"
    argv = ["run", config["checkpoints"], "--data", config["data"], "--input-size", "32", "--limit", "64",
            "--out", str(out), "--methods", "gradcam,xgradcam", "--method", "xgradcam", "--k", "4",
            "--min-flips", "1", "--no-reliance"]
    assert main(argv) == 0, capsys.readouterr().err
    store = Store.open(out)
    assert store.methods == ["gradcam", "xgradcam"]
    assert load_summary(out)["method"] == "xgradcam"
    assert "xgradcam" in (out / "report.html").read_text()

    # the stored maps follow the formula, computed here with plain autograd at the target layer
    ctx = open_context(store, len(store.checkpoints) - 1, "cpu", 64, False)
    images = torch.stack([ctx.dataset[i][0] for i in range(8)])
    labels = torch.as_tensor(store.read("labels")[:8])
    seen = {}
    handle = get_layer(ctx.model, store.attrs["layer"]).register_forward_hook(lambda _m, _i, o: seen.update(a=o))
    try:
        logits = ctx.model(images)
    finally:
        handle.remove()
    a = seen["a"]
    g, = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), a)
    w = (a / (a.sum(dim=(2, 3), keepdim=True) + 1e-7) * g).sum(dim=(2, 3), keepdim=True)
    expected = (w * a).sum(1).clamp(min=0).detach().numpy()
    stored = store.cam("xgradcam")[len(store.checkpoints) - 1, :8]
    np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-5 * float(np.abs(expected).max()))
