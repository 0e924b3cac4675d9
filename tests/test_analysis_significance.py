"""FlipSignificance on ΔP / ΔŶ arrays planted at the array level: null data, a class conflict, two-class tasks.

Each data set has what real maps have: sparse, skewed prototype intensity changes, stable real
prototype -> class associations of mixed strength, confidence changes summing to zero over the
classes, and noise that dwarfs any one coefficient. Conflicts are planted in ΔŶ; null data sets
have no planted link (their flips are the rule's own noise).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from i2x.analysis import RidgeMapping, Structure
from i2x.analysis.significance import FlipSignificance, benjamini_hochberg
from i2x.errors import UserError

SEEDS = range(5)


def planted(seed: int, m: int = 10, n: int = 600, k: int = 24, t: int = 10, real: float = 0.01,
            conflict: tuple[int, ...] | None = None, effect: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(P [t, n, k], Y [t, n, m]) from planted changes. ``conflict`` = the class prototype 0 pushes at each step
    (None: no conflict); ``real``: scale of the stable associations (0: a null data set)."""
    rng = np.random.default_rng(seed)
    dP = rng.gamma(2.0, 0.5, size=(t - 1, n, k)) * (rng.random((t - 1, n, k)) < 0.3)
    W = rng.normal(0.0, real, size=(k, m)) * (rng.random((k, m)) < 0.3)
    dY = np.einsum("snk,km->snm", dP, W) + rng.normal(0.0, 0.05, size=(t - 1, n, m))
    if conflict is not None:
        for s, c in enumerate(conflict):
            dY[s, :, c] += effect * dP[s, :, 0]
    dY -= dY.mean(axis=2, keepdims=True)  # confidences sum to one: their changes sum to zero
    P = np.concatenate([np.zeros((1, n, k)), np.cumsum(dP, axis=0)])
    Y = np.concatenate([np.zeros((1, n, m)), np.cumsum(dY, axis=0)])
    return P, Y


def significance(P: np.ndarray, Y: np.ndarray, **settings) -> FlipSignificance:
    mapping = RidgeMapping().fit(P, Y)
    return FlipSignificance(**settings).fit(P, Y, mapping.alpha_, mapping.beta_)


def within_spread(observed: int, mean_sd: tuple[float, float]) -> bool:
    mean, sd = mean_sd
    return abs(observed - mean) <= 2 * sd + 0.5


def test_standard_errors_match_the_ridge_fit_and_a_bootstrap():
    P, Y = planted(0, m=4, n=800, k=6, t=3)
    sig = significance(P, Y, null_runs=0)
    X, dY = P[1] - P[0], Y[1] - Y[0]
    alpha = RidgeMapping().fit(P, Y).alpha_[0]
    np.testing.assert_allclose(sig.beta_[0], Ridge(alpha=alpha, fit_intercept=False).fit(X, dY).coef_.T, atol=1e-6)
    rng = np.random.default_rng(1)
    boot = np.stack([Ridge(alpha=alpha, fit_intercept=False).fit(X[rows], dY[rows]).coef_.T
                     for rows in rng.integers(0, len(X), size=(300, len(X)))])
    ratio = sig.se_[0] / boot.std(axis=0)
    assert 0.8 < np.median(ratio) < 1.25, ratio  # the analytic errors agree with a bootstrap over samples


def significant(sig: FlipSignificance) -> list[int]:
    return [k for k, e in sig.evidence_.items() if e["significant"]]


@pytest.mark.parametrize("seed", SEEDS)
def test_null_data_flag_as_many_as_the_null_model_expects(seed):
    sig = significance(*planted(seed, real=0.0), null_runs=40, random_state=seed)
    assert within_spread(len(sig.flagged_), sig.expected_["flagged"]), (len(sig.flagged_), sig.expected_)
    mean, sd = sig.expected_["significant"]
    assert len(significant(sig)) <= mean + 2 * sd + 0.5, (significant(sig), sig.expected_)
    assert sig.expected_["flagged"][0] >= 2  # the bare floor rule does flag noise: the test has teeth


def test_real_associations_without_a_conflict_flag_nothing_significant():
    found = [significant(significance(*planted(seed), random_state=seed)) for seed in SEEDS]
    assert sum(map(len, found)) <= 1, found


