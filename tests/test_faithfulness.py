"""Deletion/insertion curves on a sum-of-pixels classifier whose softmax is known in closed form."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from i2x.errors import UserError
from i2x.metrics.faithfulness import (
    auc,
    change_counts,
    constant_colour,
    drop_at,
    perturbation_curves,
    pixel_order,
    random_order,
    select_buckets,
    value_at,
)
from i2x.io.models import SmallCNN

SCALE = 0.5


def sum_model(x: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """Logits [scale * sum(x), 0]: the class-0 probability is sigmoid(scale * sum(x))."""
    s = scale * x.sum(dim=(1, 2, 3))
    return torch.stack([s, torch.zeros_like(s)], dim=1)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def trapezoid(values: list[float]) -> float:
    """Trapezoid rule on a uniform grid over [0, 1], by hand."""
    h = 1.0 / (len(values) - 1)
    return h * (values[0] / 2 + sum(values[1:-1]) + values[-1] / 2)


# One 1-channel 2x2 image; saliency = the pixel values, so the order is 4, 3, 2, 1 (flat 0, 1, 2, 3).
IMAGE = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]], dtype=torch.float64)
SALIENCY = IMAGE[:, 0]
TARGET = torch.tensor([0])

# Sum of the pixels after changing 0..4 of them (steps = 4), worked by hand:
# deletion, colour 0 (the mean colour of normalised inputs):  10, 10-4, 6-3, 3-2, 1-1
# insertion, colour 0 start: 0, 4, 4+3, 7+2, 9+1
# deletion, colour 1:  10, 10-4+1, 7-3+1, 5-2+1, 4-1+1
# insertion, colour 1 start: 4, 4-1+4, 7-1+3, 9-1+2, 10-1+1
SUMS = {
    ("deletion", 0.0): [10, 6, 3, 1, 0],
    ("insertion", 0.0): [0, 4, 7, 9, 10],
    ("deletion", 1.0): [10, 7, 5, 4, 4],
    ("insertion", 1.0): [4, 7, 9, 10, 10],
}


@pytest.mark.parametrize("mode, colour", list(SUMS))
def test_curves_and_auc_match_hand_computation(mode, colour):
    expected = [sigmoid(SCALE * s) for s in SUMS[mode, colour]]
    curves = perturbation_curves(sum_model, IMAGE, SALIENCY, TARGET, mode=mode, steps=4, fill="mean", colour=[colour])
    assert curves.shape == (1, 5)
    np.testing.assert_allclose(curves[0].numpy(), expected, atol=1e-12)
    assert auc(curves)[0] == pytest.approx(trapezoid(expected), abs=1e-9)


def test_two_channels_change_together_with_per_channel_mean():
    # channel 0 = [[4,3],[2,1]], channel 1 = [[0,1],[2,3]], mean colour (1, 2): each deleted location
    # changes the sum by -c0 - c1 + 3 = -1, so the sums are 16, 15, 14, 13, 12.
    image = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]], [[0.0, 1.0], [2.0, 3.0]]]], dtype=torch.float64)
    curves = perturbation_curves(
        lambda x: sum_model(x, 0.25), image, image[:, 0], TARGET, steps=4, fill="mean", colour=(1.0, 2.0)
    )
    np.testing.assert_allclose(curves[0].numpy(), [sigmoid(0.25 * s) for s in (16, 15, 14, 13, 12)], atol=1e-12)


def test_counts_round_half_up_and_curve_follows_them():
    # 4 pixels, 8 steps: k/8 * 4 = 0, .5, 1, 1.5, ... -> 0, 1, 1, 2, 2, 3, 3, 4, 4
    assert change_counts(4, 8).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert change_counts(64, 20)[[0, 5, 10, 20]].tolist() == [0, 16, 32, 64]
    curves = perturbation_curves(sum_model, IMAGE, SALIENCY, TARGET, steps=8, fill="mean")
    sums = [10, 6, 6, 3, 3, 1, 1, 0, 0]
    np.testing.assert_allclose(curves[0].numpy(), [sigmoid(SCALE * s) for s in sums], atol=1e-12)


def test_value_at_and_drop_interpolate_on_the_grid():
    curves = np.array([[1.0, 0.8, 0.4, 0.2, 0.0]])  # grid 0, .25, .5, .75, 1
    assert value_at(curves, 0.25)[0] == pytest.approx(0.8)
    assert value_at(curves, 0.375)[0] == pytest.approx(0.6)
    assert value_at(curves, 1.0)[0] == pytest.approx(0.0)
    assert drop_at(curves, 0.5)[0] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        value_at(curves, 1.5)


def test_pixel_order_descending_with_stable_or_random_ties():
    saliency = torch.tensor([[[0.0, 2.0, 1.0], [2.0, 0.0, 1.0]]])
    assert pixel_order(saliency)[0].tolist() == [1, 3, 2, 5, 0, 4]
    flat = torch.zeros(1, 4, 4)
    assert pixel_order(flat)[0].tolist() == list(range(16))
    shuffled = pixel_order(flat, torch.Generator().manual_seed(0))[0]
    assert sorted(shuffled.tolist()) == list(range(16)) and shuffled.tolist() != list(range(16))
    # Random tie-breaking never breaks the descending order.
    ordered = pixel_order(saliency, torch.Generator().manual_seed(1))[0]
    assert saliency.flatten()[ordered].tolist() == [2.0, 2.0, 1.0, 1.0, 0.0, 0.0]


def test_random_order_endpoints():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    target = torch.zeros(3, dtype=torch.long)
    original = torch.sigmoid(SCALE * images.sum(dim=(1, 2, 3)))
    blurred = TF.gaussian_blur(images, [11, 11], [5.0, 5.0])  # kernel shrinks to 11 on 6x6: radius 5 < 6
    blurred_prob = torch.sigmoid(SCALE * blurred.sum(dim=(1, 2, 3)))
    order = random_order(3, 6, 6, torch.Generator().manual_seed(0))
    deletion = perturbation_curves(sum_model, images, None, target, "deletion", steps=5, fill="mean", order=order)
    insertion = perturbation_curves(sum_model, images, None, target, "insertion", steps=5, order=order)
    torch.testing.assert_close(deletion[:, 0], original)
    torch.testing.assert_close(deletion[:, -1], torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(insertion[:, 0], blurred_prob)
    torch.testing.assert_close(insertion[:, -1], original)


def test_batching_gives_the_same_curves_as_one_sample_at_a_time():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=8).eval()
    images = torch.randn(4, 1, 32, 32)
    saliency = torch.rand(4, 32, 32)
    target = torch.tensor([0, 1, 2, 1])
    for mode in ("deletion", "insertion"):
        together = perturbation_curves(model, images, saliency, target, mode, steps=6, batch_size=5, noise=0.0)
        alone = torch.cat([
            perturbation_curves(model, images[i : i + 1], saliency[i : i + 1], target[i : i + 1], mode, steps=6,
                                noise=0.0)
            for i in range(4)
        ])
        torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)


def test_bad_options_raise_user_errors():
    with pytest.raises(UserError, match="mode"):
        perturbation_curves(sum_model, IMAGE, SALIENCY, TARGET, mode="erase")
    with pytest.raises(UserError, match="fill"):
        perturbation_curves(sum_model, IMAGE, SALIENCY, TARGET, fill="noise")
    with pytest.raises(ValueError, match="black"):
        perturbation_curves(sum_model, IMAGE, SALIENCY, TARGET, fill="black")
    with pytest.raises(ValueError, match="saliency"):
        perturbation_curves(sum_model, IMAGE, SALIENCY[:, :1], TARGET)


def test_select_buckets():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 0, 0, 0])  # predicted 0, 1, 0, 1, 0, 1
    buckets = select_buckets(probs, labels, per_bucket=2, seed=3)
    assert set(buckets["tp"]) <= {0, 1, 4} and len(buckets["tp"]) == 2
    assert set(buckets["fp"]) <= {2, 3, 5} and len(buckets["fp"]) == 2
    assert len(buckets["random"]) == 2
    again = select_buckets(probs, labels, per_bucket=2, seed=3)
    assert all(np.array_equal(buckets[k], again[k]) for k in buckets)
    # Positive class 1: tp = predicted 1 and labelled 1, fp = predicted 1 but labelled 0.
    positive = select_buckets(probs, labels, per_bucket=10, positive_class=1)
    assert positive["tp"].tolist() == [1] and positive["fp"].tolist() == [3, 5]
    assert positive["random"].tolist() == list(range(6))


@pytest.mark.parametrize("fill", ["mean", "road"])
def test_saliency_order_beats_every_random_order_for_the_sum_model(fill):
    # For a monotone function of the pixel sum with positive pixels, deleting the largest pixels
    # first gives the lowest curve at every step, and inserting them first the highest. With ROAD
    # (no noise) an imputed pixel is a weighted mean of its neighbours, so the order still decides.
    torch.manual_seed(0)
    images = torch.rand(5, 1, 8, 8, dtype=torch.float64) + 0.1
    targets = torch.zeros(5, dtype=torch.long)
    model = lambda x: sum_model(x, 0.1)  # noqa: E731
    kw = dict(steps=8, fill=fill, noise=0.0)
    cam = {mode: perturbation_curves(model, images, images[:, 0], targets, mode, **kw).numpy() for mode in
           ("deletion", "insertion")}
    g = torch.Generator().manual_seed(0)
    rand = {mode: np.stack([perturbation_curves(model, images, None, targets, mode, order=random_order(5, 8, 8, g),
                                                **kw).numpy() for _ in range(3)]) for mode in cam}
    if fill == "mean":  # constant fill: pointwise optimal
        assert np.all(cam["deletion"] <= rand["deletion"] + 1e-12)
        assert np.all(cam["insertion"] >= rand["insertion"] - 1e-12)
    assert np.all(auc(cam["deletion"]) < auc(rand["deletion"]))  # every draw, every sample
    assert np.all(auc(cam["insertion"]) > auc(rand["insertion"]))
    assert np.all(auc(rand["deletion"]).std(axis=0) > 0)


def test_constant_colours_and_default_fills():
    assert constant_colour("mean", [0.5, 0.2], [0.25, 0.1]) == [0.0, 0.0]
    assert constant_colour("black", [0.5, 0.2], [0.25, 0.1]) == pytest.approx([-2.0, -2.0])
    images = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    order = random_order(2, 16, 16, torch.Generator().manual_seed(0))
    target = torch.zeros(2, dtype=torch.long)
    # Default deletion fill is ROAD: with every pixel removed the image is the fallback 0 plus noise;
    # default insertion starts from the blurred image.
    deletion = perturbation_curves(sum_model, images, None, target, "deletion", steps=4, order=order, noise=0.0)
    torch.testing.assert_close(deletion[:, -1], torch.full((2,), 0.5, dtype=torch.float64))
    insertion = perturbation_curves(sum_model, images, None, target, "insertion", steps=4, order=order)
    blurred = TF.gaussian_blur(images, [11, 11], [5.0, 5.0])
    torch.testing.assert_close(insertion[:, 0], torch.sigmoid(SCALE * blurred.sum(dim=(1, 2, 3))))
