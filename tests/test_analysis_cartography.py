"""Dataset cartography against hand-computed values; confusion matrix and accuracy."""

import numpy as np
import pytest
import zarr

from i2x.analysis import accuracy, cartography, cartography_regions, cartography_summary, confusion

# three checkpoints, three samples, two classes; the true-class probability p_t per sample:
#   sample 0, label 0: 0.9, 0.4, 0.8 -> right, wrong, right
#   sample 1, label 1: 0.3, 0.6, 0.7 -> wrong, right, right
#   sample 2, label 0: 0.1, 0.1, 0.1 -> wrong throughout
P_TRUE = np.array([[0.9, 0.3, 0.1], [0.4, 0.6, 0.1], [0.8, 0.7, 0.1]])
LABELS = np.array([0, 1, 0])


def probs():
    p = np.empty((3, 3, 2), dtype=np.float32)
    other = 1 - P_TRUE
    p[:, :, 0] = np.where(LABELS == 0, P_TRUE, other)
    p[:, :, 1] = np.where(LABELS == 1, P_TRUE, other)
    return p


def test_cartography_hand_computed():
    carto = cartography(probs(), LABELS)
    np.testing.assert_allclose(carto["confidence"], [0.7, 1.6 / 3, 0.1], rtol=1e-6)
    np.testing.assert_allclose(carto["variability"], [np.sqrt(0.14 / 3), np.sqrt(0.26 / 9), 0.0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(carto["correctness"], [2 / 3, 2 / 3, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(carto["forgetting"], [1, 0, 0])


def test_cartography_reads_zarr_like_numpy():
    p = probs()
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=p.shape, dtype=p.dtype, chunks=(1, 2, 2))
    z[:] = p
    for key, value in cartography(p, LABELS).items():
        np.testing.assert_array_equal(cartography(z, LABELS)[key], value)


def test_regions_and_summary():
    carto = cartography(probs(), LABELS)
    # sample 0: variability 0.216 >= 0.2 -> ambiguous; sample 1: 0.170, confidence 0.53 -> easy; sample 2 -> hard
    np.testing.assert_array_equal(cartography_regions(carto), [1, 0, 2])
    summary = cartography_summary(carto)
    assert summary["regions"] == {"easy": 1, "ambiguous": 1, "hard": 1}
    assert summary["n"] == 3 and summary["forgotten_at_least_once"] == 1
    assert summary["mean_confidence"] == pytest.approx((0.7 + 1.6 / 3 + 0.1) / 3, rel=1e-6)
    assert summary["mean_forgetting"] == pytest.approx(1 / 3)
    assert summary["cutoffs"] == {"confidence": 0.5, "variability": 0.2}
    assert cartography_summary(carto, variability_cut=0.25)["regions"] == {"easy": 2, "ambiguous": 0, "hard": 1}


def test_confusion_and_accuracy():
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    labels = np.array([0, 1, 1, 2, 2])
    C = confusion(p, labels, 4)  # class 3 has no samples: still a row and a column
    expected = np.zeros((4, 4), dtype=np.int64)
    for true, pred in zip(labels, p.argmax(1)):
        expected[true, pred] += 1
    np.testing.assert_array_equal(C, expected)
    assert C[1, 0] == 1 and C[2, 1] == 1
    assert accuracy(p, labels) == pytest.approx(3 / 5)
