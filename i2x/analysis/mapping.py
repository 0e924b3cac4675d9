"""Ridge maps (D8 in docs/ARCHITECTURE.md) from prototype-intensity changes to confidence changes, per step.

For each step s: X = ΔP[s] = P[s+1] - P[s] (n x k), Y = ΔŶ[s] = probs[s+1] - probs[s] (n x m);
scikit-learn Ridge without intercept, β[s] = coef_.T (k x m). The penalty is chosen by RidgeCV
(efficient leave-one-out over `alphas`, one alpha shared by all m outputs) unless `alpha` is given.
One global fit on all samples (noise included) and one per HDBSCAN group (noise left out).

Defaults chosen here where the design is silent:
- alphas = 13 values log-spaced over [1e-3, 1e3].
- A group gets its own fit only if it has at least `min_group_size` samples; default
  max(10, k // 2): 10 matches HDBSCAN's smallest default group (D7), and k // 2 keeps a group's
  fit from having far more coefficients per output than samples when k is large.
- Per-group fits choose their own alpha by RidgeCV (unless `alpha` is given).
- `r2_` is the in-sample R^2 of the global fit, variance-weighted over the m outputs
  (1 - total residual sum of squares / total centred sum of squares); it is a descriptive
  figure for the report, not a held-out score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score

from i2x.errors import UserError

#: Default RidgeCV grid: 13 values log-spaced over [1e-3, 1e3].
DEFAULT_ALPHAS: tuple[float, ...] = tuple(np.logspace(-3, 3, 13).tolist())


class RidgeMapping:
    """β[s, k, m]: how a change in prototype k's intensity moves the confidence in class m at step s.

    Learned: `beta_` [t-1, k, m] float32 (global), `alpha_` [t-1], `r2_` [t-1],
    `group_beta_` {(step, group): [k, m]}, `group_alpha_` and `group_size_` with the same keys,
    `min_group_size_` (the value used).
    """

    def __init__(self, alphas: Any = DEFAULT_ALPHAS, alpha: float | None = None,
                 min_group_size: int | None = None) -> None:
        self.alphas = alphas
        self.alpha = alpha
        self.min_group_size = min_group_size

    def _check_settings(self) -> None:
        if self.alpha is not None and not self.alpha > 0:
            raise UserError(f"ridge alpha must be > 0, got {self.alpha!r}")
        if self.alpha is None and (np.size(self.alphas) == 0 or np.any(np.asarray(self.alphas) <= 0)):
            raise UserError(f"ridge alphas must be a non-empty list of values > 0, got {self.alphas!r}")
        if self.min_group_size is not None and self.min_group_size < 1:
            raise UserError(f"min_group_size must be >= 1, got {self.min_group_size!r}")

    def _fit_one(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, float, Ridge | RidgeCV]:
        """(β [k, m], alpha used, fitted model) for one design."""
        if self.alpha is not None:
            model: Ridge | RidgeCV = Ridge(alpha=float(self.alpha), fit_intercept=False).fit(X, Y)
            return model.coef_.T, float(self.alpha), model
        model = RidgeCV(alphas=np.asarray(self.alphas, dtype=np.float64), fit_intercept=False).fit(X, Y)
        return model.coef_.T, float(model.alpha_), model

    def fit(self, P: Any, probs: Any, groups: Any = None) -> RidgeMapping:
        """Fit the global and per-group maps of every step: P [t, n, k], probs [t, n, m], groups [t-1, n] or None."""
        self._check_settings()
        t, n, k = tuple(P.shape)
        if tuple(probs.shape[:2]) != (t, n):
            raise ValueError(f"probs shape {tuple(probs.shape)} does not match P {tuple(P.shape)} (want [t, n, m])")
        if groups is not None and tuple(groups.shape) != (t - 1, n):
            raise ValueError(f"groups shape {tuple(groups.shape)} does not match (t-1, n) = {(t - 1, n)}")
        m = probs.shape[2]
        self.min_group_size_ = max(10, k // 2) if self.min_group_size is None else int(self.min_group_size)
        self.beta_ = np.zeros((t - 1, k, m), dtype=np.float32)
        self.alpha_ = np.zeros(t - 1)
        self.r2_ = np.zeros(t - 1)
        self.group_beta_: dict[tuple[int, int], np.ndarray] = {}
        self.group_alpha_: dict[tuple[int, int], float] = {}
        self.group_size_: dict[tuple[int, int], int] = {}
        P_prev, Y_prev = np.asarray(P[0], dtype=np.float64), np.asarray(probs[0], dtype=np.float64)
        for s in range(t - 1):
            P_next, Y_next = np.asarray(P[s + 1], dtype=np.float64), np.asarray(probs[s + 1], dtype=np.float64)
            X, Y = P_next - P_prev, Y_next - Y_prev
            beta, self.alpha_[s], model = self._fit_one(X, Y)
            self.beta_[s] = beta
            self.r2_[s] = r2_score(Y, model.predict(X), multioutput="variance_weighted")
            if groups is not None:
                self._fit_groups(s, X, Y, np.asarray(groups[s]))
            P_prev, Y_prev = P_next, Y_next
        return self

    def _fit_groups(self, step: int, X: np.ndarray, Y: np.ndarray, labels: np.ndarray) -> None:
        """Per-group fits of one step, for groups >= 0 with at least min_group_size_ samples."""
        ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
        for group, size in zip(ids.tolist(), sizes.tolist()):
            if size < self.min_group_size_:
                continue
            rows = labels == group
            beta, alpha, _ = self._fit_one(X[rows], Y[rows])
            key = (step, group)
            self.group_beta_[key] = beta.astype(np.float32)
            self.group_alpha_[key] = alpha
            self.group_size_[key] = size
