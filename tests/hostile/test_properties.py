"""Property tests (hypothesis) for the pure numeric parts: prototype intensity, the drift metrics and the
deletion/insertion curves. Each property is one the maths implies for every input, so a failure is a
bug whatever the example: permutation and scaling equivariance, invariances, symmetry, ideal values
for identical maps, bounds, and agreement with an independent implementation (scipy's Spearman).

Maps are drawn as small integers times a power of two, so scaling is exact in floating point and the
ties that real CAMs have (zeros after the ReLU) come up often.
"""

from __future__ import annotations

import functools

import math

import numpy as np
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import spearmanr

from i2x.metrics.drift import drift_metrics, top_count
from i2x.analysis import intensity, presence_share
from i2x.metrics.faithfulness import auc, change_counts, perturbation_curves, pixel_order

SETTINGS = settings(max_examples=40, deadline=None)
POWERS_OF_TWO = st.sampled_from([2.0**e for e in range(-4, 7)])


@st.composite
def cams_and_assignments(draw):
    """(cams [t, n, h, w] float32 of non-negative small integers, assign [n, h, w] in [0, k), k)."""
    t, n, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    k = draw(st.integers(1, 6))
    cams = draw(arrays(np.float32, (t, n, h, w), elements=st.integers(0, 50).map(float)))
    assign = draw(arrays(np.int32, (n, h, w), elements=st.integers(0, k - 1)))
    return cams, assign, k


@st.composite
def map_pairs(draw, min_cells: int = 1):
    """Two stacks a, b [n, h, w] of non-negative small-integer maps."""
    n, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if h * w < min_cells:
        w = math.ceil(min_cells / h)
    maps = arrays(np.float64, (n, h, w), elements=st.integers(0, 20).map(float))
    return draw(maps), draw(maps)


# ---- intensity ---------------------------------------------------------------------------------------------
@SETTINGS
@given(cams_and_assignments(), st.randoms(use_true_random=False))
def test_intensity_permuting_samples_permutes_p_and_presence(inputs, random):
    cams, assign, k = inputs
    order = np.array(random.sample(range(assign.shape[0]), assign.shape[0]))
    P, present = intensity(cams, assign, k)
    P_perm, present_perm = intensity(cams[:, order], assign[order], k)
    np.testing.assert_array_equal(P_perm, P[:, order])
    np.testing.assert_array_equal(present_perm, present[order])


@SETTINGS
@given(cams_and_assignments(), POWERS_OF_TWO)
def test_intensity_scales_with_the_cams(inputs, c):
    cams, assign, k = inputs
    P, present = intensity(cams, assign, k)
    P_scaled, present_scaled = intensity(cams * np.float32(c), assign, k)
    np.testing.assert_array_equal(P_scaled, P * np.float32(c))
    np.testing.assert_array_equal(present_scaled, present)


