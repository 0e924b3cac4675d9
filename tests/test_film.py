"""The film strips' answer maps are computed by a stage (i2x.stages.film) before the page is built: equal to
pytorch-grad-cam's map of the class the final model answers, stored once (a rerun does nothing), and the report
package never rebuilds a model."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import i2x
from i2x.attribution import display_maps, get_layer
from i2x.io.store import Store
from i2x.stages.context import open_context
from i2x.stages.film import final_index, prepare_film

from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)


def test_answer_maps_are_the_map_of_the_class_the_model_answers(tiny_run):
    store = Store.open(tiny_run)
    film = store.attrs["film"]
    rows, cols = store.read("film/rows"), store.read("film/columns")
    final = final_index(store)
    probs = np.asarray(store.array("probs")[final])[rows]
    wrong = np.flatnonzero(probs.argmax(axis=1) != store.read("labels")[rows])
    assert wrong.size >= 2, "the tiny run must misclassify some film samples, or the test checks nothing"
    assert film["answered"] == wrong.tolist() and film["answer_class"] == probs.argmax(axis=1)[wrong].tolist()
    answer = store.read("film/answer/gradcam")
    assert answer.shape == (cols.size, wrong.size, *store.grid) and cols[-1] == final
    ctx = open_context(store, final, device="cpu")
    model = ctx.model.eval()
    x = torch.stack([ctx.dataset[int(i)][0] for i in rows[wrong]])
    with GradCAM(model=model, target_layers=[get_layer(model, store.attrs["layer"])]) as cam:
        package = cam(x, targets=[ClassifierOutputTarget(int(c)) for c in film["answer_class"]])
    ours = display_maps(torch.from_numpy(answer[-1]), size=tuple(x.shape[-2:]))
    torch.testing.assert_close(ours, torch.from_numpy(package), atol=1e-4, rtol=0)
    stored = np.asarray(store.cam("gradcam").get_orthogonal_selection((final, rows[wrong])))
    assert not np.allclose(stored, answer[-1]), "the answer maps must explain another class than the stored ones"


def test_a_second_preparation_changes_nothing(tiny_run):
    before = Store.open(tiny_run).read("film/answer/gradcam")
    record = prepare_film(tiny_run)
    assert record == Store.open(tiny_run).attrs["film"]
    np.testing.assert_array_equal(Store.open(tiny_run).read("film/answer/gradcam"), before)


def test_the_report_package_never_rebuilds_a_model():
    """The page reads results: no module of i2x.reporting imports the way back to a model or an attributor."""
    forbidden = {"open_context", "build_context", "Attributor", "cams_for_targets", "build_model"}
    found = []
    for path in sorted((Path(i2x.__file__).parent / "reporting").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.name}: {a.name}" for a in node.names if a.name in forbidden]
    assert not found, found
