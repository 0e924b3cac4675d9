"""Control exclusions: the same count per class as the curated set, from the analysed samples only."""

import numpy as np
import pytest

from i2x.stages.finetune.controls import cartography_exclusion, per_class_counts, random_exclusion


@pytest.fixture
def analysed():
    """60 analysed rows of a 100-sample training split (3 classes), in shuffled order."""
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, 3, 100)
    sample_index = np.sort(rng.choice(100, 60, replace=False))[::-1].copy()
    return train_labels, sample_index, train_labels[sample_index]


def test_random_matches_counts_per_class(analysed):
    train_labels, sample_index, labels = analysed
    curated = sample_index[labels != 2][:7]
    counts = per_class_counts(curated, train_labels)
    ids = random_exclusion(counts, sample_index, labels, seed=3)
    assert per_class_counts(ids, train_labels) == counts and len(set(ids.tolist())) == len(curated)
    assert set(ids) <= set(sample_index)
    assert np.array_equal(ids, random_exclusion(counts, sample_index, labels, seed=3))
    assert not np.array_equal(ids, random_exclusion(counts, sample_index, labels, seed=4))


def test_cartography_takes_the_most_variable_per_class(analysed):
    train_labels, sample_index, labels = analysed
    rng = np.random.default_rng(1)
    variability, confidence = rng.random(len(labels)), rng.random(len(labels))
    counts = {0: 3, 2: 2}
    ids = cartography_exclusion(counts, sample_index, labels, variability, confidence)
    expected = []
    for c, n in counts.items():
        rows = [r for r in range(len(labels)) if labels[r] == c]
        rows.sort(key=lambda r: -variability[r])
        expected += [int(sample_index[r]) for r in rows[:n]]
    assert ids.tolist() == sorted(expected)
    # ties in variability go to the lower confidence
    flat = np.zeros(len(labels))
    ids = cartography_exclusion({1: 1}, sample_index, labels, flat, confidence)
    rows = np.flatnonzero(labels == 1)
    assert ids.tolist() == [int(sample_index[rows[np.argmin(confidence[rows])]])]


def test_too_few_analysed_samples(analysed):
    train_labels, sample_index, labels = analysed
    with pytest.raises(ValueError, match="class 1"):
        random_exclusion({1: 61}, sample_index, labels)
