"""Drift metrics on hand-built maps, with scipy's per-sample statistics as the independent check."""

import math

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from i2x.metrics.drift import (
    centroid,
    centroid_shift,
    concentration,
    concentration_change,
    drift_metrics,
    empty_either,
    iou_top,
    kendall_tau_b,
    rank_reversals,
    spearman,
    summarize,
    top_count,
    top_mask,
    without_empty,
)
from i2x.errors import UserError
from i2x.metrics.bootstrap import bootstrap_means, percentile_interval


def blob(h: int, w: int, row: int, col: int) -> np.ndarray:
    """A symmetric 3x3 blob centred at (row, col): its centroid is exactly (row, col)."""
    m = np.zeros((h, w))
    m[row - 1 : row + 2, col - 1 : col + 2] = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    return m


def random_maps(n=6, h=8, w=8, seed=0):
    return np.random.default_rng(seed).random((n, h, w))


def test_top_mask_takes_ceil_of_the_fraction_with_row_major_ties():
    assert top_count(64, 0.2) == 13 and top_count(36, 0.2) == 8 and top_count(30, 0.1) == 3 and top_count(10, 0.2) == 2
    maps = np.arange(20.0).reshape(1, 4, 5)
    mask = top_mask(maps, 0.2)  # 4 cells: the values 16..19, the last row but one cell
    assert mask.sum() == 4 and mask[0, 3, 1:].all()
    ties = top_mask(np.zeros((1, 2, 5)), 0.2)
    assert ties[0].flatten().tolist() == [True, True] + [False] * 8
    with pytest.raises(UserError, match="top"):
        top_mask(maps, 0.0)


def test_identical_maps_do_not_drift():
    a = random_maps()
    m = drift_metrics(a, a.copy())
    np.testing.assert_array_equal(m["iou"], 1.0)
    np.testing.assert_allclose(m["shift_px"], 0.0, atol=1e-12)
    np.testing.assert_allclose(m["spearman"], 1.0)
    np.testing.assert_allclose(m["concentration_change"], 0.0, atol=1e-12)


def test_empty_maps_count_for_no_metric():
    # Two all-zero maps would get IoU 1 from the row-major tie rule; without_empty leaves such pairs out.
    a, b = random_maps(4), random_maps(4, seed=1)
    a[1], b[2] = 0.0, 0.0
    raw = drift_metrics(a, b)
    assert raw["iou"][1] > 0  # the tie rule's artefact
    np.testing.assert_array_equal(empty_either(a, b), [False, True, True, False])
    kept = without_empty(raw, a, b)
    for name, values in kept.items():
        assert np.isnan(values[[1, 2]]).all()
        np.testing.assert_array_equal(values[[0, 3]], raw[name][[0, 3]])
    zero = np.zeros((1, 4, 4))
    tied = drift_metrics(zero, zero)
    assert tied["iou"][0] == 1.0 and np.isnan(without_empty(tied, zero, zero)["iou"][0])


@pytest.mark.parametrize("dr, dc", [(0, 3), (2, 0), (3, 4)])
def test_moved_blob_shifts_the_centroid_by_the_move(dr, dc):
    a = blob(16, 16, 5, 5)[None]
    b = blob(16, 16, 5 + dr, 5 + dc)[None]
    np.testing.assert_allclose(centroid(a), [[5.0, 5.0]])
    np.testing.assert_allclose(centroid(b), [[5.0 + dr, 5.0 + dc]])  # (row, col), not (x, y)
    px, frac = centroid_shift(a, b)
    assert px[0] == pytest.approx(math.hypot(dr, dc))
    assert frac[0] == pytest.approx(math.hypot(dr, dc) / math.hypot(16, 16))
    # The blob keeps its shape, so its concentration does not change.
    assert concentration_change(a, b)[0] == pytest.approx(0.0, abs=1e-12)


def test_disjoint_top_regions_have_zero_iou_and_partial_overlap_is_exact():
    rng = np.random.default_rng(1)
    a, b = np.zeros((1, 10, 10)), np.zeros((1, 10, 10))
    a[0, :, :3] = rng.random((10, 3)) + 1  # 30 positive cells on the left, top 20 among them
    b[0, :, 7:] = rng.random((10, 3)) + 1  # and on the right
    assert iou_top(a, b)[0] == 0.0
    # Top 4 of 20 cells: a's are flat 16..19, b's (shifted by 2) flat 14..17 -> overlap 2, union 6.
    c = np.arange(20.0).reshape(1, 4, 5)
    d = np.roll(np.arange(20.0), -2).reshape(1, 4, 5)  # value i + 2 at flat i: top 4 at flat 14..17
    assert iou_top(c, d, 0.2)[0] == pytest.approx(2 / 6)


