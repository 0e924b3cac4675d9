"""The walkthrough notebook runs top to bottom, and its jupytext .py twin says the same thing."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_notebook_and_its_py_twin_hold_the_same_cells():
    jupytext = pytest.importorskip("jupytext")
    ipynb = jupytext.read(NOTEBOOKS / "walkthrough.ipynb")
    py = jupytext.read(NOTEBOOKS / "walkthrough.py")
    assert [c.source for c in ipynb.cells] == [c.source for c in py.cells]


@pytest.mark.slow
def test_walkthrough_notebook_runs_without_errors(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOKS / "walkthrough.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "test accuracy" in text and "report:" in text
    charts = [o for c in notebook.cells for o in c.get("outputs", [])
              if "application/vnd.vegalite.v5+json" in o.get("data", {}) or "text/html" in o.get("data", {})]
    assert len(charts) >= 2, "the altair charts should render inline"
