"""Occlusion, dual-evidence fusion, leakage and robustness metrics, each against a hand computation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from i2x.attribution import INTERVENTIONS, METHODS, Attributor, get_methods
from i2x.attribution.fusion import dual_evidence, peak_normalise
from i2x.attribution.occlusion import cell_of_pixel, class_probability, occlusion
from i2x.metrics import leakage as lk
from i2x.metrics.drift import iou_top, spearman
from i2x.metrics.robustness import max_sensitivity, pearson
from i2x.stages.benchmark.maps import scoring_model
from i2x.stages.config import RunConfig


def sum_model(x: torch.Tensor) -> torch.Tensor:
    """Logits [0.5 * sum(x), 0]: p(class 0) = sigmoid(0.5 * sum)."""
    s = 0.5 * x.sum(dim=(1, 2, 3))
    return torch.stack([s, torch.zeros_like(s)], dim=1)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_occlusion_is_the_probability_drop_per_cell_footprint():
    # 4x4 image, 2x2 grid: cell (i, j) covers a 2x2 block. Block sums 1+2+5+6=14, 3+4+7+8=22,
    # 9+10+13+14=46, 11+12+15+16=54; total 136. Hiding a block with colour 0 removes its sum.
    image = torch.arange(1.0, 17.0, dtype=torch.float64).view(1, 1, 4, 4) / 10
    maps = occlusion(class_probability(sum_model, torch.tensor([0])), image, (2, 2), batch_size=3)
    base = sigmoid(0.5 * 13.6)
    expected = [[base - sigmoid(0.5 * (13.6 - s / 10)) for s in row] for row in ((14, 22), (46, 54))]
    np.testing.assert_allclose(maps[0].numpy(), expected, rtol=1e-5)
    # Class 1 gains when evidence for class 0 is hidden: its drops are negative, so ReLU gives 0.
    assert torch.all(occlusion(class_probability(sum_model, torch.tensor([1])), image, (2, 2)) == 0)
    # A colour of 1 per channel: the block's pixels become 1 (sum 4 per block).
    coloured = occlusion(class_probability(sum_model, torch.tensor([0])), image, (2, 2), colour=[1.0])
    assert coloured[0, 1, 1].item() == pytest.approx(base - sigmoid(0.5 * (13.6 - 5.4 + 4)), rel=1e-5)
    # Footprints of a grid that does not divide the input: 5 pixels over 2 cells -> 0,0,0,1,1.
    assert cell_of_pixel((5, 5), (2, 2))[:, 0].tolist() == [0, 0, 0, 2, 2]


def test_occlusion_and_dea_as_stored_methods_through_the_attributor():
    # --methods gradcam,occlusion,dea: one attribute() call gives the same maps as the functions, and
    # neither intervention method is a default.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 2, 1])
    with Attributor(model, "3", get_methods(["occlusion", "dea", "gradcam"])) as attributor:
        cams = attributor.attribute(x, y).cams
    assert list(cams) == ["occlusion", "dea", "gradcam"]
    expected = occlusion(class_probability(model, y), x, (4, 4))
    torch.testing.assert_close(cams["occlusion"], expected)
    assert cams["occlusion"].max() > 0
    torch.testing.assert_close(cams["dea"], dual_evidence(cams["gradcam"], expected))
    with Attributor(model, "3", get_methods(["dea"])) as attributor:  # alone: computes both of its inputs
        torch.testing.assert_close(attributor.attribute(x, y).cams["dea"], cams["dea"])
    assert "occlusion" in INTERVENTIONS and "occlusion" not in METHODS and "dea" not in RunConfig("ck").methods


def test_dual_evidence_limits():
    g = torch.tensor([[[2.0, 0.0], [1.0, 0.5]]])  # peak-normalised: 1, 0, .5, .25
    o = torch.tensor([[[0.0, 4.0], [2.0, 1.0]]])  # peak-normalised: 0, 1, .5, .25
    dea = dual_evidence(g, o)[0]
    # Complete disagreement: the intervention's evidence is kept, the gradient's alone is dropped.
    assert dea[0, 0].item() == 0.0 and dea[0, 1].item() == 1.0
    # Agreement: their common value.
    assert dea[1, 0].item() == pytest.approx(0.5) and dea[1, 1].item() == pytest.approx(0.25)
    # Equal inputs: DEA is the peak-normalised map; a zero map stays zero.
    same = torch.rand(3, 4, 4)
    torch.testing.assert_close(dual_evidence(same, same), peak_normalise(same))
    assert torch.all(dual_evidence(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)) == 0)
    # Always between the two normalised maps; partial disagreement by hand: G=.8, O=.2 -> .2 + .4 * .6 / 2.
    a, b = torch.rand(5, 6, 6), torch.rand(5, 6, 6)
    ga, ob, fused = peak_normalise(a), peak_normalise(b), dual_evidence(a, b)
    assert torch.all(fused >= torch.minimum(ga, ob) - 1e-7) and torch.all(fused <= torch.maximum(ga, ob) + 1e-7)
    pair = dual_evidence(torch.tensor([[[0.8, 1.0]]]), torch.tensor([[[0.2, 1.0]]]))
    assert pair[0, 0, 0].item() == pytest.approx(0.2 + 0.4 * 0.6 / 2)
    # Vanishing gradients: DEA keeps the intervention's ranking.
    flat = dual_evidence(torch.zeros(1, 3, 3), b[:1, :3, :3])
    assert torch.equal(flat.flatten().argsort(), peak_normalise(b[:1, :3, :3]).flatten().argsort())


# A 4x4 map with a 2x2 ROI in the top-left corner.
MAP = np.array([[[4, 3, 0, 0], [2, 1, 0, 0], [0, 0, 0, 5], [0, 0, 0, 0]]], dtype=float)
ROI = np.zeros((1, 4, 4), dtype=bool)
ROI[0, :2, :2] = True


def test_leakage_metrics_by_hand():
    assert lk.leakage(MAP, ROI)[0] == pytest.approx(5 / 15)
    assert lk.relevance_mass(MAP, ROI)[0] == pytest.approx(10 / 15)
    # Top-4 pixels: 5, 4, 3, 2 -> three in the ROI.
    assert lk.relevance_rank(MAP, ROI)[0] == pytest.approx(3 / 4)
    # The maximum (5) sits at (2, 3): distance to the nearest ROI pixel (1, 1) is sqrt(1 + 4).
    assert lk.pointing_game(MAP, ROI, tolerance=2.2)[0] == 0.0
    assert lk.pointing_game(MAP, ROI, tolerance=2.3)[0] == 1.0
    # Energy: min-max normalised map = MAP / 5, so the same share as the relevance mass here.
    assert lk.energy_pointing_game(MAP, ROI)[0] == pytest.approx(10 / 15)
    shifted = MAP + 1  # min 1, max 6: energy (MAP) / 5 unchanged, but relevance mass becomes 14 / 31
    assert lk.energy_pointing_game(shifted, ROI)[0] == pytest.approx(10 / 15)
    assert lk.relevance_mass(shifted, ROI)[0] == pytest.approx(14 / 31)
    assert np.isnan(lk.leakage(MAP, np.zeros_like(ROI))[0]) and np.isnan(lk.leakage(0 * MAP, ROI)[0])


def test_robustness_similarities_by_hand():
    a = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    assert pearson(a, 2 * a + 1)[0] == pytest.approx(1.0)
    assert pearson(a, -a)[0] == pytest.approx(-1.0)
    assert spearman(a, a ** 3)[0] == pytest.approx(1.0)  # monotone: ranks agree
    assert np.isnan(pearson(a, np.ones_like(a))[0])
    # Top half (2 of 4 cells): {3, 2} vs {3, 1} -> IoU 1/3.
    assert iou_top(a, np.array([[[1.0, 3.0], [0.0, 4.0]]]), top=0.5)[0] == pytest.approx(1 / 3)


def test_max_sensitivity_of_a_linear_explainer():
    # phi(x) = 3x: ||phi(x+d) - phi(x)|| / ||phi(x)|| = ||d|| / ||x||; with radius r the worst draw is
    # below r sqrt(n) / ||x|| and, for many draws, close to it.
    x = torch.ones(2, 1, 4, 4)
    got = max_sensitivity(lambda z: {"linear": 3 * z[:, 0], "constant": 0 * z[:, 0] + 1}, x, radius=0.1, samples=50,
                          generator=torch.Generator().manual_seed(0))
    assert np.all(got["constant"] == 0.0)
    got = got["linear"]
    bound = 0.1 * 4 / 4
    assert np.all(got <= bound) and np.all(got > 0.6 * bound)
    # Given phi(x), the same draws give the same result without explaining x again.
    again = max_sensitivity(lambda z: {"linear": 3 * z[:, 0]}, x, radius=0.1, samples=50,
                            generator=torch.Generator().manual_seed(0), maps={"linear": 3 * x[:, 0]})
    np.testing.assert_array_equal(again["linear"], got)


class Branchy(nn.Module):
    """Conv + batch norm with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if x.sum() > 0 else -self.body(x)


class Reuse(nn.Module):
    """The ReLU's input is used again after it: it must not be overwritten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn(self.conv(x))
        return (self.relu(a) - a).mean(dim=(2, 3))


def test_scoring_model_folds_batch_norms_and_keeps_the_logits():
    torch.manual_seed(0)
    model = Branchy().eval()
    for m in model.modules():  # non-trivial running statistics, so folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    x = torch.randn(4, 3, 8, 8)
    assert scoring_model(model, x) is model  # untraceable: scored as it is
    fused = scoring_model(model.body, x)
    assert fused is not model.body and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model.body(x), rtol=1e-4, atol=1e-5)
    assert fused.get_submodule("2").inplace  # conv -> ReLU: the conv's output is used once
    reuse = Reuse().eval()
    fused = scoring_model(reuse, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) and not fused.get_submodule("relu").inplace
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reuse(x), rtol=1e-4, atol=1e-5)
    assert scoring_model(model.body.train(), x) is model.body  # training mode: batch statistics, nothing to fold
