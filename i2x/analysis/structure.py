"""Per-class structure of the ridge maps (D9 in docs/ARCHITECTURE.md): shared, specialized and uncertain prototypes.

Definitions (thresholds are the settings of `Structure`, defaults in brackets):

- presence rate of prototype k in a set of samples = fraction of them in which k is present.
- *shared* for class m: presence rate in all class-m samples >= shared_presence [0.9] and
  sum over steps of β[s, k, m] > 0. Listed by that sum, largest first.
- *specialized* for class m, as (k, step, group): at some step s, the HDBSCAN group g >= 0
  holds at least `min_group_samples` [5] class-m samples (chosen here: a rate over one or two
  samples says nothing), k's presence rate among them >= specialized_presence [0.9], and k's
  presence rate in all class-m samples < specialized_max_overall [0.5]. Every qualifying
  (k, step, group) is listed, ordered by k, step, group.
- *uncertain*: the noise floor is the `noise_quantile` [0.75] quantile of |β| over all steps,
  prototypes and classes. At step s the strongest class of k is a_s = argmax_m β[s, k, m]; the
  step counts only if β[s, k, a_s] > floor (a strongest class whose β is at or below the floor,
  or negative, is no evidence). Over the counted steps, in order, a *flip* is a change of the
  strongest class between consecutive entries. The pair (a, b) is the unordered pair with the
  most flips (ties: higher score, then the smaller pair); `flips` counts flips between exactly
  a and b, and k is uncertain if flips >= min_flips [2]. score = flips * mean β of the strongest
  class at both ends of those flips. Ranked by score, largest first. `in_top_confused` says
  whether (a, b) is among the top_confused [3] class pairs of the final confusion matrix ranked
  by the symmetrised count C[a, b] + C[b, a] (pairs with count 0 never count; ties: smaller pair).
  `flip_steps` lists the step at which each counted flip lands (the later of its two ends).
- *two classes*: the confidence changes of the two classes sum to zero, so β[s, k, 0] ≈ -β[s, k, 1]
  and the rule above would count every sign change of one noisy coefficient. With m = 2 the rule
  runs on one coefficient per prototype, the margin μ[s, k] = β[s, k, 1] - β[s, k, 0] (class 1 leads
  when μ > 0): the floor is the noise_quantile of |μ|, a flip is a sign change of μ between
  consecutive above-floor steps, and the score uses |μ| (`view_` = "margin").

Whether a flip is more than noise is :mod:`i2x.analysis.significance`'s question.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from i2x.errors import UserError


def confusion(probs_t: Any, labels: Any, m: int) -> np.ndarray:
    """Confusion matrix [m, m] int64 of one checkpoint: rows true class, columns argmax of probs_t [n, m]."""
    predicted = np.asarray(probs_t).argmax(axis=1)
    return confusion_matrix(np.asarray(labels), predicted, labels=np.arange(m)).astype(np.int64)


def accuracy(probs_t: Any, labels: Any) -> float:
    """Fraction of samples whose argmax of probs_t [n, m] equals the label."""
    return float(np.mean(np.asarray(probs_t).argmax(axis=1) == np.asarray(labels)))


def presence_rate(present: np.ndarray, keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key, the fraction of its samples in which each prototype is present: -> (rate [n_keys, k], count [n_keys]).

    keys [n] assigns each sample to a set in [0, n_keys); samples with a negative key are left out.
    """
    keep = keys >= 0
    sums = np.zeros((n_keys, present.shape[1]), dtype=np.int64)
    np.add.at(sums, keys[keep], present[keep].astype(np.int64))
    counts = np.bincount(keys[keep], minlength=n_keys)
    rate = np.divide(sums, counts[:, None], out=np.zeros(sums.shape), where=counts[:, None] > 0)
    return rate, counts


