"""Minimal evidence: every loss term on a case with a known value or gradient, the generators, the batched
optimiser (seeded, batched = per image in shape), and the stage on the tiny pipeline run."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from i2x.attribution.mask_generators import PixelMask, UNetMask
from i2x.attribution.frozen import autocast_dtype, fold_batchnorm, frozen, pool_before_relu
from i2x.attribution.minimal_evidence import MinimalEvidence
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.devices import memory_size
from i2x.io.store import Store
from i2x.reporting import build_report
from i2x.metrics.evidence import (activation_matching, area, binarisation, compose, decision_loss, fill_of,
                                  iou_at_equal_area, kl_divergence, leakage, straight_through, total_variation)
from i2x.stages.evidence import study as evidence_stage
from i2x.stages.context import open_context
from i2x.stages.evidence.study import AUTO_BATCH_MAX, EvidenceConfig, auto_batch_size, evidence


# ---- loss terms ----------------------------------------------------------------------------------
def test_compose_keeps_the_image_under_the_mask_and_the_fill_elsewhere():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    m = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    out = compose(x, m, torch.tensor(-1.0))
    assert torch.equal(out, torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]]))


def test_activation_matching_maps_relative_error_and_linear_cosine():
    ref = torch.tensor([[[[1.0, 3.0]]]])  # mean square 5
    ev = torch.tensor([[[[2.0, 1.0]]]])  # squared errors 1 and 4 -> mean 2.5 -> relative 0.5
    assert activation_matching(ref, ev).item() == pytest.approx(0.5)
    assert activation_matching(ref, torch.zeros_like(ref)).item() == pytest.approx(1.0)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # orthogonal -> 1; parallel -> 0
    assert activation_matching(a, b).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_kl_divergence_known_value_and_zero_for_equal_logits():
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    ev = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(ref, ev).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(ev, ev).item() == pytest.approx(0.0, abs=1e-7)


def test_decision_loss_is_minus_log_p_and_its_gradient_is_p_minus_onehot():
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # p = [0.25, 0.75]
    loss = decision_loss(logits, torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.75))
    loss.sum().backward()
    assert logits.grad.tolist()[0] == pytest.approx([0.25, -0.25])


def test_area_binarisation_and_their_gradients():
    m = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]], requires_grad=True)
    assert area(m).item() == pytest.approx(0.5)
    assert binarisation(m).item() == pytest.approx((0.25 + 0.25) / 4)
    assert binarisation(torch.tensor([[[[1.0, 0.0]]]])).item() == 0.0
    binarisation(m).sum().backward()  # d/dm mean(m - m^2) = (1 - 2m) / 4
    assert m.grad.flatten().tolist() == pytest.approx([0.0, 0.0, -0.25, 0.25])
    g = torch.tensor([[[[0.3, 0.9]]]], requires_grad=True)
    area(g).sum().backward()
    assert g.grad.flatten().tolist() == pytest.approx([0.5, 0.5])


def test_total_variation_counts_edges():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :, :2] = 1.0  # one vertical edge across 4 rows: 4 horizontal jumps among 4*3 pairs; no vertical jumps
    assert total_variation(m).item() == pytest.approx(4 / 12)
    assert total_variation(torch.ones(2, 1, 3, 3)).tolist() == [0.0, 0.0]


def test_straight_through_is_binary_forward_identity_backward():
    m = torch.tensor([0.2, 0.6, 0.5], requires_grad=True)
    out = straight_through(m, 0.5)
    assert out.tolist() == [0.0, 1.0, 0.0]
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert m.grad.tolist() == [1.0, 2.0, 3.0]


def test_iou_at_equal_area_and_leakage():
    mask = torch.zeros(2, 2, 3, dtype=torch.bool)
    mask[0, 0, :2] = True  # keeps 2 pixels
    sal = torch.zeros(2, 2, 3)
    sal[0, 0, 1], sal[0, 0, 2] = 1.0, 0.9  # top-2 saliency = (0,1), (0,2): overlap 1, union 3
    got = iou_at_equal_area(mask, sal)
    assert got[0].item() == pytest.approx(1 / 3) and math.isnan(got[1].item())
    roi = torch.zeros(2, 2, 3, dtype=torch.bool)
    roi[0, 0, 0] = True
    leak = leakage(mask, roi)
    assert leak[0].item() == pytest.approx(0.5) and math.isnan(leak[1].item())


# ---- generators ----------------------------------------------------------------------------------
def test_pixel_mask_is_upsampled_coarse_logits():
    images = torch.zeros(3, 1, 32, 32)
    gen = PixelMask(images, resolution=8)
    assert gen.logits.shape == (3, 1, 8, 8)
    with torch.no_grad():
        gen.logits[1, 0, 0, 0] = -20.0
    m = gen()
    assert m.shape == (3, 1, 32, 32) and torch.allclose(m[0], torch.full_like(m[0], torch.sigmoid(torch.tensor(1.0))))
    assert m[1, 0, 0, 0] < 0.01 and m[1, 0, 16, 16] > 0.7  # only the top-left corner fades


def test_unet_mask_is_one_network_per_image():
    gen_images = torch.randn(3, 2, 12, 12)
    gen = UNetMask(gen_images, width=4, generator=torch.Generator().manual_seed(0))
    m = gen()
    assert m.shape == (3, 1, 12, 12) and ((m >= 0) & (m <= 1)).all()
    m[0].sum().backward()  # image 0's mask depends on network 0's weights only
    grad = gen.enc1_weight.grad.view(3, 4, 2, 3, 3)
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0


# ---- the optimiser -------------------------------------------------------------------------------
class Spot(nn.Module):
    """A classifier that reads one 4x4 spot of the image: class 1 when the spot is bright, else class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feat(x)
        s = a[:, 0, 2:6, 2:6].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(s) + 0.5, 4.0 * s], dim=1)


