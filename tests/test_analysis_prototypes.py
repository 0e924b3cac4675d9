"""Prototypes: seeded reproducibility, planted clusters recovered, zarr == numpy, k clamped, choose_k."""

import warnings

import numpy as np
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score

from i2x.analysis import Prototypes, choose_k
from i2x.analysis.prototypes import sample_vectors
from i2x.errors import UserError


def planted(n=60, h=4, w=4, d=24, k=5, spread=0.2, seed=0):
    """Features whose location vectors lie in k tight, well-separated clusters; returns (features f16, labels)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    labels = rng.integers(0, k, size=(n, h, w))
    features = centers[labels] + rng.normal(size=(n, h, w, d)) * spread
    return features.astype(np.float16), labels


def as_zarr(array, chunk):
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=array.shape, dtype=array.dtype,
                          chunks=(chunk,) + array.shape[1:])
    z[:] = array
    return z


def test_planted_clusters_are_recovered():
    features, labels = planted()
    model = Prototypes(k=5, pca_dim=8, seed=0).fit(features)
    assert model.k_ == 5 and model.centroids_.shape == (5, 8) and model.centroids_.dtype == np.float32
    assert model.assign_.shape == labels.shape and model.assign_.dtype == np.int32
    assert adjusted_rand_score(labels.ravel(), model.assign_.ravel()) > 0.99


def test_planted_clusters_recovered_from_a_subsample():
    features, labels = planted(n=80)
    model = Prototypes(k=5, pca_dim=8, seed=3, max_fit_vectors=300, max_points_per_centroid=20).fit(features)
    assert model.n_fit_vectors_ == 300
    assert adjusted_rand_score(labels.ravel(), model.assign_.ravel()) > 0.99


def test_same_seed_same_result():
    features, _ = planted(spread=1.5)  # overlapping clusters, so the result depends on the draws
    a = Prototypes(k=6, pca_dim=8, seed=7, max_fit_vectors=500, max_points_per_centroid=50).fit(features)
    b = Prototypes(k=6, pca_dim=8, seed=7, max_fit_vectors=500, max_points_per_centroid=50).fit(features)
    np.testing.assert_array_equal(a.assign_, b.assign_)
    np.testing.assert_array_equal(a.centroids_, b.centroids_)


def test_zarr_input_matches_numpy_input():
    features, _ = planted(n=50, spread=1.0)
    settings = dict(k=4, pca_dim=6, seed=1, max_fit_vectors=400)
    from_numpy = Prototypes(**settings).fit(features)
    from_zarr = Prototypes(**settings, chunk=7).fit(as_zarr(features, chunk=7))
    np.testing.assert_array_equal(from_numpy.assign_, from_zarr.assign_)
    np.testing.assert_allclose(from_numpy.centroids_, from_zarr.centroids_, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(from_numpy.predict(features, chunk=3), from_numpy.assign_)


def test_predict_is_nearest_centroid_after_pca():
    features, _ = planted(n=20, spread=1.0)
    model = Prototypes(k=4, pca_dim=5, seed=0).fit(features)
    projected = model.pca_.transform(features.reshape(-1, features.shape[-1]).astype(np.float64))
    distances = ((projected[:, None, :] - model.centroids_[None].astype(np.float64)) ** 2).sum(-1)
    agree = distances.argmin(1) == model.assign_.ravel()
    assert agree.mean() > 0.999  # float32 vs float64 ties aside


def test_sample_vectors_reads_the_drawn_rows_chunk_by_chunk():
    features, _ = planted(n=11, h=2, w=3, d=4)
    flat = features.reshape(-1, 4).astype(np.float32)
    np.testing.assert_array_equal(sample_vectors(features, 10_000, seed=0, chunk=3), flat)
    picked = sample_vectors(as_zarr(features, chunk=3), 20, seed=5, chunk=4)
    expected = flat[np.sort(np.random.default_rng(5).choice(flat.shape[0], size=20, replace=False))]
    np.testing.assert_array_equal(picked, expected)


def test_k_is_clamped_to_the_distinct_vectors_with_a_warning():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(10, 3, 3))
    features = (np.eye(6)[labels] * 5).astype(np.float16)  # only 3 distinct vectors
    with pytest.warns(UserWarning, match="distinct"):
        model = Prototypes(k=8, pca_dim=4, seed=0).fit(features)
    assert model.k_ == 3 and len(model.warnings_) == 1
    assert adjusted_rand_score(labels.ravel(), model.assign_.ravel()) == 1.0


def test_bad_settings_and_inputs_are_user_errors():
    features, _ = planted(n=5)
    with pytest.raises(UserError, match="k must"):
        Prototypes(k=0).fit(features)
    with pytest.raises(UserError, match=r"\[n, h, w, d\]"):
        Prototypes().fit(features[0])
    model = Prototypes(k=3, pca_dim=4).fit(features)
    with pytest.raises(UserError, match="channels"):
        model.predict(features[..., :10])


def test_choose_k_finds_the_planted_number_of_clusters():
    features, _ = planted(n=40, k=4, spread=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k, scores = choose_k(features, candidates=(2, 4, 8), seed=0, max_vectors=400, silhouette_sample=400)
    assert k == 4
    assert set(scores) == {2, 4, 8} and scores[4] > 0.8


def test_choose_k_skips_candidates_above_the_distinct_vectors():
    labels = np.random.default_rng(0).integers(0, 3, size=(10, 3, 3))
    features = (np.eye(6)[labels] * 5).astype(np.float16)  # only 3 distinct vectors
    k, scores = choose_k(features, candidates=(3, 8), seed=0)
    assert k == 3 and scores[3] == pytest.approx(1.0) and np.isnan(scores[8])
    with pytest.raises(UserError, match="too few distinct"):
        choose_k(features, candidates=(8,), seed=0)
