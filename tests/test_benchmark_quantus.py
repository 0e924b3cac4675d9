"""Our leakage and robustness metrics equal Quantus' on the same maps (Quantus 0.6, installed for the tests).

Quantus imports scikit-image and OpenCV at import time; the Makefile installs it without its
dependencies (its opencv-python would overwrite grad-cam's headless build), the test extra
carries what it imports.
"""

import numpy as np
import pytest
import torch
from torch import nn

from i2x.attribution import Attributor, display_maps, get_methods
from i2x.metrics import leakage as lk
from i2x.metrics.robustness import max_sensitivity

quantus = pytest.importorskip("quantus", minversion="0.6")


def maps_and_boxes(rng: np.random.Generator, n: int = 6, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Smooth non-negative maps (a bump at a random place on noise) and a random box per sample."""
    yy, xx = np.mgrid[:size, :size]
    maps, roi = np.empty((n, size, size)), np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        cy, cx = rng.uniform(0, size, 2)
        maps[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20) + 0.3 * rng.random((size, size))
        y0, x0 = rng.integers(0, size - 5, 2)
        roi[i, y0:y0 + rng.integers(3, 8), x0:x0 + rng.integers(3, 8)] = True
    return maps, roi


def test_leakage_metrics_equal_quantus_localisation_metrics():
    maps, roi = maps_and_boxes(np.random.default_rng(0))
    a, s = maps[:, None].astype(np.float32), roi[:, None].astype(np.float32)
    kw = dict(model=None, x_batch=np.zeros((len(maps), 3, 16, 16), np.float32), y_batch=np.zeros(len(maps), int),
              a_batch=a, s_batch=s)
    common = dict(normalise=False, abs=False, disable_warnings=True, display_progressbar=False)
    mass = quantus.RelevanceMassAccuracy(**common)(**kw)
    np.testing.assert_allclose(lk.relevance_mass(maps, roi), mass, rtol=1e-6)
    np.testing.assert_allclose(1 - lk.leakage(maps, roi), mass, rtol=1e-6)
    rank = quantus.RelevanceRankAccuracy(**common)(**kw)
    np.testing.assert_allclose(lk.relevance_rank(maps, roi), rank, rtol=1e-12)
    hits = quantus.PointingGame(**common)(**kw)
    np.testing.assert_array_equal(lk.pointing_game(maps, roi, tolerance=0), np.asarray(hits, dtype=float))
    assert 0 < np.mean(hits) < 1 and 0 < np.mean(rank) < 1  # the samples differ: the comparison is not vacuous


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_max_sensitivity_equals_quantus_on_gradcam_maps():
    # The same GradCAM explanations and the same uniform perturbations (replayed into Quantus):
    # Quantus 0.6 divides by ||phi(x)|| like captum, so the two must agree draw for draw.
    model = TinyNet().eval()
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1, 0])

    def gradcam(images: torch.Tensor) -> torch.Tensor:
        with Attributor(model, "features.3", get_methods(["gradcam"])) as attributor:
            cams = attributor.attribute(images.float(), y[:len(images)]).cams["gradcam"]
        return display_maps(cams.float(), (12, 12))  # [B, H, W]

    radius, samples = 0.3, 4
    ours = max_sensitivity(lambda z: {"gradcam": gradcam(z)}, x, radius, samples,
                           torch.Generator().manual_seed(2))["gradcam"]
    replay = torch.Generator().manual_seed(2)
    draws = [((torch.rand(x.shape, generator=replay) * 2 - 1) * radius).numpy() for _ in range(samples)]

    def perturb(arr: np.ndarray, **_: object) -> np.ndarray:
        return arr + draws.pop(0).reshape(arr.shape)

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
        return gradcam(torch.as_tensor(inputs)).numpy()[:, None]

    theirs = quantus.MaxSensitivity(nr_samples=samples, perturb_func=perturb, disable_warnings=True,
                                    display_progressbar=False)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=gradcam(x).numpy()[:, None],
        explain_func=explain, device="cpu", batch_size=len(x))
    assert not draws  # every replayed draw was used
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert np.all(np.asarray(theirs) > 0.05)  # the perturbation changes the maps: not a trivial 0 = 0
