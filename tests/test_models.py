"""Model specs: the built-in SmallCNN, torchvision models adapted to the data, and user factories
given as a file or an importable module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from i2x.errors import UserError
from i2x.io.models import SmallCNN, build_model


def test_small_cnn_gives_an_8x8_grid_at_features_for_32px_input():
    model = build_model("small-cnn", num_classes=10, in_channels=1)
    assert isinstance(model, SmallCNN)
    x = torch.randn(2, 1, 32, 32)
    grid = model.features(x)
    assert grid.shape == (2, 64, 8, 8) and isinstance(model.features[-1], nn.ReLU) and bool((grid >= 0).all())
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.allclose(logits, model.head(grid))


def test_small_cnn_takes_colour_and_other_class_counts():
    model = build_model("small-cnn", num_classes=4, in_channels=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize(("name", "stem", "head"), [
    ("resnet18", lambda m: m.conv1, lambda m: m.fc),
    ("mobilenet_v3_small", lambda m: m.features[0][0], lambda m: m.classifier[-1]),
])
def test_torchvision_models_are_adapted_to_channels_and_classes(name, stem, head):
    model = build_model(f"torchvision:{name}", num_classes=7, in_channels=1)
    assert stem(model).in_channels == 1 and head(model).out_features == 7
    model.eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_torchvision_keeps_a_three_channel_stem_for_colour():
    model = build_model("torchvision:resnet18", num_classes=3, in_channels=3)
    assert model.conv1.in_channels == 3 and model.fc.out_features == 3


@pytest.mark.parametrize(("spec", "message"), [
    ("torchvision:resnet1000", "torchvision has no classification model of that name; similar: .*resnet18"),
    ("torchvision:fasterrcnn_resnet50_fpn", "no classification model of that name"),  # a detector, not a classifier
    ("resnet18", "unknown model spec; use small-cnn, torchvision:NAME"),
    ("no_such_package_xyz.models:make", "cannot import no_such_package_xyz.models"),
    ("nowhere/model.py:make", "file nowhere/model.py does not exist"),
])
def test_unknown_models_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        build_model(spec, num_classes=10, in_channels=1)


FACTORIES = '''
from torch import nn

def with_both(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

def classes_only(num_classes=2):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, num_classes))

def anything(**kwargs):
    anything.seen = kwargs
    return nn.Linear(1, kwargs["num_classes"])

def nothing():
    return nn.Identity()

def not_a_model(num_classes):
    return "a string"
'''


def test_file_factories_get_the_arguments_they_accept(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORIES)

    both = build_model(f"{path}:with_both", num_classes=5, in_channels=1)
    assert both[0].in_channels == 1 and both[-1].out_features == 5
    assert build_model(f"{path}:classes_only", num_classes=6, in_channels=3)[-1].out_features == 6
    assert build_model(f"{path}:anything", num_classes=3, in_channels=2).out_features == 3
    assert isinstance(build_model(f"{path}:nothing", num_classes=3, in_channels=2), nn.Identity)
    with pytest.raises(UserError, match="returned str, not a torch nn.Module"):
        build_model(f"{path}:not_a_model", num_classes=3, in_channels=1)
    with pytest.raises(UserError, match="no callable named 'missing'"):
        build_model(f"{path}:missing", num_classes=3, in_channels=1)


def test_module_factory_from_an_importable_package(tmp_path, monkeypatch):
    package = tmp_path / "i2x_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))

    model = build_model("i2x_test_pkg.nets:with_both", num_classes=4, in_channels=2)

    assert model[0].in_channels == 2 and model(torch.randn(1, 2, 8, 8)).shape == (1, 4)
    import i2x_test_pkg.nets as nets

    build_model("i2x_test_pkg.nets:anything", num_classes=9, in_channels=1)
    assert nets.anything.seen == {"num_classes": 9, "in_channels": 1}
