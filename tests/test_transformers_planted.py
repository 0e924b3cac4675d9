"""A planted corner marker on a tiny vision transformer is found by the reliance study, as for the CNNs.

The fast tests check the token footprint: a token's input field, evened out over its patch
(:func:`i2x.attribution.tokens.patch_mean`), is its own patch. Without that, the field's core inside a
patch is the patch embedding's largest kernel weights (3-5 of 16 pixels), and pasting the marker's
footprint carries a speckle of the marker, not the marker. The slow tests train
``benchmarks/planted_vit.py``'s tiny ViT on :mod:`i2x.planted.synthetic`'s textured two-class sets (an L
marker over 5 cells of the 7x7 token grid, on 90% of class 1 and 10% of class 0), prove that it uses
the marker, run ``i2x run`` and read the verdict; the clean twin must get none. Detection over seeds
is measured by the benchmark.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from i2x import api
from i2x.attribution import get_layer
from i2x.attribution.receptive_field import cell_fields, field_footprint
from i2x.attribution.tokens import Layout, patch_mean
from i2x.planted import synthetic
from i2x.io.store import Store
from i2x.stages.context import build_context
from i2x.stages.config import RunConfig

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "planted_vit.py"
_spec = importlib.util.spec_from_file_location("planted_vit", BENCHMARK)
planted_vit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted_vit)  # type: ignore[union-attr]

LAYER = "encoder.layers.encoder_layer_1"  # the last block: i2x's default layer is its input
LAYOUT = Layout("tokens", 1, (7, 7))


def test_patch_mean_replaces_each_value_by_its_patch_mean():
    fields = torch.rand(3, 3, 7, 7)
    pooled = patch_mean(fields)
    # a 7-pixel side cut into 3 patches: rows 0-2, 3-4, 5-6 (pixel y in patch y * 3 // 7)
    torch.testing.assert_close(pooled[1, 2, 0, 5], fields[1, 2, :3, 5:].mean())
    torch.testing.assert_close(pooled[1, 2, 4, 3], fields[1, 2, 3:5, 3:5].mean())
    assert torch.equal(pooled[1, 2, :3, 5:], pooled[1, 2, 0, 5].expand(3, 2))
    torch.testing.assert_close(pooled.sum(dim=(2, 3)), fields.sum(dim=(2, 3)))   # the mass stays in its patch
    torch.testing.assert_close(patch_mean(pooled), pooled)
    batch = fields.reshape(9, 7, 7)                                 # per-image saliency [B, H, W] on a 3x3 grid
    torch.testing.assert_close(patch_mean(batch, (3, 3)), pooled.reshape(9, 7, 7))


def _token_fields() -> torch.Tensor:
    torch.manual_seed(0)
    model = planted_vit.tiny_vit(2, 1).eval()
    layer = get_layer(model, LAYER)
    images = torch.randn(4, 1, synthetic.SIZE, synthetic.SIZE)
    return cell_fields(model, layer, images, layout=LAYOUT)


def test_a_token_footprint_is_its_own_patch():
    """Attention spreads a token's field over every patch, thinly: its own patch dominates. Per pixel the core
    would be a speckle (the embedding kernel's largest weights); cell_fields evens it out per patch, so the
    core is exactly the patch."""
    fields = _token_fields()
    cell = torch.zeros(1, 7, 7, dtype=torch.bool)
    cell[0, 2, 1] = True
    own = torch.zeros(synthetic.SIZE, synthetic.SIZE, dtype=torch.bool)
    own[8:12, 4:8] = True
    torch.testing.assert_close(fields, patch_mean(fields))  # cell_fields evens token fields out over patches
    footprint = field_footprint(fields, cell, 0.5)[0]
    assert torch.equal(footprint, own)
    raw = fields[2, 1]
    assert raw[~own].sum() > 0, "attention reaches beyond the patch"
    assert raw[own].sum() > 0.4 * raw.sum() and raw[own].max() > 5 * raw[~own].max()


# ---- slow: the planted marker end to end -----------------------------------------------------------------
def _run(tmp: Path, factory: str, seed: int) -> tuple[Path, dict]:
    """Train the tiny ViT (one thread: the same weights everywhere), then ``i2x run`` (reliance included)."""
    spec = f"{planted_vit.DATA}:{factory}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with synthetic.planted_seed(seed):
            api.train(data=spec, model=planted_vit.MODEL, out=tmp / "ck", epochs=planted_vit.EPOCHS, seed=seed,
                      progress=False)
            api.run(checkpoints=str(tmp / "ck"), data=spec, model=planted_vit.MODEL, out=tmp / "an", progress=False)
    finally:
        torch.set_num_threads(threads)
    return tmp / "an", json.loads((tmp / "an" / "reliance.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("channels", ["grey", "rgb"])
def test_a_planted_corner_marker_on_a_vit_is_found(tmp_path, channels):
    factory = f"marker_corner_{channels}"
    out, result = _run(tmp_path, factory, seed=0)
    assert Store.open(out).attrs["layer_layout"] == LAYOUT.to_dict()
    with synthetic.planted_seed(0):
        ctx = build_context(RunConfig.from_dict(Store.open(out).config))
        ctx.load(ctx.checkpoint("final"))
        effect = synthetic.marker_effect(ctx.model, ctx.data, "corner")
    assert effect["rate_clean"] <= 0.1 and effect["rate_marked"] >= 0.8, f"the model does not use the marker: {effect}"
    info = planted_vit.outcome(out, result, factory, seed=0)
    assert result["shortcut_found"], result["verdict"]
    assert info["first"], f"concept {info['top']} ranks first, the marker is held by {info['marker_concepts']}"
    top = result["concepts"][info["top"]]
    assert top["transplant"]["excess_flip"] >= 0.4 and top["checks"] == {
        "class_tied": True, "fixed_in_place": True, "paste": True, "deletion": True}


@pytest.mark.slow
@pytest.mark.parametrize("channels", ["grey", "rgb"])
def test_the_clean_twin_of_a_vit_gets_no_shortcut(tmp_path, channels):
    _, result = _run(tmp_path, f"clean_{channels}", seed=0)
    assert not result["shortcut_found"] and result["verdict"].startswith("No shortcut found"), result["verdict"]
