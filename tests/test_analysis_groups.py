"""Confidence groups: planted clusters of ΔŶ recovered; degenerate steps give all noise."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from i2x.analysis import ConfidenceGroups
from i2x.errors import UserError


def planted_probs(n_per=40, m=4, seed=0):
    """probs [3, n, m]: step 0 moves samples in 3 tight planted directions, step 1 in 2 others."""
    rng = np.random.default_rng(seed)
    n = 3 * n_per
    base = rng.dirichlet(np.ones(m), size=n)
    step0 = np.repeat(np.arange(3), n_per)
    step1 = rng.permutation(np.arange(n) % 2)
    moves0 = np.array([[0.3, -0.3, 0, 0], [0, 0, 0.3, -0.3], [-0.3, 0, 0, 0.3]])
    moves1 = np.array([[0.2, 0.2, -0.2, -0.2], [-0.2, -0.2, 0.2, 0.2]])
    p1 = base + moves0[step0] + rng.normal(size=(n, m)) * 0.005
    p2 = p1 + moves1[step1] + rng.normal(size=(n, m)) * 0.005
    return np.stack([base, p1, p2]), step0, step1


def test_planted_groups_are_recovered():
    probs, step0, step1 = planted_probs()
    model = ConfidenceGroups(min_cluster_size=10).fit(probs)
    assert model.labels_.shape == (2, 120) and model.labels_.dtype == np.int32
    assert adjusted_rand_score(step0, model.labels_[0]) > 0.99
    assert adjusted_rand_score(step1, model.labels_[1]) > 0.99
    np.testing.assert_array_equal(model.n_groups_, [3, 2])


def test_default_min_cluster_size():
    probs, _, _ = planted_probs(n_per=400)
    assert ConfidenceGroups().fit(probs).min_cluster_size_ == 12  # max(10, 1200 // 100)
    assert ConfidenceGroups().fit(probs[:, :300]).min_cluster_size_ == 10


def test_degenerate_steps_are_all_noise():
    probs, _, _ = planted_probs()
    frozen = np.stack([probs[0], probs[0], probs[1]])  # step 0: no change at all
    model = ConfidenceGroups(min_cluster_size=10).fit(frozen)
    assert np.all(model.labels_[0] == -1) and model.n_groups_[0] == 0
    assert model.n_groups_[1] == 3
    few = ConfidenceGroups(min_cluster_size=10).fit(probs[:, :7])  # fewer samples than min_cluster_size
    assert np.all(few.labels_ == -1)
    np.testing.assert_array_equal(few.n_groups_, [0, 0])


def test_user_errors():
    probs, _, _ = planted_probs()
    with pytest.raises(UserError, match="at least 2 checkpoints"):
        ConfidenceGroups().fit(probs[:1])
    with pytest.raises(UserError, match="min_cluster_size"):
        ConfidenceGroups(min_cluster_size=0).fit(probs)
