"""Whether an uncertain prototype's flips are more than noise: ridge standard errors and a permutation null.

Uncertainty of β (analytic: the ridge's own standard errors at each step's chosen penalty λ). For
X = ΔP[s] (n x k), Y = ΔŶ[s] (n x m), A = (X'X + λI)^-1 and β = A X'Y, with H = A X' and residuals
R = Y - Xβ, the heteroscedasticity-robust (sandwich, HC1) covariance of prototype k's coefficients is

    Cov(β[k, a], β[k, b]) = n / (n - tr(A X'X)) · Σ_i H[k, i]² R[i, a] R[i, b],

conditional on X and λ, as the fit is. Robust because confidence changes are far from homoscedastic
(most samples barely move, a few jump), which the textbook σ²·A X'X A understates. Chosen over a
bootstrap because it costs O(n k m²) per step, about the fit's own cost, where a bootstrap of
B = 50-100 refits multiplies the mapping's cost by B; and the difference of two classes'
coefficients is tested directly, with its covariance, so the strong correlation of the outputs
(the m confidences sum to one, so their changes sum to zero) is accounted for.

The rule, at ``level`` (0.95: z = Φ^-1(0.975) = 1.96), replaces the structure's quantile noise floor
by β's own errors: at step s, prototype k's leading class a *counts* when the level interval of
β[s, k, a] - β[s, k, r] lies above 0, r the runner-up (z_lead = that difference over its standard
error >= z); a *significant flip* is a change of the leading class between consecutive counted steps,
so at both of its ends the interval of the leader's coefficient excludes the runner-up's, and with it
every other class's. The pair with the most flips is the prototype's pair (as in the structure), and
k is flagged by the intervals when it has ``min_flips`` or more. With two classes the difference is
the margin μ = β[..., 1] - β[..., 0] (see :mod:`i2x.analysis.structure`): its interval excludes 0
with opposite signs at the two ends of each flip. The *statistic* of k is the largest z at which it
still has min_flips flips between one pair (-inf if never), so it is >= z when k is flagged.

Null model: each step's ΔŶ rows are permuted across samples (independently per step), ``null_runs``
times, which breaks any link between prototype changes and confidence changes while keeping both
distributions; X, and so A G A, stay. Each run goes through the same rule (its own floor, flips,
statistics) at the observed λ. Expected counts are the mean ± sd over runs of the prototypes the
floor rule flags and of the *significant* ones, by the very rule the observed ones pass (intervals and q <= fdr,
each run's p against the other runs' statistics), so the two counts compare like with like. p of a flagged prototype = (1 + #null statistics >= its statistic) /
(1 + runs·K), pooled over every run's prototypes (z has no scale, and runs alone would give p no finer
than 1/(runs + 1)); q = Benjamini-Hochberg over all K prototypes. A prototype is *significant* when
the intervals flag it and q <= ``fdr``. The null runs also count what the structure's floor rule flags.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from i2x.analysis.structure import strongest_flips, two_class_view
from i2x.errors import UserError

#: Null runs are permuted in chunks of at most this many elements (runs x n x m), to bound memory.
NULL_CHUNK_ELEMENTS = 4_000_000


def _pick(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c[s, k, a[s, k], b[s, k]] for c [s, k, m, m]."""
    return np.take_along_axis(np.take_along_axis(c, a[:, :, None, None], 2)[:, :, 0], b[:, :, None], 2)[:, :, 0]