def top_confused_pairs(C: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """The `top` most confused class pairs (a < b, symmetrised count C[a,b] + C[b,a] > 0), as (a, b, count)."""
    sym = np.asarray(C) + np.asarray(C).T
    a, b = np.triu_indices(sym.shape[0], k=1)
    counts = sym[a, b]
    order = np.lexsort((b, a, -counts))  # count desc, then smaller pair
    return [(int(a[i]), int(b[i]), int(counts[i])) for i in order[:top] if counts[i] > 0]


class Structure:
    """Shared, specialized and uncertain prototypes per class, from β, presence, groups and the final confusion.

    Learned: `shared_` {m: [k]}, `specialized_` {m: [(k, step, group)]}, `uncertain_` [dict],
    `presence_rate_` [m, k], `beta_sum_` [k, m], `noise_floor_`, `top_confused_pairs_` [(a, b, count)],
    `view_` ("strongest class", or "margin" for two classes), `thresholds_` (every value used, for the report).
    """

    def __init__(self, shared_presence: float = 0.9, specialized_presence: float = 0.9,
                 specialized_max_overall: float = 0.5, noise_quantile: float = 0.75, min_flips: int = 2,
                 top_confused: int = 3, min_group_samples: int = 5) -> None:
        self.shared_presence = shared_presence
        self.specialized_presence = specialized_presence
        self.specialized_max_overall = specialized_max_overall
        self.noise_quantile = noise_quantile
        self.min_flips = min_flips
        self.top_confused = top_confused
        self.min_group_samples = min_group_samples

    def _check_settings(self) -> None:
        for name in ("shared_presence", "specialized_presence", "specialized_max_overall", "noise_quantile"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must lie in [0, 1], got {value!r}")
        for name, low in (("min_flips", 1), ("top_confused", 0), ("min_group_samples", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")

    def fit(self, beta: Any, present: Any, labels: Any, groups: Any, final_confusion: Any) -> Structure:
        """beta [s, k, m], present [n, k] bool, labels [n], groups [s, n] (noise -1), final_confusion [m, m]."""
        self._check_settings()
        beta = np.asarray(beta, dtype=np.float64)
        present = np.asarray(present, dtype=bool)
        labels = np.asarray(labels, dtype=np.int64)
        groups = np.asarray(groups, dtype=np.int64)
        s, k, m = beta.shape
        if present.shape != (labels.shape[0], k) or groups.shape != (s, labels.shape[0]):
            raise ValueError(f"inconsistent shapes: beta {beta.shape}, present {present.shape}, "
                             f"labels {labels.shape}, groups {groups.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= m):
            raise ValueError(f"labels must lie in [0, {m})")
        self.presence_rate_, _ = presence_rate(present, labels, m)
        self.beta_sum_ = beta.sum(axis=0)
        self.shared_ = self._shared(m)
        self.specialized_ = self._specialized(present, labels, groups, m)
        self.view_ = "margin" if m == 2 else "strongest class"
        view = two_class_view(beta) if m == 2 else beta
        self.noise_floor_ = float(np.quantile(np.abs(view), self.noise_quantile)) if beta.size else 0.0
        self.top_confused_pairs_ = top_confused_pairs(np.asarray(final_confusion), self.top_confused)
        self.uncertain_ = self._uncertain(view)
        self.thresholds_ = {
            "shared_presence": self.shared_presence,
            "specialized_presence": self.specialized_presence,
            "specialized_max_overall": self.specialized_max_overall,
            "min_group_samples": self.min_group_samples,
            "noise_quantile": self.noise_quantile,
            "noise_floor": self.noise_floor_,
            "min_flips": self.min_flips,
            "top_confused": self.top_confused,
        }
        return self

    def _shared(self, m: int) -> dict[int, list[int]]:
        """{class: prototypes present in >= shared_presence of its samples with positive summed β}, strongest first."""
        shared = {}
        for c in range(m):
            ks = np.nonzero((self.presence_rate_[c] >= self.shared_presence) & (self.beta_sum_[:, c] > 0))[0]
            shared[c] = [int(k) for k in ks[np.argsort(-self.beta_sum_[ks, c], kind="stable")]]
        return shared

    def _specialized(self, present: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                     m: int) -> dict[int, list[tuple[int, int, int]]]:
        """{class: [(k, step, group)]} where k is common in one group's class samples but rare in the class."""
        rare = self.presence_rate_ < self.specialized_max_overall  # [m, k]
        found: list[tuple[int, int, int, int]] = []  # (class, k, step, group)
        for step, row in enumerate(groups):
            n_groups = int(row.max(initial=-1)) + 1
            if n_groups == 0:
                continue
            keys = np.where(row >= 0, row * m + labels, -1)
            rate, counts = presence_rate(present, keys, n_groups * m)
            hit = (rate >= self.specialized_presence) & (counts[:, None] >= self.min_group_samples)
            hit &= np.tile(rare, (n_groups, 1))
            for key, k in zip(*np.nonzero(hit)):
                found.append((int(key % m), int(k), step, int(key // m)))
        specialized: dict[int, list[tuple[int, int, int]]] = {c: [] for c in range(m)}
        for c, k, step, group in sorted(found):
            specialized[c].append((k, step, group))
        return specialized

    def _uncertain(self, beta: np.ndarray) -> list[dict[str, Any]]:
        """Prototypes whose above-floor strongest class flips between the same two classes >= min_flips times."""
        top_pairs = {(a, b) for a, b, _ in self.top_confused_pairs_}
        found = [{key: u[key] for key in ("prototype", "classes", "flips", "score", "flip_steps")}
                 | {"in_top_confused": tuple(u["classes"]) in top_pairs}
                 for u in strongest_flips(beta, self.noise_floor_, self.min_flips)]
        return sorted(found, key=lambda d: (-d["score"], d["prototype"]))


def two_class_view(beta: np.ndarray) -> np.ndarray:
    """β [s, k, 2] as the margin view [-μ, μ] with μ = β[..., 1] - β[..., 0]: one coefficient per prototype.

    With two classes the confidence changes sum to zero, so β[..., 0] ≈ -β[..., 1] and the class
    a prototype favours is the sign of the margin μ; the rule then runs on μ (floor on |μ|).
    """
    margin = beta[:, :, 1] - beta[:, :, 0]
    return np.stack([-margin, margin], axis=2)


def strongest_flips(beta: np.ndarray, floor: float, min_flips: int, counted: np.ndarray | None = None,
                    ids: Any = None) -> list[dict[str, Any]]:
    """The flip rule on β [s, k, m] (see the module doc), for every prototype with >= min_flips flips.

    ``counted`` [s, k] replaces the floor's choice of the steps that count; ``ids`` names the
    prototypes (default 0..k-1). Each entry: prototype, classes [a, b], flips, score, flip_steps, and
    ``ends`` [(step_before, class_before, step_after, class_after)] of each counted flip, in order.
    """
    strongest = beta.argmax(axis=2)  # [s, k]
    strength = np.take_along_axis(beta, strongest[:, :, None], axis=2)[:, :, 0]
    above = strength > floor if counted is None else counted
    ids = range(beta.shape[1]) if ids is None else ids
    found = []
    for k in range(beta.shape[1]):
        steps = np.nonzero(above[:, k])[0]
        cls, val = strongest[steps, k], strength[steps, k]
        flip = np.nonzero(cls[1:] != cls[:-1])[0] + 1  # index of the later entry of each flip
        if flip.size < min_flips:
            continue
        m = beta.shape[2]
        codes = np.minimum(cls[flip - 1], cls[flip]) * m + np.maximum(cls[flip - 1], cls[flip])  # pair a < b as a*m + b
        candidates = []
        for code in np.unique(codes).tolist():
            mine = flip[codes == code]
            score = mine.size * float((val[mine - 1].sum() + val[mine].sum()) / (2 * mine.size))
            candidates.append((mine.size, score, -(code // m), -(code % m), mine))
        flips, score, a, b, mine = max(candidates, key=lambda c: c[:4])
        if flips < min_flips:
            continue
        found.append({"prototype": int(ids[k]), "classes": [int(-a), int(-b)], "flips": int(flips), "score": score,
                      "flip_steps": [int(x) for x in steps[mine]],
                      "ends": [(int(steps[i - 1]), int(cls[i - 1]), int(steps[i]), int(cls[i])) for i in mine]})
    return found