def test_spearman_matches_scipy_including_ties_and_nan_for_constant_maps():
    a = np.round(random_maps(5, 6, 6, seed=2) * 4)  # few levels: many ties
    b = np.round(random_maps(5, 6, 6, seed=3) * 4)
    expected = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(spearman(a, b), expected, atol=1e-12)
    a[0] = 1.0
    assert np.isnan(spearman(a, b)[0]) and not np.isnan(spearman(a, b)[1:]).any()


def test_concentration_by_hand_and_zero_mass_is_nan():
    m = np.array([[[10.0, 9.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]])  # top 2 of 10 cells
    assert concentration(m)[0] == pytest.approx(19 / 20)
    assert np.isnan(concentration(np.zeros((1, 2, 5)))[0])
    assert np.isnan(centroid(np.zeros((1, 2, 5)))).all()


def test_scale_free_metrics_do_not_change_when_a_map_is_multiplied():
    a, b = random_maps(seed=4), random_maps(seed=5)
    before = drift_metrics(a, b)
    after = drift_metrics(a * 7.5, b * 0.01)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_summarize_per_class_and_overall():
    metrics = {"iou": np.array([0.2, 0.4, 0.9, np.nan]), "spearman": np.array([1.0, 0.0, 0.5, 0.5])}
    labels = np.array([1, 1, 0, 0])
    s = summarize(metrics, labels, class_names=["cat", "dog"])
    assert s["per_class"]["dog"]["iou"] == pytest.approx({"mean": 0.3, "median": 0.3, "std": 0.1, "n": 2})
    assert s["per_class"]["cat"]["iou"] == {"mean": 0.9, "median": 0.9, "std": 0.0, "n": 1}
    assert s["overall"]["iou"]["n"] == 3 and s["overall"]["iou"]["mean"] == pytest.approx(0.5)
    assert s["overall"]["spearman"]["median"] == pytest.approx(0.5)
    empty = summarize({"iou": np.array([np.nan])}, np.array([0]))
    assert empty["per_class"]["0"]["iou"] == {"mean": None, "median": None, "std": None, "n": 0}


def test_rank_reversals_finds_the_reversed_pair():
    stability = {
        "gradcampp": {"resnet": 0.9, "vgg": 0.7, "vit": 0.5, "only_here": 0.1},
        "layercam": {"resnet": 0.6, "vgg": 0.8, "vit": 0.4},
    }
    (comparison,) = rank_reversals(stability)
    assert comparison["methods"] == ["gradcampp", "layercam"]
    assert comparison["items"] == ["resnet", "vgg", "vit"]
    assert comparison["reversed_pairs"] == [["resnet", "vgg"]]
    # 3 pairs, 2 concordant, 1 discordant: tau = (2 - 1) / 3.
    assert comparison["kendall_tau"] == pytest.approx(1 / 3)
    assert comparison["kendall_tau"] == pytest.approx(kendalltau([0.9, 0.7, 0.5], [0.6, 0.8, 0.4]).statistic)
    three = rank_reversals({**stability, "gradcam": {"resnet": 3, "vgg": 2, "vit": 1}})
    assert [c["methods"] for c in three] == [["gradcampp", "layercam"], ["gradcampp", "gradcam"],
                                             ["layercam", "gradcam"]]
    assert three[1]["reversed_pairs"] == [] and three[1]["kendall_tau"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="gradcam_x"):
        rank_reversals(stability, methods=["gradcampp", "gradcam_x"])


def test_tau_not_defined_says_why_for_one_item_and_for_ties():
    one = rank_reversals({"gradcampp": {"3": 0.4}, "layercam": {"3": 0.6}}, noun="classes")[0]
    assert math.isnan(one["kendall_tau"]) and math.isnan(one["p_value"])
    assert one["undefined"] == "fewer than two classes are scored under both gradcampp and layercam (1)"
    assert one["reversed_pairs"] == [] and one["tied_pairs"] == []
    tied = rank_reversals({"gradcampp": {"a": 0.5, "b": 0.5, "c": 0.5}, "layercam": {"a": 0.1, "b": 0.2, "c": 0.3}})[0]
    assert math.isnan(tied["kendall_tau"]) and "under gradcampp (all tied)" in tied["undefined"]
    assert tied["reversed_pairs"] == [] and len(tied["tied_pairs"]) == 3  # ties are not reversals
    partly = rank_reversals({"x": {"a": 1.0, "b": 1.0, "c": 0.0}, "y": {"a": 0.0, "b": 1.0, "c": 2.0}})[0]
    assert partly["undefined"] is None
    assert partly["kendall_tau"] == pytest.approx(kendalltau([1.0, 1.0, 0.0], [0.0, 1.0, 2.0]).statistic)
    assert partly["tied_pairs"] == [["a", "b"]] and partly["reversed_pairs"] == [["a", "c"], ["b", "c"]]


def test_kendall_tau_b_matches_scipy_row_by_row():
    rng = np.random.default_rng(3)
    x, y = np.round(rng.random((40, 5)) * 3), np.round(rng.random((40, 5)) * 3)  # many ties
    expected = [kendalltau(a, b).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(kendall_tau_b(x, y), expected, atol=1e-12)
    assert np.isnan(kendall_tau_b(np.ones((1, 4)), np.arange(4.0)[None]))[0]


def _loop_bootstrap(values, replicates, seed):
    """The paired bootstrap written as a loop: one draw of sample positions per replicate, shared by all rows."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.shape[1], size=(replicates, values.shape[1]))
    return np.array([[np.nanmean(row[d]) if (~np.isnan(row[d])).any() else np.nan for row in values] for d in draws])


def test_bootstrap_means_share_the_draws_and_skip_nans(monkeypatch):
    import i2x.metrics.bootstrap as bootstrap

    rng = np.random.default_rng(0)
    values = rng.random((3, 25))
    values[1, ::3] = np.nan  # samples that do not count for row 1
    values[2, 1:] = np.nan  # row 2 counts one sample only: replicates that miss it have no mean
    got = bootstrap_means(values, 200, seed=7)
    expected = _loop_bootstrap(values, 200, 7)
    np.testing.assert_allclose(got, expected, equal_nan=True)
    assert np.isnan(got[:, 2]).any() and not np.isnan(got[:, :2]).any()
    monkeypatch.setattr(bootstrap, "_BLOCK_CELLS", 60)  # blocks of 2 replicates: the same stream of draws
    np.testing.assert_allclose(bootstrap_means(values, 200, seed=7), got, equal_nan=True)
    lo, hi = percentile_interval(got[:, 0], 0.9)
    assert lo == pytest.approx(np.percentile(got[:, 0], 5)) and hi == pytest.approx(np.percentile(got[:, 0], 95))
    assert percentile_interval(np.array([np.nan]), 0.9) == [None, None]


def test_reversal_inside_the_noise_is_called_that():
    # Two items; the methods order them oppositely. Scores per sample: under "m1" a leads b by a lot,
    # under "m2" b leads a by a hair, so only m1's difference is clear and the reversal is within noise.
    rng = np.random.default_rng(1)
    n = 400
    per_sample = {("m1", "a"): 0.8 + 0.05 * rng.standard_normal(n), ("m1", "b"): 0.4 + 0.05 * rng.standard_normal(n),
                  ("m2", "a"): 0.5 + 0.2 * rng.standard_normal(n), ("m2", "b"): 0.505 + 0.2 * rng.standard_normal(n)}
    keys = list(per_sample)
    reps = bootstrap_means(np.stack([per_sample[k] for k in keys]), 500, seed=0)
    scores = {m: {i: float(per_sample[(m, i)].mean()) for i in "ab"} for m in ("m1", "m2")}
    assert scores["m1"]["a"] > scores["m1"]["b"] and scores["m2"]["a"] < scores["m2"]["b"]
    replicates = {m: {i: reps[:, keys.index((m, i))] for i in "ab"} for m in ("m1", "m2")}
    (c,) = rank_reversals(scores, replicates=replicates, confidence=0.95)
    assert c["kendall_tau"] == pytest.approx(-1.0) and c["kendall_tau_interval"][0] == pytest.approx(-1.0)
    (rev,) = c["reversals"]
    assert rev["pair"] == ["a", "b"] and rev["within_noise"] is True
    assert rev["difference"]["m1"]["crosses_zero"] is False and rev["difference"]["m2"]["crosses_zero"] is True
    assert rev["difference"]["m1"]["estimate"] == pytest.approx(scores["m1"]["a"] - scores["m1"]["b"])
    d = reps[:, keys.index(("m2", "a"))] - reps[:, keys.index(("m2", "b"))]
    assert rev["difference"]["m2"]["interval"] == pytest.approx(list(np.percentile(d, [2.5, 97.5])))
    assert 0.1 < rev["share_reversed"] < 0.9  # m2's order flips in many resamples
    # With m2's gap made wide, the same reversal is clear.
    wide = {**per_sample, ("m2", "b"): per_sample[("m2", "b")] + 0.3}
    reps = bootstrap_means(np.stack([wide[k] for k in keys]), 500, seed=0)
    scores["m2"]["b"] = float(wide[("m2", "b")].mean())
    replicates = {m: {i: reps[:, keys.index((m, i))] for i in "ab"} for m in ("m1", "m2")}
    (rev,) = rank_reversals(scores, replicates=replicates)[0]["reversals"]
    assert rev["within_noise"] is False and rev["share_reversed"] > 0.95
