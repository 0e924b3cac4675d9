"""Transformers: token and channels-last layer outputs become [B, C, h, w] maps for every stage.

Tiny configurations only (no downloads): a torchvision ViT, timm ViT/DeiT with a distillation token,
Swin (channels-last) and ConvNeXt, each trained a few steps on digits and run through ``i2x run``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision.models import VisionTransformer

from i2x import api
from i2x.attribution import Attributor, METHODS, display_maps, find_target_layer, get_layer
from i2x.attribution.tokens import Layout, detect, from_map, parse, to_map
from i2x.errors import UserError
from i2x.io.data import load_data
from i2x.io.models import build_model
from i2x.io.store import Store

timm = pytest.importorskip("timm")

VIT_FACTORY = '''
import torch.nn as nn
from torchvision.models import VisionTransformer


def vit(num_classes=10, in_channels=1):
    model = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=num_classes)
    model.conv_proj = nn.Conv2d(in_channels, 32, kernel_size=4, stride=4)
    return model
'''


def _tiny_vit(in_channels: int = 1) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    model.conv_proj = torch.nn.Conv2d(in_channels, 32, kernel_size=4, stride=4)
    return model


def _train(model: torch.nn.Module, steps: int, folder: Path | None = None) -> None:
    """A few Adam steps on digits; with ``folder``, snapshots after 4 and after all steps."""
    data = load_data("digits").split("train")
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    if folder is not None:
        folder.mkdir(parents=True)
    model.train()
    for step, (x, y) in zip(range(1, steps + 1), loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if folder is not None and step in (4, steps):
            torch.save({"state_dict": model.state_dict(), "step": step}, folder / f"step_{step}.pt")



# ---- layouts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, expected", [
    ((2, 65, 32), Layout("tokens", 1, (8, 8))),      # class token + 8x8 patches
    ((2, 66, 32), Layout("tokens", 2, (8, 8))),      # class + distillation tokens
    ((2, 64, 32), Layout("tokens", 0, (8, 8))),      # patch tokens only
    ((2, 69, 32), Layout("tokens", 5, (8, 8))),      # class + 4 register tokens
    ((2, 8, 8, 96), Layout("bhwc")),                 # Swin: channels last
    ((2, 96, 8, 8), Layout("bchw")),                 # a conv map
    ((2, 8, 8, 8), Layout("bchw")),                  # ambiguous cube: a conv map
])
def test_layouts_are_read_from_the_shape_and_the_input_size(shape, expected):
    assert detect(torch.zeros(shape), (32, 32)) == expected


def test_token_grids_follow_the_input_aspect_and_overrides_win():
    assert detect(torch.zeros(1, 1 + 4 * 8, 16), (16, 32)) == Layout("tokens", 1, (4, 8))
    assert detect(torch.zeros(1, 65, 16), (32, 32), parse("1x8x8")) == Layout("tokens", 1, (8, 8))
    assert detect(torch.zeros(1, 65, 16), (32, 32), parse("17")) == Layout("tokens", 17, (6, 8))
    assert detect(torch.zeros(1, 8, 8, 96), (32, 32), parse("bchw")) == Layout("bchw")
    assert detect(torch.zeros(1, 10), (32, 32)) is None
    with pytest.raises(UserError, match="--tokens 1x4x4: the layer outputs 65 tokens"):
        detect(torch.zeros(1, 65, 16), (32, 32), parse("1x4x4"))
    with pytest.raises(UserError, match="--tokens cls"):
        parse("cls")


def test_maps_and_tokens_round_trip():
    tokens = torch.randn(3, 66, 5)
    layout = Layout("tokens", 2, (8, 8))
    grid = to_map(tokens, layout)
    assert grid.shape == (3, 5, 8, 8)
    # patch token r*8 + c is cell (r, c): row-major, after the prefix tokens
    torch.testing.assert_close(grid[:, :, 2, 5], tokens[:, 2 + 2 * 8 + 5])
    torch.testing.assert_close(from_map(grid, tokens, layout), tokens)
    channels_last = torch.randn(2, 4, 4, 7)
    torch.testing.assert_close(from_map(to_map(channels_last, Layout("bhwc")), channels_last, Layout("bhwc")),
                               channels_last)


# ---- the default layer and the maps ----------------------------------------------------------------------
def test_default_layer_of_a_vit_is_the_input_of_its_last_block():
    """Not the patch embedding (a conv), not the final norm, and not the last block's output: a class-token
    ViT reads its logits from the class token, which no patch token reaches after the last attention."""
    model = _tiny_vit()
    assert find_target_layer(model, torch.randn(1, 1, 32, 32)) == "conv_proj", "untrained: its head is zero"
    _train(model, steps=4)
    assert find_target_layer(model, torch.randn(1, 1, 32, 32)) == "encoder.layers.encoder_layer_0"


def _vit_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's reshape_transform for a ViT with one class token and an 8x8 grid."""
    return tensor[:, 1:, :].reshape(tensor.size(0), 8, 8, tensor.size(2)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("method, package_class", [("gradcam", GradCAM), ("layercam", LayerCAM)])
def test_cams_on_a_vit_block_equal_pytorch_grad_cam_with_its_reshape_transform(method, package_class):
    """Tolerance 1e-5 on the display maps in [0, 1], as for the CNNs in test_cams.py."""
    model = _tiny_vit()
    _train(model, steps=12)
    model.eval()
    data = load_data("digits").split("test")
    x = torch.stack([data[i][0] for i in range(6)])
    labels = model(x).argmax(1)  # the predicted class: its evidence is positive, so the maps are not flat
    layer = "encoder.layers.encoder_layer_0"  # the last block's input, as pytorch-grad-cam advises for ViTs
    with Attributor(model, layer, {method: METHODS[method]}) as attributor:
        result = attributor.attribute(x, "true", labels)
        assert attributor.layout_ == Layout("tokens", 1, (8, 8))
    ours = display_maps(result.cams[method], (32, 32))
    with package_class(model=model, target_layers=[get_layer(model, layer)], reshape_transform=_vit_reshape) as cam:
        package = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(c)) for c in labels]))
    assert result.cams[method].shape == (6, 8, 8)
    assert (package.amax(dim=(1, 2)) > 0.5).sum() >= 4, "too many flat maps for a meaningful comparison"
    torch.testing.assert_close(ours, package, atol=1e-5, rtol=0)
    # the hook passes the block's output on unchanged: the logits equal a plain forward
    torch.testing.assert_close(result.logits, model(x), atol=1e-5, rtol=1e-5)