def _spot_images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
    x[:, :, 2:6, 2:6] = 1.0
    return x


def test_masks_keep_the_decision_on_the_spot_the_model_reads_and_are_seeded():
    model, x = Spot(), _spot_images(4)
    zero = torch.zeros(1, 1, 1, 1)
    one = torch.ones(1, 1, 1, 1)
    opt = MinimalEvidence(["feat"], resolution=8, iterations=40, seed=3)
    a = opt.explain(model, x, zero, one)
    assert a.target.tolist() == [1, 1, 1, 1] and a.kept.all()
    spot = torch.zeros(16, 16, dtype=torch.bool)
    spot[2:6, 2:6] = True
    on_spot = (a.masks & spot).flatten(1).sum(1).float() / a.masks.flatten(1).sum(1)
    assert (a.area < 0.5).all() and (on_spot > 0.5).all()  # the mask drops most of the image, keeps the spot
    b = opt.explain(model, x, zero, one)
    assert torch.equal(a.soft, b.soft) and torch.equal(a.masks, b.masks)
    c = MinimalEvidence(["feat"], resolution=8, iterations=40, seed=4).explain(model, x, zero, one)
    assert not torch.equal(a.soft, c.soft)  # the seed drives the noise
    assert all(p.requires_grad is False for p in model.parameters())


def test_fill_is_each_images_border_median_or_the_mean_or_black():
    x = torch.full((2, 2, 5, 5), 3.0)
    x[0, 0, 1:4, 1:4] = 9.0  # the inside does not count
    x[1, 1] = -1.0
    x[1, 1, 0, 0] = 7.0  # one odd border pixel does not move the median
    mean, std = torch.tensor([0.5, 0.25]).view(1, 2, 1, 1), torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)
    assert fill_of("border", x, mean, std).flatten().tolist() == [3.0, 3.0, 3.0, -1.0]
    assert fill_of("mean", x, mean, std).flatten().tolist() == [0.0, 0.0]
    assert fill_of("black", x, mean, std).flatten().tolist() == [-1.0, -1.0]  # pixel value 0 after normalisation


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1),
                          nn.BatchNorm2d(3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(3, 2, 6, 6))
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    return model.eval()


