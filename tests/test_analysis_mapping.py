"""Ridge maps against loop-built normal equations and brute-force leave-one-out alpha selection."""

import numpy as np
import pytest

from i2x.analysis import RidgeMapping
from i2x.errors import UserError


def random_inputs(t=4, n=30, k=5, m=3, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.random((t, n, k)).astype(np.float32)
    probs = rng.dirichlet(np.ones(m), size=(t, n)).astype(np.float32)
    groups = rng.integers(-1, 3, size=(t - 1, n)).astype(np.int32)
    return P, probs, groups


def differences(A, s, rows):
    """A[s+1] - A[s] restricted to `rows`, built element by element."""
    return np.array([[float(A[s + 1, i, j]) - float(A[s, i, j]) for j in range(A.shape[2])] for i in rows])


def ridge_reference(X, Y, alpha):
    """Ridge without intercept from its normal equations: (X'X + alpha I) beta = X'Y."""
    return np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ Y)


def loo_error(X, Y, alpha):
    """Leave-one-out squared error summed over samples and outputs, by refitting n times."""
    total = 0.0
    for i in range(X.shape[0]):
        keep = np.arange(X.shape[0]) != i
        residual = Y[i] - X[i] @ ridge_reference(X[keep], Y[keep], alpha)
        total += float(residual @ residual)
    return total


def test_fixed_alpha_matches_normal_equations_globally_and_per_group():
    P, probs, groups = random_inputs()
    model = RidgeMapping(alpha=0.5, min_group_size=4).fit(P, probs, groups)
    assert model.beta_.shape == (3, 5, 3) and model.beta_.dtype == np.float32
    for s in range(3):
        rows = range(30)
        X, Y = differences(P, s, rows), differences(probs, s, rows)
        np.testing.assert_allclose(model.beta_[s], ridge_reference(X, Y, 0.5), rtol=1e-5, atol=1e-6)
        assert model.alpha_[s] == 0.5
        residual = Y - X @ model.beta_[s].astype(np.float64)
        expected_r2 = 1 - (residual ** 2).sum() / ((Y - Y.mean(axis=0)) ** 2).sum()
        assert model.r2_[s] == pytest.approx(expected_r2, rel=1e-5, abs=1e-6)
        for g in range(3):
            members = [i for i in range(30) if groups[s, i] == g]
            key = (s, g)
            if len(members) < 4:
                assert key not in model.group_beta_
                continue
            Xg, Yg = differences(P, s, members), differences(probs, s, members)
            np.testing.assert_allclose(model.group_beta_[key], ridge_reference(Xg, Yg, 0.5), rtol=1e-5, atol=1e-6)
            assert model.group_size_[key] == len(members)
    assert all(g >= 0 for _, g in model.group_beta_)  # noise (-1) never gets its own fit


def test_ridgecv_picks_the_brute_force_leave_one_out_alpha():
    rng = np.random.default_rng(1)
    t, n, k, m = 3, 25, 5, 3
    P = rng.normal(size=(t, n, k))
    probs = np.zeros((t, n, m))
    for s in range(t - 1):  # a weak linear signal in strong noise, so the best alpha is inside the grid
        probs[s + 1] = probs[s] + (P[s + 1] - P[s]) @ rng.normal(size=(k, m)) * 0.3 + rng.normal(size=(n, m))
    alphas = list(np.logspace(-2, 3, 11))
    model = RidgeMapping(alphas=alphas).fit(P, probs)
    for s in range(t - 1):
        X, Y = differences(P, s, range(n)), differences(probs, s, range(n))
        best = min(alphas, key=lambda a: loo_error(X, Y, a))
        assert alphas[0] < best < alphas[-1]
        assert model.alpha_[s] == pytest.approx(best)
        np.testing.assert_allclose(model.beta_[s], ridge_reference(X, Y, best), rtol=1e-5, atol=1e-6)
    assert model.group_beta_ == {}


def test_planted_linear_map_is_recovered():
    rng = np.random.default_rng(2)
    t, n, k, m = 3, 400, 4, 3
    P = np.cumsum(rng.normal(size=(t, n, k)), axis=0)
    true_beta = rng.normal(size=(t - 1, k, m))
    probs = np.zeros((t, n, m))
    for s in range(t - 1):
        probs[s + 1] = probs[s] + (P[s + 1] - P[s]) @ true_beta[s]
    model = RidgeMapping(alpha=1e-6).fit(P, probs)
    np.testing.assert_allclose(model.beta_, true_beta, atol=1e-5)
    np.testing.assert_allclose(model.r2_, 1.0, atol=1e-9)


def test_default_min_group_size_and_user_errors():
    P, probs, groups = random_inputs(k=32)
    assert RidgeMapping(alpha=1.0).fit(P, probs, groups).min_group_size_ == 16
    assert RidgeMapping(alpha=1.0).fit(P[:, :, :6], probs, groups).min_group_size_ == 10
    with pytest.raises(UserError, match="alpha"):
        RidgeMapping(alpha=0.0).fit(P, probs)
    with pytest.raises(UserError, match="alphas"):
        RidgeMapping(alphas=[-1.0, 1.0]).fit(P, probs)
