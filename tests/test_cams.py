"""CAM methods: cross-checked against pytorch-grad-cam and against maps worked out by hand."""

from __future__ import annotations

import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from i2x.attribution import Attributor, get_layer, METHODS, display_maps, get_methods
from i2x.errors import UserError
from i2x.io.models import SmallCNN

PACKAGE_CLASSES = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "layercam": LayerCAM}


def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


def _small_cnn() -> nn.Module:
    return SmallCNN(num_classes=10, in_channels=1)


# (model factory, target layer, input shape, grid at the layer)
SETUPS = {
    "resnet18-layer4": (_resnet18, "layer4", (6, 3, 64, 64), (2, 2)),
    "resnet18-layer3": (_resnet18, "layer3", (6, 3, 64, 64), (4, 4)),
    "small-cnn": (_small_cnn, "features", (6, 1, 32, 32), (8, 8)),
}


@pytest.fixture(scope="module", params=list(SETUPS))
def ours_and_package(request):
    """Our display maps and pytorch-grad-cam's output for every method, on the same model and targets."""
    factory, layer_name, shape, grid = SETUPS[request.param]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(shape)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    with Attributor(model, layer_name, METHODS) as attributor:
        result = attributor.attribute(x, "true", labels)
    ours = {name: display_maps(raw, size=shape[-2:]) for name, raw in result.cams.items()}
    package = {}
    for name, cls in PACKAGE_CLASSES.items():
        with cls(model=model, target_layers=[get_layer(model, layer_name)]) as cam:
            package[name] = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(c)) for c in labels]))
    return result, ours, package, grid


@pytest.mark.parametrize("method", list(PACKAGE_CLASSES))
def test_display_maps_equal_pytorch_grad_cam(ours_and_package, method):
    result, ours, package, grid = ours_and_package
    assert result.cams[method].shape[-2:] == grid
    torch.testing.assert_close(ours[method], package[method], atol=1e-5, rtol=0)
    nontrivial = (package[method].amax(dim=(1, 2)) > 0.5).sum().item()
    assert nontrivial >= 4, f"only {nontrivial} of 6 maps are non-zero; the comparison would be too weak"


def test_raw_maps_are_not_normalised(ours_and_package):
    result, _, _, _ = ours_and_package
    peaks = result.cams["layercam"].amax(dim=(1, 2))
    assert (result.cams["layercam"] >= 0).all()
    assert not torch.allclose(peaks, torch.ones_like(peaks))


# --- The analytic case: conv 1x1 (1 -> 2 channels, weights +1 and -1), global average pool, linear.
# With x one 2x2 image, A_0 = x, A_1 = -x; the logit of class m is V[m,0] mean(A_0) + V[m,1] mean(A_1),
# so dS_m/dA_k = V[m,k] / 4 at every location.
X = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
V = torch.tensor([[2.0, 1.0], [-1.0, 3.0]])


def _one_conv_model() -> nn.Module:
    conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        linear.weight.copy_(V)
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


@pytest.fixture(scope="module")
def golden():
    with Attributor(_one_conv_model(), "0", METHODS) as attributor:
        return attributor.attribute(X.expand(2, 1, 2, 2), torch.tensor([0, 1]))


def test_golden_gradcam(golden):
    # class 0: weights (2/4, 1/4) -> ReLU(x/2 - x/4) = ReLU(x/4); class 1: (-1/4, 3/4) -> ReLU(-x)
    expected = torch.tensor([[[0.25, 0.0], [0.75, 0.0]], [[0.0, 2.0], [0.0, 4.0]]])
    assert torch.equal(golden.cams["gradcam"], expected)


def test_golden_layercam(golden):
    # class 0: ReLU(g) = (1/2, 1/4), as GradCAM; class 1: ReLU(g) = (0, 3/4) -> ReLU(-3x/4)
    expected = torch.tensor([[[0.25, 0.0], [0.75, 0.0]], [[0.0, 1.5], [0.0, 3.0]]])
    assert torch.equal(golden.cams["layercam"], expected)


def test_golden_gradcampp(golden):
    # g is constant per channel, so w_k = 4 alpha_k ReLU(g_k), alpha_k = g^2 / (2 g^2 + sum(A_k) g^3 + eps).
    # sum(A_0) = sum(x) = -2, sum(A_1) = 2.
    # class 0: g = (1/2, 1/4): alpha_0 = .25 / (.5 - .25 + eps), alpha_1 = .0625 / (.125 + .03125 + eps)
    w0 = 4 * 0.5 * 0.25 / (0.25 + 1e-6)
    w1 = 4 * 0.25 * 0.0625 / (0.15625 + 1e-6)
    class0 = (w0 - w1) * X.clamp(min=0)  # w0 > w1, so ReLU(w0 x - w1 x) = (w0 - w1) ReLU(x)
    # class 1: g = (-1/4, 3/4): w_0 = 0 (negative gradient); alpha_1 = .5625 / (1.125 + 2 * .421875 + eps)
    w1 = 4 * 0.75 * 0.5625 / (1.96875 + 1e-6)
    class1 = w1 * (-X).clamp(min=0)
    torch.testing.assert_close(golden.cams["gradcampp"], torch.stack([class0, class1]), rtol=1e-6, atol=0)


def test_golden_probs(golden):
    # logits: class 0: (2 - 1) mean(x) = -0.5; class 1: (-1 - 3) mean(x) = 2
    expected = torch.softmax(torch.tensor([-0.5, 2.0]), dim=0)
    torch.testing.assert_close(golden.probs, expected.expand(2, 2))
    assert golden.probs.dtype == torch.float32


def _gradcampp_as_written(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 19 transcribed literally: alpha with the g == 0 guard, then the ReLU'd weighted sum."""
    s = a.sum(dim=(2, 3), keepdim=True)
    alpha = g**2 / (2 * g**2 + s * g**3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    w = (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((w * a).sum(dim=1))


def test_gradcampp_matches_literal_formula_with_zero_and_negative_gradients():
    torch.manual_seed(1)
    a = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    g = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    g[g.abs() < 0.5] = 0.0
    got = METHODS["gradcampp"](a, g)
    torch.testing.assert_close(got, _gradcampp_as_written(a, g), rtol=1e-10, atol=1e-12)
    assert METHODS["gradcampp"](a, torch.zeros_like(g)).abs().max() == 0


def test_display_maps_range_shape_and_flat_maps():
    raw = torch.zeros(3, 4, 4)
    raw[0, 1, 2] = 5.0
    raw[1] = -1.0  # all negative: ReLU makes it flat
    raw[2] = torch.arange(16.0).reshape(4, 4)
    shown = display_maps(raw, size=(8, 12))
    assert shown.shape == (3, 8, 12)
    assert shown.min() >= 0 and shown.max() <= 1
    assert torch.all(shown[1] == 0)
    assert shown[2].max() > 0.999 and shown[2].min() == 0


def test_get_methods_order_and_unknown_names():
    assert list(get_methods(["layercam", "gradcam"])) == ["layercam", "gradcam"]
    with pytest.raises(UserError, match="gradcam, gradcampp, layercam"):
        get_methods(["gradcam", "scorecam"])