CONFLICT = (1, 7, 1, 7, 1, 7, 1, 7, 1)


def test_planted_class_conflict_is_significant_in_most_seeds():
    hits = 0
    for seed in SEEDS:
        sig = significance(*planted(seed, conflict=CONFLICT, effect=0.025), random_state=seed)
        hits += sig.evidence_[0]["significant"] and sig.evidence_[0]["classes"] == [1, 7]
        assert len([k for k in significant(sig) if k != 0]) <= 1, significant(sig)
    assert hits >= 4


def test_evidence_states_the_rule():
    sig = significance(*planted(0, conflict=CONFLICT, effect=0.03))
    e = sig.evidence_[0]
    assert sig.z_ == pytest.approx(1.959964, abs=1e-5)
    assert e["significant_flips"] == len(e["flip_evidence"]) >= 2 and e["statistic"] >= sig.z_
    for f in e["flip_evidence"]:
        ends = (("before", f["from_class"], f["to_class"]), ("after", f["to_class"], f["from_class"]))
        for end, leader, other in ends:
            d = f[end]
            step = f["from_step"] if end == "before" else f["to_step"]
            assert d["difference"] == pytest.approx(sig.beta_[step, 0, leader] - sig.beta_[step, 0, other])
            assert d["low"] == pytest.approx(d["difference"] - sig.z_ * d["difference"] / d["z"])
            assert d["difference"] > 0
    assert e["p"] == pytest.approx(1 / (1 + sig.null_statistics_.size))  # stronger than every null run
    strict = significance(*planted(0, conflict=CONFLICT, effect=0.03), level=0.9999)
    assert strict.z_ > 3.8 and strict.evidence_[0]["significant_flips"] <= e["significant_flips"]


def test_two_class_margin_finds_a_pattern_that_changes_sides():
    hits, found = 0, []
    for seed in SEEDS:
        # prototype 0 helps class 1 early, class 0 in the middle and class 1 again late
        sig = significance(*planted(seed, m=2, conflict=(1, 1, 1, 0, 0, 0, 1, 1, 1), effect=0.025), random_state=seed)
        assert sig.view_ == "margin"
        hits += sig.evidence_[0]["significant"] and sig.evidence_[0]["classes"] == [0, 1]
        found.append(significant(sig))
    assert hits >= 4, found


@pytest.mark.parametrize("seed", SEEDS)
def test_two_class_run_without_conflict_flags_no_more_than_the_null(seed):
    sig = significance(*planted(seed, m=2), null_runs=40, random_state=seed)
    mean, sd = sig.expected_["significant"]
    assert len(significant(sig)) <= mean + 2 * sd + 0.5
    assert len(sig.flagged_) <= sig.expected_["flagged"][0] + 2 * sig.expected_["flagged"][1] + 0.5


def test_two_class_structure_runs_on_the_margin():
    beta = np.zeros((6, 2, 2))
    beta[:, 0, 1] = [0.5, -0.4, 0.6, -0.5, 0.1, 0.12]  # margin flips sign: + - + - (then below the floor)
    beta[:, 0, 0] = -beta[:, 0, 1]
    beta[:, 1, 1] = [0.3, 0.3, 0.3, 0.3, 0.3, 0.3]      # one class throughout
    model = Structure(noise_quantile=0.25).fit(beta, np.ones((4, 2), bool), np.array([0, 0, 1, 1]),
                                               np.full((6, 4), -1), np.array([[2, 0], [1, 1]]))
    assert model.view_ == "margin"
    assert [(u["prototype"], u["classes"], u["flips"], u["flip_steps"]) for u in model.uncertain_] == \
        [(0, [0, 1], 3, [1, 2, 3])]


def test_benjamini_hochberg():
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03, 1.0]), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 1.0])
    assert benjamini_hochberg([]).size == 0


def test_bad_settings_are_user_errors():
    P, Y = planted(0, m=3, n=50, k=4, t=3)
    with pytest.raises(UserError, match="level"):
        FlipSignificance(level=1.0).fit(P, Y, np.ones(2))
    with pytest.raises(UserError, match="null_runs"):
        FlipSignificance(null_runs=-1).fit(P, Y, np.ones(2))
