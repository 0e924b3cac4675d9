"""Paired differences over seeds: exact p-values on fixed numbers, the interval's coverage on known normal data."""

import numpy as np
import pytest
from scipy import stats

from i2x.metrics.paired import paired_difference


def test_fixed_differences_against_direct_computation():
    d = [-3, -1, -2, 0, 1, -4, -2, -1, 0, -5]
    r = paired_difference(d)
    nonzero = [v for v in d if v]
    assert r["n"] == 10 and (r["positive"], r["negative"], r["zero"]) == (1, 7, 2)
    assert r["mean"] == pytest.approx(-1.7) and r["std"] == pytest.approx(np.std(d, ddof=1))
    # sign test: 1 positive of 8 non-zero, two-sided exact binomial = 2 * (1 + 8) / 2**8
    assert r["sign_p"] == pytest.approx(2 * 9 / 256)
    assert r["wilcoxon_p"] == pytest.approx(stats.wilcoxon(nonzero).pvalue)
    lo, hi = r["ci"]
    assert lo < -1.7 < hi < 0


def test_all_positive_five_seeds_have_the_exact_p_of_one_sixteenth():
    r = paired_difference([1, 2, 3, 4, 5])
    assert r["sign_p"] == pytest.approx(1 / 16) and r["wilcoxon_p"] == pytest.approx(1 / 16)
    assert r["ci"][0] >= 1 and r["ci"][1] <= 5


def test_undefined_cases():
    zero = paired_difference([0, 0, 0])
    assert zero["wilcoxon_p"] is None and zero["sign_p"] is None and zero["ci"] == [0.0, 0.0]
    assert zero["std"] == 0.0
    empty = paired_difference([])
    assert empty["mean"] is None and empty["ci"] == [None, None]
    one = paired_difference([2.5])
    assert one["std"] == 0.0 and one["ci"] == [2.5, 2.5] and one["sign_p"] == 1.0


def test_interval_covers_the_known_mean_about_as_often_as_claimed():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 300
    for t in range(trials):
        d = rng.normal(-2.0, 3.0, size=30)
        lo, hi = paired_difference(d, replicates=1000, seed=t)["ci"]
        hits += lo <= -2.0 <= hi
    # the percentile bootstrap under-covers slightly at n=30; binomial sd of the rate is ~0.013
    assert 0.89 <= hits / trials <= 0.98


def test_no_difference_is_rarely_significant_and_a_shift_usually_is():
    rng = np.random.default_rng(1)
    null = [paired_difference(rng.normal(0, 1, 10), replicates=10)["wilcoxon_p"] for _ in range(200)]
    shifted = [paired_difference(rng.normal(1.5, 1, 10), replicates=10)["wilcoxon_p"] for _ in range(200)]
    assert np.mean(np.array(null) < 0.05) < 0.1
    assert np.mean(np.array(shifted) < 0.05) > 0.8
