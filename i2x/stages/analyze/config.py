"""Settings of the analysis (every threshold is printed in the report); imports none of its siblings."""

from __future__ import annotations

from dataclasses import dataclass

from i2x.settings import device_option, option, whole, whole_list, whole_or_auto


def _zero_is_all(text: str) -> int | None:
    """``--max-group-samples``: 0 means no sample limit."""
    return whole(text) or None


#: Default ceiling of HDBSCAN's min_samples (see :func:`_min_samples`).
MAX_MIN_SAMPLES = 50


def _check_k(k: int | str) -> None:
    if k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError("give a positive integer or 'auto'")


@dataclass
class AnalyzeConfig:
    """Settings of the analysis; every threshold is printed in the report."""

    k: int | str = option(32, "number of prototypes, or 'auto' to pick from --k-candidates by silhouette score on "
                          "a subsample", parse=whole_or_auto, check=_check_k)
    pca_dim: int = option(32, "PCA components before k-means (or d if smaller)", low=1)
    method: str = option("gradcam", "CAM method whose maps give prototype intensity")
    seed: int = option(0, "seed of the k-means and the vector subsample")
    max_fit_vectors: int = option(200_000, "k-means and PCA fit on a seeded sample of at most N location vectors",
                                  low=1, metavar="N")
    max_points_per_centroid: int = option(256, "FAISS k-means subsamples to N points per centroid (256 is FAISS's "
                                          "own default)", low=1, metavar="N")
    k_candidates: tuple[int, ...] = option((8, 16, 32, 64), "candidates for --k auto", parse=whole_list, low=2,
                                           metavar="K1,K2")
    min_cluster_size: int | None = option(None, "HDBSCAN min_cluster_size (default max(10, n/100))", low=2,
                                          metavar="N")
    min_samples: int | None = option(None, "HDBSCAN min_samples (default min_cluster_size, at most 50)", low=1,
                                     cli=False)
    max_group_samples: int | None = option(
        20_000, "HDBSCAN fits each step on a seeded sample of at most N samples and labels the others with "
        "hdbscan.approximate_predict; its cost grows faster than n (0: fit on all)", parse=_zero_is_all, low=1,
        metavar="N")
    alpha: float | None = option(None, "ridge penalty (default: RidgeCV over 1e-3..1e3)", low=0, low_open=True)
    shared_presence: float = option(0.9, "shared: present in at least this share of a class's samples", low=0,
                                    high=1)
    specialized_presence: float = option(0.9, "specialized: present in at least this share of one group's class "
                                         "samples", low=0, high=1)
    specialized_max_overall: float = option(0.5, "specialized: present in fewer than this share of all the class's "
                                            "samples", low=0, high=1)
    noise_quantile: float = option(0.75, "uncertain: |beta| must exceed this quantile of all |beta|", low=0, high=1)
    min_flips: int = option(2, "uncertain: flips between the same two classes", low=1)
    top_confused: int = option(3, "how many most-confused class pairs count as 'top confused'", low=0)
    significance_level: float = option(
        0.95, "uncertain: a flip is significant when, at both its ends, this level's interval of the leading class's "
        "β minus the other class's β lies above 0", low=0, high=0.999, low_open=True)
    null_runs: int = option(20, "uncertain: runs of the null model (confidence changes permuted across samples) that "
                                "give the number of uncertain prototypes expected by chance and the p values; 0: none",
                            low=0, high=10_000)
    fdr: float = option(0.1, "uncertain: a flagged prototype is significant when its Benjamini-Hochberg q is at most "
                             "this (and it has --min-flips significant flips)", low=0, high=1, low_open=True)
    jobs: int | None = option(None, "processes that run HDBSCAN's steps in parallel (default: every core from 10000 "
                              "samples on)", low=1, metavar="N")
    device: str = device_option("cpu keeps FAISS on the CPU; auto/cuda use a FAISS GPU if seen")
