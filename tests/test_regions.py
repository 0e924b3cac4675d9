"""Region targets, checked by hand on a model whose per-pixel logits are a known linear map of known pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from i2x.attribution import Attributor, get_methods
from i2x.attribution.regions import RegionModel, predicted_regions, region_occlusion, region_scores, segmentation_layer

H = W = 8
#: logits z_c(p) = sum_k WEIGHTS[c, k] x_k(p): class 0 (background) scores 0, class 1 reads channel 0, class 2 both
WEIGHTS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-0.5, 2.0]])


class Known(nn.Module):
    """Per-pixel logits that depend only on the pixel itself: a 1x1 conv with fixed weights after an identity layer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.head = nn.Conv2d(2, 3, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(WEIGHTS[:, :, None, None])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.layer(x))}  # torchvision's dict output


def _image() -> torch.Tensor:
    """Channel 0 is 2 on a 3x4 block (rows 1-3, cols 1-4), channel 1 is 1.5 on a 2x2 block (rows 5-6, cols 5-6),
    both -1 elsewhere: the argmax is class 1 on the first block, class 2 on the second, the background elsewhere."""
    x = -torch.ones(1, 2, H, W)
    x[0, 0, 1:4, 1:5] = 2.0
    x[0, 1, 5:7, 5:7] = 1.5
    return x


def _box(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    region = torch.zeros(1, H, W, dtype=torch.bool)
    region[0, r0:r1, c0:c1] = True
    return region


def test_region_score_is_the_class_logit_averaged_over_the_region() -> None:
    x, region = _image(), _box(0, 4, 0, 4)  # 16 pixels, 9 of them on the class-1 block
    logits = Known()(x)["out"]
    scores = region_scores(logits, region)
    assert scores[0, 1].item() == pytest.approx((9 * 2.0 + 7 * -1.0) / 16)
    assert scores[0, 2].item() == pytest.approx((9 * (-0.5 * 2 + 2 * -1) + 7 * (-0.5 * -1 + 2 * -1)) / 16)
    assert scores[0, 0].item() == 0.0


def test_predicted_region_follows_the_argmax_and_falls_back_to_the_truth() -> None:
    logits = Known()(_image())["out"].repeat(2, 1, 1, 1)
    pred = predicted_regions(logits, torch.tensor([1, 2]))
    assert torch.equal(pred[0], _box(1, 4, 1, 5)[0])
    assert torch.equal(pred[1], _box(5, 7, 5, 7)[0])
    none = predicted_regions(logits[:1], torch.tensor([0]) + 1, truth=_box(0, 1, 0, 1))  # class 1 is predicted: kept
    assert torch.equal(none[0], _box(1, 4, 1, 5)[0])
    flat = torch.zeros(1, 3, H, W)
    flat[:, 0] = 1  # the background everywhere: class 2 has no predicted pixel, the truth fills in
    assert torch.equal(predicted_regions(flat, torch.tensor([2]), truth=_box(0, 2, 0, 2))[0], _box(0, 2, 0, 2)[0])


@pytest.mark.parametrize("c", [1, 2])
def test_cams_of_a_region_score_match_the_hand_computed_gradient(c: int) -> None:
    """dS_c/dA_k(p) = WEIGHTS[c, k] / |R| inside R and 0 outside, so LayerCAM = ReLU(sum_k ReLU(W_ck)/|R| x_k) on R
    and 0 outside, and GradCAM's channel weight is W_ck / (H W) at every pixel."""
    x, region = _image(), _box(0, 4, 0, 4)
    model = RegionModel(Known())
    with model.over(region), Attributor(model, "model.layer", get_methods(["gradcam", "layercam"])) as attributor:
        out = attributor.attribute(x, torch.tensor([c]))
    area = region.sum().item()
    w = WEIGHTS[c]
    layercam = torch.relu((w.clamp(min=0)[:, None, None] / area * x[0]).sum(0)) * region[0]
    gradcam = torch.relu((w[:, None, None] / (H * W) * x[0]).sum(0))
    assert torch.allclose(out.cams["layercam"][0], layercam, atol=1e-6)
    assert torch.allclose(out.cams["gradcam"][0], gradcam, atol=1e-6)
    assert out.cams["layercam"][0][~region[0]].abs().max() == 0  # no credit outside the region
    assert out.logits[0, c].item() == pytest.approx(region_scores(Known()(x)["out"], region)[0, c].item())


def test_predicted_region_target_explains_the_predicted_block() -> None:
    """With predicted regions the class-2 row explains its 2x2 block only: LayerCAM is zero elsewhere."""
    x = _image()
    model = RegionModel(Known())
    with model.over(_box(0, 1, 0, 1), torch.tensor([2]), predicted=True), \
            Attributor(model, "model.layer", get_methods(["layercam"])) as attributor:
        cam = attributor.attribute(x, torch.tensor([2])).cams["layercam"][0]
    block = _box(5, 7, 5, 7)[0]
    assert torch.allclose(cam[block], torch.full((4,), 2.0 * 1.5 / 4))  # ReLU(W_20) = 0, ReLU(W_21) = 2, x_1 = 1.5
    assert cam[~block].abs().max() == 0


def test_region_occlusion_credits_only_cells_that_touch_the_region() -> None:
    """Hiding a cell (2x2 pixels on a 4x4 grid) outside the region leaves the region's score unchanged."""
    x, region = _image(), _box(0, 4, 0, 4)
    model = RegionModel(Known())
    occ = region_occlusion(model, x, torch.tensor([1]), region, (4, 4))[0]
    assert occ[2:, :].abs().max() == 0 and occ[:, 2:].abs().max() == 0  # cells outside rows/cols 0-3
    assert occ[1, 1] > 0 and occ[0, 1] > 0  # hiding block pixels (x_0 = 2 -> 0) lowers S_1
    assert occ[0, 0] == 0  # three -1 pixels and one block pixel: hiding raises S_1, no credit


def test_segmentation_layer_is_the_last_feature_map_not_the_logits() -> None:
    from i2x.io.segnets import SmallSegNet

    assert segmentation_layer(SmallSegNet(4, 3), torch.randn(1, 3, 32, 32), 4) == "features"
    assert segmentation_layer(Known(), _image(), 3) == "layer"


def test_deletion_removes_the_top_of_the_region_only() -> None:
    """Half of a 4-pixel region = its 2 most salient pixels; the more salient pixels outside it stay."""
    from i2x.stages.benchmark.regions import deletion_masks

    saliency = torch.arange(16.0).view(1, 4, 4)  # pixel 15 (outside the region) is the most salient
    region = torch.zeros(1, 4, 4, dtype=torch.bool)
    region[0, :2, :2] = True  # pixels 0, 1, 4, 5
    masks = deletion_masks(saliency, region, np.array([0.5, 1.0]))
    assert masks.shape == (2, 1, 4, 4)
    assert torch.nonzero(masks[0, 0].flatten()).flatten().tolist() == [4, 5]
    assert torch.equal(masks[1, 0], region[0])