def benjamini_hochberg(p: Any) -> np.ndarray:
    """Benjamini-Hochberg q values of the p values ``p`` (same order)."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.empty_like(p)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


class FlipSignificance:
    """Standard errors of β, the significance of each flip, a permutation null, p and q per prototype.

    Learned: `beta_` [s, k, m] (the observed β the rules ran on), `se_` [s, k, m] (standard error of
    each coefficient), `z_` (the interval's half-width in standard errors), `flagged_` (prototypes the
    floor rule flags), `evidence_` {k: dict} (per prototype: statistic, p, q, significant,
    significant_flips, classes, score, flip_steps, flip_evidence with each flip's two intervals),
    `p_` [k], `q_` [k], `statistic_` [k], `null_flagged_` [runs], `null_significant_` [runs],
    `null_statistics_` [runs, k], `expected_` {"flagged": (mean, sd), "significant": (mean, sd)}, `view_`.
    """

    def __init__(self, level: float = 0.95, null_runs: int = 20, fdr: float = 0.1, noise_quantile: float = 0.75,
                 min_flips: int = 2, random_state: int = 0) -> None:
        self.level = level
        self.null_runs = null_runs
        self.fdr = fdr
        self.noise_quantile = noise_quantile
        self.min_flips = min_flips
        self.random_state = random_state

    def _check_settings(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise UserError(f"significance level must lie in (0, 1), got {self.level!r}")
        if not 0.0 < self.fdr <= 1.0:
            raise UserError(f"false discovery rate must lie in (0, 1], got {self.fdr!r}")
        if not 0.0 <= self.noise_quantile <= 1.0:
            raise UserError(f"noise_quantile must lie in [0, 1], got {self.noise_quantile!r}")
        for name, low in (("null_runs", 0), ("min_flips", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")

    def fit(self, P: Any, probs: Any, alpha: Any, beta: Any = None) -> FlipSignificance:
        """P [t, n, k], probs [t, n, m] (read one checkpoint at a time), alpha [t-1] (the λ of each step).

        ``beta`` [t-1, k, m]: the mapping's β, so that the rule flags exactly what the structure does
        (default: β recomputed here, equal up to rounding).
        """
        self._check_settings()
        t, n, k = tuple(P.shape)
        m = int(probs.shape[2])
        alpha = np.asarray(alpha, dtype=np.float64)
        if alpha.shape != (t - 1,):
            raise ValueError(f"alpha shape {alpha.shape} does not match t-1 = {t - 1} steps")
        rng = np.random.default_rng(self.random_state)
        runs = int(self.null_runs)
        own_beta = np.zeros((t - 1, k, m))
        cov = np.zeros((t - 1, k, m, m))  # Cov(β[s, k, a], β[s, k, b])
        null_beta = np.zeros((runs, t - 1, k, m))
        null_cov = np.zeros((runs, t - 1, k, m, m))
        P_prev, Y_prev = np.asarray(P[0], dtype=np.float64), np.asarray(probs[0], dtype=np.float64)
        for s in range(t - 1):
            P_next, Y_next = np.asarray(P[s + 1], dtype=np.float64), np.asarray(probs[s + 1], dtype=np.float64)
            X, Y = P_next - P_prev, Y_next - Y_prev
            G = X.T @ X
            A = np.linalg.inv(G + alpha[s] * np.eye(k))
            AG = A @ G
            H2 = (A @ X.T) ** 2  # [k, n]: each sample's squared weight in each coefficient
            dof = max(n - float(np.trace(AG)), 1.0)
            own_beta[s] = A @ (X.T @ Y)
            resid = Y - X @ own_beta[s]
            scale = n / dof  # HC1: the residuals' degrees of freedom
            cov[s] = scale * (H2 @ (resid[:, :, None] * resid[:, None, :]).reshape(n, m * m)).reshape(k, m, m)
            chunk = max(1, NULL_CHUNK_ELEMENTS // max(n * m * m, 1))
            for start in range(0, runs, chunk):
                stop = min(runs, start + chunk)
                perm = np.argsort(rng.random((stop - start, n)), axis=1)
                Yp = Y[perm]  # [r, n, m]
                b = A @ (X.T @ Yp)  # batched matrix products: [r, k, m]
                resid = Yp - X @ b
                null_beta[start:stop, s] = b
                outer = (resid[:, :, :, None] * resid[:, :, None, :]).reshape(stop - start, n, m * m)
                null_cov[start:stop, s] = scale * (H2 @ outer).reshape(stop - start, k, m, m)
            P_prev, Y_prev = P_next, Y_next
        self.beta_ = own_beta if beta is None else np.asarray(beta, dtype=np.float64)
        if self.beta_.shape != (t - 1, k, m):
            raise ValueError(f"beta shape {self.beta_.shape} does not match (t-1, k, m) = {(t - 1, k, m)}")
        self.z_ = float(norm.ppf(0.5 + self.level / 2))
        self.se_ = np.sqrt(np.maximum(np.diagonal(cov, axis1=2, axis2=3), 0.0))
        self.view_ = "margin" if m == 2 else "strongest class"
        self.flagged_, _ = self._floor_rule(self.beta_)
        self.statistic_, found = self._interval_rule(self.beta_, cov)
        self.null_statistics_ = np.full((runs, k), -np.inf)
        self.null_flagged_ = np.zeros(runs, dtype=np.int64)
        self.null_significant_ = np.zeros(runs, dtype=np.int64)
        null_found = np.zeros((runs, k), dtype=bool)
        for r in range(runs):
            self.null_flagged_[r] = len(self._floor_rule(null_beta[r])[0])
            self.null_statistics_[r], found_r = self._interval_rule(null_beta[r], null_cov[r])
            null_found[r, [u["prototype"] for u in found_r]] = True
        self.p_ = self._p_values(self.statistic_, self.null_statistics_)
        self.q_ = benjamini_hochberg(self.p_)
        for r in range(runs):  # the same rule on each null run, its p from the other runs: significant by chance
            q = benjamini_hochberg(self._p_values(self.null_statistics_[r], np.delete(self.null_statistics_, r, 0)))
            self.null_significant_[r] = int(np.sum(null_found[r] & (q <= self.fdr)))
        self.expected_ = {key: (float(np.mean(v)) if runs else float("nan"), float(np.std(v, ddof=1)) if runs > 1
                                else float("nan")) for key, v in (("flagged", self.null_flagged_),
                                                                   ("significant", self.null_significant_))}
        by_k = {u["prototype"]: u for u in found}
        self.evidence_ = {}
        for kk in range(k):
            u = by_k.get(kk)
            self.evidence_[kk] = {
                "statistic": float(self.statistic_[kk]), "p": float(self.p_[kk]), "q": float(self.q_[kk]),
                "significant": bool(u is not None and self.q_[kk] <= self.fdr),
                "significant_flips": 0 if u is None else u["flips"],
                "classes": None if u is None else u["classes"], "score": 0.0 if u is None else u["score"],
                "flip_steps": [] if u is None else u["flip_steps"],
                "flip_evidence": [] if u is None else [
                    {"from_step": s0, "to_step": s1, "from_class": c0, "to_class": c1,
                     "before": self._interval(self._difference(self.beta_, cov, s0, kk, c0, c1)),
                     "after": self._interval(self._difference(self.beta_, cov, s1, kk, c1, c0))}
                    for s0, c0, s1, c1 in u["ends"]],
            }
        return self

    @staticmethod
    def _p_values(statistic: np.ndarray, null: np.ndarray) -> np.ndarray:
        """p of each statistic against the pooled null statistics: (1 + #null >= it) / (1 + #null); 1 where -inf."""
        pooled = np.sort(null.ravel())
        beyond = pooled.size - np.searchsorted(pooled, statistic, side="left")
        return np.where(np.isfinite(statistic), (1.0 + beyond) / (1.0 + pooled.size), 1.0)

    def _view(self, beta: np.ndarray) -> np.ndarray:
        return two_class_view(beta) if beta.shape[2] == 2 else beta

    def _floor_rule(self, beta: np.ndarray) -> tuple[list[int], float]:
        """The structure's flip rule (quantile noise floor) on one β: (flagged prototypes, floor)."""
        view = self._view(beta)
        floor = float(np.quantile(np.abs(view), self.noise_quantile)) if view.size else 0.0
        return [u["prototype"] for u in strongest_flips(view, floor, self.min_flips)], floor

    def _interval_rule(self, beta: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(statistic [k], the prototypes with >= min_flips significant flips) for one β.

        A step counts for prototype k when its leading class leads the runner-up by z or more standard
        errors; flips are changes of the leader between counted steps. The statistic is the largest such
        z at which k still has min_flips flips between one pair (-inf if none).
        """
        view = self._view(beta)
        lead = self._lead_z(beta, cov)  # [s, k]
        statistic = np.full(beta.shape[1], -np.inf)
        for k in range(beta.shape[1]):
            for t in np.sort(lead[:, k])[::-1][self.min_flips:]:  # min_flips flips need min_flips + 1 steps
                if strongest_flips(view[:, [k]], -np.inf, self.min_flips, counted=lead[:, [k]] >= t):
                    statistic[k] = t
                    break
        return statistic, strongest_flips(view, -np.inf, self.min_flips, counted=lead >= self.z_)

    @staticmethod
    def _lead_z(beta: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """[s, k]: (β of the leading class - β of the runner-up) / its standard error."""
        order = np.argsort(-beta, axis=2)
        a, b = order[:, :, 0], order[:, :, 1]
        steps, protos = np.arange(beta.shape[0])[:, None], np.arange(beta.shape[1])[None, :]
        diff = np.take_along_axis(beta, a[:, :, None], 2)[:, :, 0] - np.take_along_axis(beta, b[:, :, None], 2)[:, :, 0]
        c = cov[steps, protos]  # [s, k, m, m]
        se = np.sqrt(np.maximum(_pick(c, a, a) + _pick(c, b, b) - 2 * _pick(c, a, b), 0.0))
        return np.divide(diff, se, out=np.where(diff > 0, np.inf, 0.0), where=se > 0)

    @staticmethod
    def _difference(beta: np.ndarray, cov: np.ndarray, s: int, k: int, a: int,
                    b: int) -> tuple[float, float, float]:
        """(β[s, k, a] - β[s, k, b], its standard error, z = difference / standard error)."""
        diff = float(beta[s, k, a] - beta[s, k, b])
        se = float(np.sqrt(max(cov[s, k, a, a] + cov[s, k, b, b] - 2 * cov[s, k, a, b], 0.0)))
        z = diff / se if se > 0 else (np.inf if diff > 0 else -np.inf if diff < 0 else 0.0)
        return diff, se, z

    def _interval(self, diff: tuple[float, float, float]) -> dict[str, Any]:
        """The level interval of one difference of coefficients, for the summary."""
        d, se, z = diff
        return {"difference": d, "low": d - self.z_ * se, "high": d + self.z_ * se, "z": z}
