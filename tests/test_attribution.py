"""The attribution core: layer choice, one-pass extraction, and that it leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from i2x.attribution import Attributor, find_target_layer, get_layer, prefer_channels_last, METHODS
from i2x.errors import UserError
from i2x.io.models import SmallCNN


def _small_cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=10, in_channels=1)


def _batch(n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _assert_results_equal(a, b, atol: float = 0.0) -> None:
    torch.testing.assert_close(a.probs, b.probs, atol=atol, rtol=0)
    torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=0)
    assert a.cams.keys() == b.cams.keys()
    for name in a.cams:
        torch.testing.assert_close(a.cams[name], b.cams[name], atol=atol, rtol=0)


def test_find_target_layer_small_cnn():
    assert find_target_layer(_small_cnn(), torch.zeros(2, 1, 32, 32)) == "features"


@pytest.mark.parametrize(("size", "expected"), [(64, "layer3"), (224, "layer4")])
def test_find_target_layer_resnet18(size, expected):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.train()
    running_mean = model.bn1.running_mean.clone()
    assert find_target_layer(model, torch.randn(2, 3, size, size)) == expected
    # the probe forward neither changes the mode nor updates BatchNorm statistics
    assert all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, running_mean)


def test_find_target_layer_skips_modules_run_twice():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.conv2(self.act(self.conv1(x)))))

    model = Shared()
    assert find_target_layer(model, torch.zeros(1, 1, 8, 8)) == "conv2"
    with Attributor(model, "act", METHODS) as attributor, pytest.raises(UserError, match="ran 2 times"):
        attributor.attribute(torch.zeros(1, 1, 8, 8), "predicted")


def test_find_target_layer_too_small_input():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(UserError, match="3x3"):
        find_target_layer(model, torch.zeros(1, 1, 2, 2))


def test_get_layer():
    model = _small_cnn()
    assert get_layer(model, "features.8") is model.features[8]
    assert get_layer(model, "features") is model.features
    with pytest.raises(UserError, match="features"):
        get_layer(model, "feature")


def test_outputs_shapes_dtypes_and_targets():
    x, y = _batch(4)
    model = _small_cnn().eval()
    with Attributor(model, "features", METHODS) as attributor:
        result = attributor.attribute(x, "true", y, want_features=True)
        predicted = attributor.attribute(x, "predicted")
        explicit = attributor.attribute(x, y.flip(0))
        assert attributor.attribute(x, "true", y).features is None
        with pytest.raises(UserError, match="labels"):
            attributor.attribute(x, "true")
    assert result.logits.shape == result.probs.shape == (4, 10)
    assert result.probs.dtype == torch.float32
    torch.testing.assert_close(result.probs.sum(dim=1), torch.ones(4))
    assert torch.equal(result.targets, y)
    assert torch.equal(predicted.targets, result.logits.argmax(dim=1))
    assert torch.equal(explicit.targets, y.flip(0))
    assert set(result.cams) == {"gradcam", "gradcampp", "layercam"}
    assert all(cam.shape == (4, 8, 8) for cam in result.cams.values())
    with torch.no_grad():
        features = model.features(x)
    assert result.features.dtype == torch.float16 and result.features.is_contiguous()
    torch.testing.assert_close(result.features, features.permute(0, 2, 3, 1).half())


def test_matches_a_plain_autograd_computation_with_inplace_relu_after_the_layer():
    # conv -> ReLU(inplace=True): the kept activation must be the conv output, before the ReLU
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    x = torch.randn(3, 1, 6, 6)
    y = torch.tensor([0, 2, 3])
    with Attributor(model, "2", METHODS) as attributor:
        result = attributor.attribute(x, "true", y, want_features=True)

    a = model[2](model[1](model[0](x))).detach().requires_grad_()
    logits = model[4:](torch.relu(a))
    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), a)
    assert (a < 0).any()
    torch.testing.assert_close(result.features, a.detach().permute(0, 2, 3, 1).half())
    torch.testing.assert_close(result.logits, logits.detach())
    gradcam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))
    layercam = torch.relu((torch.relu(g) * a).sum(dim=1))
    torch.testing.assert_close(result.cams["gradcam"], gradcam.detach())
    torch.testing.assert_close(result.cams["layercam"], layercam.detach())


def test_sample_alone_equals_sample_in_batch():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(5, 3, 64, 64)
    y = torch.arange(5)
    with Attributor(model, "layer3", METHODS) as attributor:
        batch = attributor.attribute(x, "true", y, want_features=True)
        alone = attributor.attribute(x[3:4], "true", y[3:4], want_features=True)
    torch.testing.assert_close(alone.probs, batch.probs[3:4], atol=1e-5, rtol=0)
    for name in METHODS:
        torch.testing.assert_close(alone.cams[name], batch.cams[name][3:4], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone.features, batch.features[3:4], atol=1e-3, rtol=1e-3)


def test_leaves_grads_flags_and_mode_untouched():
    model = _small_cnn().train()
    model.features[2].eval()  # a mixed state must survive too
    preset = torch.randn_like(model.head[2].weight)
    model.head[2].weight.grad = preset.clone()
    model.features[0].bias.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    x, y = _batch()
    with Attributor(model, "features", METHODS) as attributor:
        attributor.attribute(x, "true", y, want_features=True)
    assert torch.equal(model.head[2].weight.grad, preset)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.2.weight")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.is_grad_enabled()


def test_works_with_every_parameter_frozen_and_inside_no_grad():
    x, y = _batch()
    with Attributor(_small_cnn(), "features", METHODS) as attributor:
        reference = attributor.attribute(x, "true", y)
    frozen = _small_cnn()
    frozen.requires_grad_(False)
    with Attributor(frozen, "features", METHODS) as attributor:
        _assert_results_equal(attributor.attribute(x, "true", y), reference)
        with torch.no_grad():
            _assert_results_equal(attributor.attribute(x, "true", y), reference)
        with torch.inference_mode():
            _assert_results_equal(attributor.attribute(x.clone(), "true", y), reference)


def test_hook_survives_load_state_dict():
    x, y = _batch()
    model = _small_cnn(seed=0).eval()
    other_state = _small_cnn(seed=7).state_dict()
    with Attributor(model, "features", METHODS) as attributor:
        first = attributor.attribute(x, "true", y)
        model.load_state_dict(other_state)
        second = attributor.attribute(x, "true", y)
    fresh_model = _small_cnn(seed=3).eval()
    fresh_model.load_state_dict(other_state)
    with Attributor(fresh_model, "features", METHODS) as attributor:
        fresh = attributor.attribute(x, "true", y)
    _assert_results_equal(second, fresh)
    assert not torch.allclose(first.probs, second.probs)
    assert not torch.allclose(first.cams["gradcam"], second.cams["gradcam"])


def test_hook_is_inert_outside_attribute_and_removed_on_close():
    x, y = _batch()
    model = _small_cnn()
    expected = model(x)
    attributor = Attributor(model, "features", METHODS)
    attributor.attribute(x, "true", y)
    logits = model(x)  # ordinary training step while the attributor is open
    torch.testing.assert_close(logits, expected)
    nn.functional.cross_entropy(logits, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    attributor.close()
    assert not model.features._forward_hooks


class _FlattensWithView(nn.Module):
    """A conv model whose head uses ``view``, which a channels-last map cannot take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


def test_prefer_channels_last_switches_only_models_that_give_the_same_logits():
    x, _ = _batch(4)
    model = _small_cnn().train()
    with torch.no_grad():
        before = model.eval()(x)
    model.train()
    assert prefer_channels_last(model, x[:1])
    assert model.training  # mode restored
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), before, rtol=1e-4, atol=1e-5)

    viewer = _FlattensWithView()
    assert not prefer_channels_last(viewer, x[:1])
    assert viewer.conv.weight.is_contiguous()
    viewer(x)  # still runs
    assert not prefer_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)), x[:1])  # no conv