def test_a_layer_without_a_grid_is_refused_with_advice():
    model = _tiny_vit().eval()
    with Attributor(model, "heads", METHODS) as attributor:
        with pytest.raises(UserError, match="holds no spatial grid"):
            attributor.attribute(torch.randn(2, 1, 32, 32), "predicted")


# ---- end to end: a few training steps, then i2x run ------------------------------------------------------
TIMM_MODELS = {  # spec -> (layout kind, prefix tokens, grid)
    "timm:deit_tiny_distilled_patch16_224?img_size=32&patch_size=4&depth=2&embed_dim=32&num_heads=2":
        ("tokens", 2, (8, 8)),
    "timm:swin_tiny_patch4_window7_224?img_size=32&window_size=4&embed_dim=16&depths=2,2&num_heads=1,2":
        ("bhwc", 0, (4, 4)),
    "timm:convnext_atto?dims=16,16,16,16": ("bchw", 0, (4, 4)),
}


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["file"] + list(TIMM_MODELS))
def test_transformers_run_through_the_pipeline(spec, tmp_path):
    if spec == "file":
        (tmp_path / "vit.py").write_text(VIT_FACTORY)
        spec, expected = f"{tmp_path / 'vit.py'}:vit", ("tokens", 1, (8, 8))
    else:
        expected = TIMM_MODELS[spec]
    torch.manual_seed(0)
    model = build_model(spec, num_classes=10, in_channels=1)
    _train(model, 12, tmp_path / "ck")
    result = api.run(checkpoints=str(tmp_path / "ck"), model=spec, out=tmp_path / "an", limit=96, progress=False,
                     analyze_config=api.AnalyzeConfig(k=4, min_flips=1))  # reliance included: it edits token grids
    store = Store.open(tmp_path / "an")
    kind, prefix, grid = expected
    assert store.attrs["layer_layout"]["kind"] == kind
    assert store.attrs["layer_layout"]["prefix"] == prefix
    assert store.grid == grid and min(store.grid) >= 4
    cams = store.cam("gradcam")[-1]
    assert np.isfinite(cams).all() and (cams.reshape(len(cams), -1).max(1) > 0).mean() > 0.5
    assert result.report_path is not None and result.report_path.is_file()
    assert (tmp_path / "an" / "reliance.json").is_file() and "verdict" in result.summary["reliance"]
