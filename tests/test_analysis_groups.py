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


def test_parallel_steps_give_the_same_labels():
    base, _, _ = planted_probs(n_per=60)
    rng = np.random.default_rng(3)
    probs = np.concatenate([base, base[-1:] + rng.normal(size=(1, *base.shape[1:])) * 0.05])  # a third step
    serial = ConfidenceGroups(min_cluster_size=10, n_jobs=1).fit(probs)
    parallel = ConfidenceGroups(min_cluster_size=10, n_jobs=2).fit(probs)
    assert serial.labels_.shape == (3, 180) and serial.n_groups_[0] == 3
    np.testing.assert_array_equal(parallel.labels_, serial.labels_)
    np.testing.assert_array_equal(parallel.n_groups_, serial.n_groups_)
    with pytest.raises(UserError, match="n_jobs"):
        ConfidenceGroups(n_jobs=0).fit(probs)


def test_fit_on_a_sample_predicts_the_other_samples_planted_groups():
    probs, step0, step1 = planted_probs(n_per=200)  # 600 samples
    model = ConfidenceGroups(min_cluster_size=30, max_fit_samples=200, random_state=1).fit(probs)
    assert model.fit_rows_.shape == (200,) and np.unique(model.fit_rows_).size == 200
    assert model.fit_min_cluster_size_ == 10 and model.min_cluster_size_ == 30  # 30 * 200 / 600
    rest = np.setdiff1d(np.arange(600), model.fit_rows_)
    for s, planted in enumerate((step0, step1)):
        assert adjusted_rand_score(planted[rest], model.labels_[s, rest]) > 0.95  # predicted, never fitted
        assert adjusted_rand_score(planted, model.labels_[s]) > 0.95
    np.testing.assert_array_equal(model.n_groups_, [3, 2])
    again = ConfidenceGroups(min_cluster_size=30, max_fit_samples=200, random_state=1).fit(probs)
    np.testing.assert_array_equal(again.labels_, model.labels_)  # seeded


def test_a_limit_above_n_changes_nothing():
    probs, _, _ = planted_probs()
    limited = ConfidenceGroups(min_cluster_size=10, max_fit_samples=10_000).fit(probs)
    plain = ConfidenceGroups(min_cluster_size=10).fit(probs)
    np.testing.assert_array_equal(limited.labels_, plain.labels_)
    assert limited.fit_rows_.size == 120 and limited.fit_min_cluster_size_ == 10
