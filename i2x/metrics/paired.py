"""Paired comparison of two conditions run with the same seeds: per-seed differences in, summary out.

The mean difference gets a percentile bootstrap interval over seeds (resampling the seeds, so the
pairing is kept), and two tests of "no difference": Wilcoxon's signed-rank test (zero differences
dropped, scipy's ``zero_method="wilcox"``) and the sign test (exact two-sided binomial on the
number of positive among non-zero differences). With few seeds the bootstrap interval is too narrow
and the tests have little power; both are reported as they are, with the count of seeds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

from i2x.metrics.bootstrap import bootstrap_means, percentile_interval


def paired_difference(differences: Sequence[float], confidence: float = 0.95, replicates: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Mean ± sample std (ddof=1) of per-seed differences, their bootstrap interval, Wilcoxon and sign-test p-values.

    A p-value is None when it is undefined (every difference zero, or no seed); the interval is
    [None, None] without seeds.
    """
    d = np.asarray(differences, dtype=np.float64)
    nonzero = d[d != 0]
    positive = int((nonzero > 0).sum())
    wilcoxon_p = sign_p = None
    if nonzero.size:
        sign_p = float(stats.binomtest(positive, nonzero.size, 0.5).pvalue)
        wilcoxon_p = float(stats.wilcoxon(nonzero, zero_method="wilcox").pvalue)
    interval = percentile_interval(bootstrap_means(d[None, :], replicates, seed)[:, 0], confidence) if d.size \
        else [None, None]
    return {
        "n": int(d.size),
        "mean": float(d.mean()) if d.size else None,
        "std": float(d.std(ddof=1)) if d.size > 1 else 0.0,
        "ci": interval,
        "confidence": confidence,
        "positive": positive,
        "negative": int(nonzero.size - positive),
        "zero": int(d.size - nonzero.size),
        "wilcoxon_p": wilcoxon_p,
        "sign_p": sign_p,
        "values": d.tolist(),
    }


__all__ = ["paired_difference"]
