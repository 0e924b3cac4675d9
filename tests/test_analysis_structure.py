"""Structure on hand-built β / presence / groups where shared, specialized and uncertain are known by construction."""

import numpy as np
import pytest

from i2x.analysis import Structure, top_confused_pairs
from i2x.errors import UserError

# 60 samples: 0-19 class 0, 20-39 class 1, 40-59 class 2; 7 prototypes; 6 steps; 3 classes.
LABELS = np.repeat(np.arange(3), 20)


def presence():
    present = np.zeros((60, 7), dtype=bool)
    present[:, 0] = True          # everywhere
    present[40:59, 1] = True      # 19 of 20 class-2 samples (95%)
    present[20:28, 2] = True      # 8 of 20 class-1 samples (40%): specialized candidate
    present[28:31, 3] = True      # 3 class-1 samples
    present[0:12, 4] = True       # 12 of 20 class-0 samples (60%): too common to be specialized
    present[:, 5] = True          # everywhere
    return present


def betas():
    beta = np.zeros((6, 7, 3))
    beta[:, 0] = [0.4, 0.3, -0.6]     # strongest class 0 throughout; sum > 0 for classes 0 and 1
    beta[:, 1] = [-0.2, -0.2, 0.6]    # strongest class 2 throughout
    beta[:, 2] = [0.1, 0.5, -0.1]     # strongest class 1 throughout
    beta[:, 3] = -0.5                 # flips 0,1,0,1,0,1 strongly: 5 flips of the pair (0, 1)
    beta[[0, 2, 4], 3, 0] = 1.0
    beta[[1, 3, 5], 3, 1] = 1.0
    beta[[0, 2, 4], 4, 1] = 0.05      # flips 1,2,1,2,... but below the noise floor
    beta[[1, 3, 5], 4, 2] = 0.05
    beta[:, 5] = -0.3                 # strongest classes 0, (2 below floor), 1, 2, 1, 2
    beta[0, 5, 0] = 0.8
    beta[1, 5, 2] = 0.02
    beta[[2, 4], 5, 1] = 0.8
    beta[[3, 5], 5, 2] = 0.8
    return beta                       # prototype 6: all zero


def group_labels():
    groups = np.full((6, 60), -1)
    groups[1, 20:28] = 0              # 8 class-1 samples, all holding prototype 2 ...
    groups[1, 0:2] = 0                # ... plus 2 class-0 samples (too few to count for class 0)
    groups[1, 28:31] = 1              # 3 class-1 samples with prototype 3: below min_group_samples
    groups[3, 0:12] = 0               # class-0 samples with prototype 4, but 4 is in 60% of class 0
    groups[3, 20:27] = 1              # 7 class-1 samples with prototype 2
    return groups


CONFUSION = np.array([[10, 5, 1], [4, 12, 3], [0, 0, 15]])  # symmetrised: (0,1) 9, (1,2) 3, (0,2) 1


def fit(**settings):
    return Structure(**settings).fit(betas(), presence(), LABELS, group_labels(), CONFUSION)


def test_shared_by_construction():
    model = fit()
    # class 1: prototypes 0 (sum 1.8) and 5 (sum 0.4), strongest first; class 2: 1 (3.6) and 5 (0.72);
    # prototype 0 is in every class-2 sample but pushes class 2 down, so it is not shared there.
    assert model.shared_ == {0: [0], 1: [0, 5], 2: [1, 5]}
    np.testing.assert_allclose(model.presence_rate_[2, 1], 0.95)
    np.testing.assert_allclose(model.beta_sum_[5], [-0.7, 0.4, 0.72])


def test_specialized_by_construction():
    model = fit()
    assert model.specialized_ == {0: [], 1: [(2, 1, 0), (2, 3, 1)], 2: []}
    # lowering min_group_samples lets the 3-sample group through for prototype 3
    assert fit(min_group_samples=3).specialized_[1] == [(2, 1, 0), (2, 3, 1), (3, 1, 1)]


def test_uncertain_by_construction():
    model = fit(top_confused=1)
    floor = np.quantile(np.abs(betas()), 0.75)
    assert 0.05 < floor < 0.8 and model.noise_floor_ == pytest.approx(floor)
    assert model.uncertain_ == [
        {"prototype": 3, "classes": [0, 1], "flips": 5, "score": pytest.approx(5.0),
         "flip_steps": [1, 2, 3, 4, 5], "in_top_confused": True},
        # the below-floor step 1 is skipped: 0, 1, 2, 1, 2 -> (1, 2) flips 3 times
        {"prototype": 5, "classes": [1, 2], "flips": 3, "score": pytest.approx(3 * 0.8),
         "flip_steps": [3, 4, 5], "in_top_confused": False},
    ]  # prototype 4 flips just as often, but below the noise floor
    assert [u["in_top_confused"] for u in fit(top_confused=2).uncertain_] == [True, True]


def test_the_noise_floor_is_what_hides_weak_flips():
    model = fit(noise_quantile=0.0)  # floor = 0: every positive strongest β counts
    found = {u["prototype"]: u for u in model.uncertain_}
    assert set(found) == {3, 4, 5}  # prototype 6 (all zero) still never counts
    assert found[4]["classes"] == [1, 2] and found[4]["flips"] == 5
    assert found[4]["score"] == pytest.approx(5 * 0.05)
    # now step 1 counts: 0, 2, 1, 2, 1, 2 -> (1, 2) flips 4 times; ends hold one 0.02 and seven 0.8
    assert found[5]["flips"] == 4 and found[5]["flip_steps"] == [2, 3, 4, 5]
    assert found[5]["score"] == pytest.approx(4 * (0.02 + 7 * 0.8) / 8)
    assert [u["prototype"] for u in model.uncertain_] == [3, 5, 4]
    assert fit(min_flips=4).uncertain_[0]["prototype"] == 3 and len(fit(min_flips=4).uncertain_) == 1


def test_thresholds_are_reported():
    model = fit()
    assert model.thresholds_["noise_floor"] == model.noise_floor_
    assert {"shared_presence": 0.9, "specialized_presence": 0.9, "specialized_max_overall": 0.5,
            "noise_quantile": 0.75, "min_flips": 2, "top_confused": 3}.items() <= model.thresholds_.items()


def test_top_confused_pairs():
    assert top_confused_pairs(CONFUSION, 2) == [(0, 1, 9), (1, 2, 3)]
    assert top_confused_pairs(np.eye(3, dtype=int), 3) == []  # no confusion at all
    assert top_confused_pairs(np.array([[0, 2, 2], [0, 0, 0], [0, 0, 0]]), 1) == [(0, 1, 2)]  # tie: smaller pair


def test_bad_thresholds_are_user_errors():
    with pytest.raises(UserError, match="noise_quantile"):
        fit(noise_quantile=1.5)
    with pytest.raises(UserError, match="min_flips"):
        fit(min_flips=0)