@SETTINGS
@given(cams_and_assignments(), st.integers(1, 3))
def test_intensity_shapes_absence_mass_and_chunking(inputs, chunk):
    cams, assign, k = inputs
    t, n, h, w = cams.shape
    P, present = intensity(cams, assign, k)
    assert P.shape == (t, n, k) and P.dtype == np.float32 and present.shape == (n, k) and present.dtype == bool
    counts = np.stack([np.bincount(a.ravel(), minlength=k) for a in assign])
    np.testing.assert_array_equal(present, counts > 0)
    assert (P[:, ~present] == 0).all()  # an absent prototype reads 0, never evidence
    # mean times count gives back each sample's total CAM mass
    np.testing.assert_allclose((P * counts).sum(axis=2), cams.sum(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_allclose(presence_share(assign, k), counts / (h * w), rtol=1e-6)
    P_chunked, present_chunked = intensity(cams, assign, k, chunk=chunk)
    np.testing.assert_array_equal(P_chunked, P)
    np.testing.assert_array_equal(present_chunked, present)


# ---- drift metrics ---------------------------------------------------------------------------------------------
TOPS = st.sampled_from([0.1, 0.2, 0.25, 0.5, 1.0])


@SETTINGS
@given(map_pairs(), POWERS_OF_TWO, POWERS_OF_TWO, TOPS)
def test_drift_metrics_ignore_positive_scaling(pair, ca, cb, top):
    a, b = pair
    plain, scaled = drift_metrics(a, b, top), drift_metrics(a * ca, b * cb, top)
    for name in ("iou", "spearman"):
        np.testing.assert_array_equal(scaled[name], plain[name], err_msg=name)
    for name in ("shift_px", "shift_frac", "concentration_a", "concentration_b", "concentration_change"):
        np.testing.assert_allclose(scaled[name], plain[name], rtol=1e-12, atol=1e-12, err_msg=name)


@SETTINGS
@given(map_pairs(), TOPS)
def test_drift_metrics_are_symmetric_or_antisymmetric(pair, top):
    a, b = pair
    ab, ba = drift_metrics(a, b, top), drift_metrics(b, a, top)
    np.testing.assert_array_equal(ab["spearman"], ba["spearman"])
    np.testing.assert_allclose(ab["shift_px"], ba["shift_px"], rtol=1e-12)
    np.testing.assert_array_equal(ab["concentration_change"], -ba["concentration_change"])
    np.testing.assert_array_equal(ab["concentration_a"], ba["concentration_b"])
    # IoU of the top regions is symmetric when the regions are fixed; ties broken by position keep them so
    np.testing.assert_array_equal(ab["iou"], ba["iou"])


@SETTINGS
@given(map_pairs(), TOPS)
def test_identical_maps_give_the_ideal_values(pair, top):
    a, _ = pair
    m = drift_metrics(a, a.copy(), top)
    mass = a.sum(axis=(1, 2)) > 0
    constant = a.reshape(len(a), -1).std(axis=1) == 0
    np.testing.assert_array_equal(m["iou"], 1.0)
    np.testing.assert_array_equal(m["shift_px"][mass], 0.0)
    assert np.isnan(m["shift_px"][~mass]).all()  # zero mass has no centroid
    np.testing.assert_allclose(m["spearman"][~constant], 1.0, rtol=1e-12)
    assert np.isnan(m["spearman"][constant]).all()  # a constant map has no ranks to correlate
    np.testing.assert_array_equal(m["concentration_change"][mass], 0.0)


@SETTINGS
@given(map_pairs(min_cells=2), TOPS)
def test_drift_metrics_stay_in_range_and_spearman_matches_scipy(pair, top):
    a, b = pair
    n, h, w = a.shape
    m = drift_metrics(a, b, top)
    # two top regions of k cells on a grid of N share at least max(0, 2k - N) cells
    k, cells = top_count(h * w, top), h * w
    overlap = max(0, 2 * k - cells)
    assert ((m["iou"] >= overlap / (2 * k - overlap) - 1e-12) & (m["iou"] <= 1)).all()
    finite = ~np.isnan(m["spearman"])
    assert (np.abs(m["spearman"][finite]) <= 1 + 1e-12).all()
    # the top k cells of a non-negative map hold at least k / (h * w) of its mass, and at most all of it
    floor = k / cells
    conc = m["concentration_a"][a.sum(axis=(1, 2)) > 0]
    assert ((conc >= floor - 1e-12) & (conc <= 1 + 1e-12)).all()
    assert (m["shift_frac"][~np.isnan(m["shift_frac"])] <= 1 + 1e-12).all()  # within the grid's diagonal
    for i in np.flatnonzero(finite):
        expected = spearmanr(a[i].ravel(), b[i].ravel()).statistic
        assert math.isclose(m["spearman"][i], expected, rel_tol=1e-9, abs_tol=1e-12)


# ---- deletion / insertion curves ------------------------------------------------------------------------------
@st.composite
def curve_inputs(draw):
    """(a seeded linear classifier, images [b, c, h, w], saliency [b, h, w], targets [b], steps)."""
    b, c, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    classes, steps = draw(st.integers(2, 4)), draw(st.integers(1, 8))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, classes)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    images = torch.randn(b, c, h, w, generator=generator, dtype=torch.float64)
    saliency = torch.randint(0, 5, (b, h, w), generator=generator).double()  # ties on purpose
    targets = torch.randint(0, classes, (b,), generator=generator)
    return model, images, saliency, targets, steps


@SETTINGS
@given(curve_inputs(), st.sampled_from(["deletion", "insertion"]))
def test_curves_start_at_the_start_image_and_end_at_the_end_image(inputs, mode):
    model, images, saliency, targets, steps = inputs
    curves = perturbation_curves(model, images, saliency, targets, mode=mode, steps=steps, fill="mean",
                                 colour=torch.zeros(images.shape[1]))
    with torch.no_grad():
        p_image = model(images).softmax(1).gather(1, targets[:, None])[:, 0]
        p_blank = model(torch.zeros_like(images)).softmax(1).gather(1, targets[:, None])[:, 0]
    first, last = (p_image, p_blank) if mode == "deletion" else (p_blank, p_image)
    assert curves.shape == (len(images), steps + 1)
    torch.testing.assert_close(curves[:, 0], first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(curves[:, -1], last, rtol=1e-12, atol=1e-12)
    counts = change_counts(images.shape[-2] * images.shape[-1], steps)
    assert counts[0] == 0 and counts[-1] == images.shape[-2] * images.shape[-1] and (counts.diff() >= 0).all()
    areas = auc(curves)
    lowest, highest = curves.min(1).values.numpy(), curves.max(1).values.numpy()
    assert ((areas >= lowest - 1e-12) & (areas <= highest + 1e-12)).all()


@SETTINGS
@given(curve_inputs(), st.sampled_from(["deletion", "insertion"]), st.sampled_from(["road", "mean", "blur"]),
       st.randoms(use_true_random=False))
def test_permuting_samples_permutes_the_curves(inputs, mode, fill, random):
    """Every fill works per image (ROAD's imputation too; its noise is off here so the curves are deterministic)."""
    model, images, saliency, targets, steps = inputs
    curve = functools.partial(perturbation_curves, model, mode=mode, steps=steps, fill=fill, noise=0.0)
    order = torch.tensor(random.sample(range(len(images)), len(images)))
    curves = curve(images, saliency, targets)
    permuted = curve(images[order], saliency[order], targets[order])
    torch.testing.assert_close(permuted, curves[order], rtol=1e-10, atol=1e-12)
    # giving the order explicitly, or a positively scaled map, changes nothing
    by_order = curve(images, None, targets, order=pixel_order(saliency))
    torch.testing.assert_close(by_order, curves, rtol=0, atol=0)
    scaled = curve(images, saliency * 8, targets)
    torch.testing.assert_close(scaled, curves, rtol=0, atol=0)