def test_batchnorm_folding_keeps_logits_and_hooks_and_is_undone():
    model, x = _conv_bn(), torch.randn(5, 2, 6, 6)
    with torch.no_grad():
        reference, bn_out = model(x), model[:2](x)
        originals = list(model)
        swapped = fold_batchnorm(model, {model[3]})  # the second conv's own output is hooked: left alone
        assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.BatchNorm2d) and len(swapped) == 2
        torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)
    model.train()
    with frozen(model, ["1"]) as hooks, torch.no_grad():
        model(x)
        torch.testing.assert_close(hooks.outputs["1"], F.relu(bn_out), rtol=1e-5, atol=1e-5)  # the hook on the BN
    for parent, name, module in reversed(swapped):
        parent._modules[name] = module
    assert list(model) == originals and model.training and all(p.requires_grad for p in model.parameters())


def test_relu_moves_after_max_pools_with_equal_values_and_gradients_and_is_undone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(4, 1, 8, 8)
    model(x)
    originals = list(model)

    def value_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        out.pow(2).sum().backward()
        return out.detach(), xi.grad

    reference, ref_grad = value_and_grad()
    swapped = pool_before_relu(model, {model[4]})  # the second ReLU is hooked: left in place
    assert isinstance(model[1], nn.MaxPool2d) and isinstance(model[2], nn.ReLU) and len(swapped) == 2
    assert isinstance(model[4], nn.ReLU) and isinstance(model[5], nn.MaxPool2d)
    out, grad = value_and_grad()
    assert torch.equal(out, reference) and torch.allclose(grad, ref_grad, atol=1e-6)
    for parent, name, module in reversed(swapped):
        parent._modules[name] = module
    assert list(model) == originals
    with frozen(model, ["7"]):  # nothing hooked inside: both pairs swap, both are put back
        assert [type(m) for m in model[1:6]] == [nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    assert list(model) == originals


def test_precision_auto_follows_the_cpus_bf16_support_and_masks_are_scored_in_float32(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype("float32", cpu) is None and autocast_dtype("bfloat16", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert autocast_dtype("auto", cpu) is None
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert autocast_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        MinimalEvidence(["feat"], precision="half")
    model, x = Spot(), _spot_images(4)
    zero, one = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    for precision in ("float32", "bfloat16"):
        masks = MinimalEvidence(["feat"], iterations=40, seed=3, precision=precision).explain(model, x, zero, one)
        assert masks.kept.all() and (masks.area < 0.5).all() and masks.kl.dtype == torch.float32


def test_memory_per_mask_counts_every_leaf_output_three_times():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    per_image = (2 * 16 + 2 * 16 + 32 + 3) * 4  # conv, ReLU, flatten, linear outputs of a 4x4 image, float32 bytes
    assert MinimalEvidence(["0"]).memory_per_mask(model, torch.randn(1, 1, 4, 4)) == 3 * per_image
    assert model.training  # frozen only while counting


def test_auto_batch_size_fits_a_quarter_of_the_memory_and_is_capped(monkeypatch):
    model, image = Spot(), _spot_images(1)
    optimiser = MinimalEvidence(["feat"])
    per_mask = optimiser.memory_per_mask(model, image)
    assert per_mask == 3 * 16 * 16 * 4  # the output of its one leaf module, the ReLU: 16x16 float32
    monkeypatch.setattr(evidence_stage, "memory_size", lambda _device: 4 * 7 * per_mask + 5)
    assert auto_batch_size(optimiser, model, image) == 7
    monkeypatch.setattr(evidence_stage, "memory_size", lambda _device: 10)
    assert auto_batch_size(optimiser, model, image) == 1
    monkeypatch.setattr(evidence_stage, "memory_size", lambda _device: None)
    assert auto_batch_size(optimiser, model, image) == AUTO_BATCH_MAX
    cpu = memory_size(torch.device("cpu"))
    assert cpu is not None and 0 < cpu <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ---- the stage -----------------------------------------------------------------------------------
def test_stage_writes_arrays_json_and_the_cli_runs(tiny_run, tmp_path):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out)
    reach = int(Store.open(out).read("sample_index").max()) + 1  # --limit's stratified sample spans the split
    roi = np.zeros((reach, 32, 32), dtype=bool)
    roi[:, 8:24, 8:24] = True
    np.save(tmp_path / "roi.npy", roi)
    result = evidence(out, samples="3,5,7", checkpoints="first,final", iterations=5, device="cpu",
                      roi=str(tmp_path / "roi.npy"), progress=False)
    store = Store.open(out)
    masks = store.read("evidence/masks")
    assert masks.shape == (2, 3, 32, 32)
    assert store.array("evidence/masks").metadata.dimension_names == ("u", "e", "y", "x")
    assert store.read("evidence/rows").tolist() == [3, 5, 7]
    np.testing.assert_allclose(store.read("evidence/area"), masks.reshape(2, 3, -1).mean(-1), rtol=1e-6)
    assert set(result["per_checkpoint"][0]["iou"]) == set(store.methods)
    expected_leak = 1 - (masks[..., 8:24, 8:24].sum((-2, -1)) / np.maximum(masks.sum((-2, -1)), 1))
    leak = store.read("evidence/leakage")
    np.testing.assert_allclose(leak[masks.sum((-2, -1)) > 0], expected_leak[masks.sum((-2, -1)) > 0], rtol=1e-5)
    written = json.loads((out / "evidence.json").read_text())
    assert written["samples"]["rows"] == [3, 5, 7] and len(written["checkpoints"]) == 2
    page = build_report(out, progress=False, pngs=False).read_text(encoding="utf-8")
    section = page[page.index('<section id="evidence"'):]
    section = section[:section.index("</section>")]
    assert section.count('<td class="who">') == 3 and section.count("<img") == 12  # image, CAM, mask, evidence
    assert 'id="chart-evidence-area"' in section
    used = "bfloat16" if autocast_dtype("auto", torch.device("cpu")) else "float32"
    assert written["settings"]["precision"] == "auto" and written["settings"]["precision_used"] == used
    assert f"{used} passes" in section
    assert main(["evidence", str(out), "--samples", "misclassified", "--max-samples", "2", "--checkpoints", "final",
                 "--iterations", "2", "--device", "cpu"]) == 0
    assert Store.open(out).read("evidence/masks").shape[:2] == (1, 2)


def test_without_a_batch_size_the_stage_batches_what_fits_and_reruns_the_same(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out)
    kw = dict(samples="3,5,7", checkpoints="final", iterations=5, device="cpu", progress=False)
    assert evidence(out, **kw)["settings"]["batch_size_used"] == 3  # plenty of memory: all three together
    store = Store.open(out)
    ctx = open_context(store, None, "cpu", 8)
    per_mask = MinimalEvidence([store.attrs["layer"]]).memory_per_mask(ctx.model, ctx.dataset[3][0][None])
    monkeypatch.setattr(evidence_stage, "memory_size", lambda _device: 4 * 2 * per_mask)  # room for two masks
    auto = evidence(out, **kw)
    masks = Store.open(out).read("evidence/masks")
    assert auto["settings"]["batch_size"] is None and auto["settings"]["batch_size_used"] == 2
    pinned = evidence(out, batch_size=2, **kw)
    assert pinned["per_sample"] == auto["per_sample"]
    np.testing.assert_array_equal(Store.open(out).read("evidence/masks"), masks)


def test_user_errors_name_the_option(tiny_run):
    with pytest.raises(UserError, match="--samples"):
        evidence(tiny_run, samples="bogus", progress=False)
    with pytest.raises(UserError, match="--threshold"):
        evidence(tiny_run, EvidenceConfig(threshold=1.5), progress=False)
    with pytest.raises(UserError, match="--checkpoints"):
        evidence(tiny_run, checkpoints="nope", progress=False)


def test_unet_generator_shrinks_masks_and_is_seeded():
    model, x = Spot(), _spot_images(3)
    zero, one = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    r = MinimalEvidence(["feat"], generator="unet", iterations=40, seed=0).explain(model, x, zero, one)
    assert (r.soft.flatten(1).mean(1) < 0.6).all()  # from 0.73 everywhere
    again = MinimalEvidence(["feat"], generator="unet", iterations=40, seed=0).explain(model, x, zero, one)
    assert torch.equal(r.soft, again.soft)
