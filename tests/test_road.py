"""ROAD's noisy linear imputation and combined score, against pytorch-grad-cam's and in closed form."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics import road as reference
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from i2x.io.models import SmallCNN
from i2x.metrics.road import PERCENTILES, impute, removal_mask, road_scores


def _mask(h: int, w: int, seed: int) -> torch.Tensor:
    """Scattered pixels plus a block across the border: the cases the linear system must get right."""
    g = torch.Generator().manual_seed(seed)
    removed = torch.rand(h, w, generator=g) < 0.5
    removed[:4, -5:] = True
    return removed


def test_imputation_equals_pytorch_grad_cam_without_noise():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 12, 10)
    removed = torch.stack([_mask(12, 10, 0), _mask(12, 10, 1)])
    ours = impute(images, removed, noise=0.0)
    for i in range(2):
        theirs = reference.NoisyLinearImputer(noise=0.0)(images[i], (~removed[i]).float())
        torch.testing.assert_close(ours[i], theirs, atol=1e-6, rtol=0)
    assert torch.equal(ours[~removed[:, None].expand_as(images)], images[~removed[:, None].expand_as(images)])


def test_imputation_reproduces_a_linear_ramp_and_adds_the_stated_noise():
    # The weighted mean of a pixel's 8 neighbours (symmetric weights) equals a linear function's value at
    # the pixel, so away from the border a removed region of a ramp is filled exactly.
    i, j = torch.meshgrid(*[torch.arange(16, dtype=torch.float64)] * 2, indexing="ij")
    ramp = (0.3 * i - 0.2 * j + 1.0)[None, None]
    removed = torch.zeros(1, 16, 16, dtype=torch.bool)
    removed[0, 3:12, 4:13] = True
    removed[0, 1, 1] = True
    torch.testing.assert_close(impute(ramp, removed, noise=0.0), ramp, atol=1e-10, rtol=0)
    noisy = impute(ramp, removed, noise=0.01, generator=torch.Generator().manual_seed(0))
    diff = (noisy - ramp)[0, 0]
    assert diff[~removed[0]].abs().max() == 0
    assert diff[removed[0]].std().item() == pytest.approx(0.01, rel=0.15)
    # Every pixel removed: nothing to copy, the fallback colour (plus noise).
    everything = impute(ramp, torch.ones(1, 16, 16, dtype=torch.bool), noise=0.0, fallback=0.5)
    assert torch.all(everything == 0.5)


def test_removal_masks_follow_pytorch_grad_cam_percentiles():
    saliency = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3))
    morf, lerf = removal_mask(saliency, 70, "morf"), removal_mask(saliency, 70, "lerf")
    assert morf.sum(dim=(1, 2)).tolist() == [19, 19] and lerf.sum(dim=(1, 2)).tolist() == [19, 19]
    # MoRF removes the top of the map, LeRF its bottom.
    for b in range(2):
        assert saliency[b][morf[b]].min() > saliency[b][~morf[b]].max()
        assert saliency[b][lerf[b]].max() < saliency[b][~lerf[b]].min()


def test_combined_score_equals_pytorch_grad_cams(monkeypatch):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=8, in_channels=3).eval()
    images = torch.randn(4, 3, 16, 16)
    saliency = torch.rand(4, 16, 16)
    targets = torch.tensor([0, 1, 2, 1])
    # pytorch-grad-cam's ROAD classes build their imputer with noise 0.01 from the module's global name.
    class NoiseFree(reference.NoisyLinearImputer):
        def __init__(self) -> None:
            super().__init__(noise=0.0)

    monkeypatch.setattr(reference, "NoisyLinearImputer", NoiseFree)
    theirs = reference.ROADCombined(percentiles=list(PERCENTILES))(
        images, saliency.numpy(), [ClassifierOutputSoftmaxTarget(int(c)) for c in targets], model)
    ours = road_scores(model, images, saliency, targets, noise=0.0)
    np.testing.assert_allclose(ours["combined"], theirs, atol=1e-5)
    morf = reference.ROADMostRelevantFirstAverage(list(PERCENTILES))(
        images, saliency.numpy(), [ClassifierOutputSoftmaxTarget(int(c)) for c in targets], model)
    np.testing.assert_allclose(ours["morf"].mean(axis=1), morf, atol=1e-5)
