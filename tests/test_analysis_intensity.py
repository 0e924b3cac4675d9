"""Prototype intensity and presence share against explicit-loop reference implementations."""

import numpy as np
import zarr

from i2x.analysis import intensity, presence_share


def reference_intensity(cams, assign, k):
    """Obviously-correct loops: mean CAM over each sample's locations assigned to each prototype."""
    t, n, h, w = cams.shape
    P = np.zeros((t, n, k))
    present = np.zeros((n, k), dtype=bool)
    for i in range(n):
        for j in range(k):
            cells = [(y, x) for y in range(h) for x in range(w) if assign[i, y, x] == j]
            present[i, j] = bool(cells)
            for s in range(t):
                if cells:
                    P[s, i, j] = sum(float(cams[s, i, y, x]) for y, x in cells) / len(cells)
    return P, present


def random_inputs(t=4, n=9, h=3, w=5, k=6, seed=0):
    rng = np.random.default_rng(seed)
    cams = rng.random((t, n, h, w), dtype=np.float32) * 3
    assign = rng.integers(0, k - 1, size=(n, h, w)).astype(np.int32)  # prototype k-1 never occurs
    return cams, assign


def test_intensity_matches_loops():
    cams, assign = random_inputs()
    P, present = intensity(cams, assign, 6)
    P_ref, present_ref = reference_intensity(cams, assign, 6)
    assert P.shape == (4, 9, 6) and P.dtype == np.float32 and present.dtype == bool
    np.testing.assert_allclose(P, P_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(present, present_ref)
    assert not present[:, 5].any() and np.all(P[:, :, 5] == 0)  # absent prototype reads 0, never evidence


def test_intensity_chunked_and_zarr_match_in_memory():
    cams, assign = random_inputs(n=23, seed=1)
    expected = intensity(cams, assign, 6)
    for chunk in (1, 4, 23, 100):
        got = intensity(cams, assign, 6, chunk=chunk)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    zc = zarr.create_array(store=zarr.storage.MemoryStore(), shape=cams.shape, dtype=cams.dtype, chunks=(4, 5, 3, 5))
    zc[:] = cams
    za = zarr.create_array(store=zarr.storage.MemoryStore(), shape=assign.shape, dtype=assign.dtype, chunks=(5, 3, 5))
    za[:] = assign
    got = intensity(zc, za, 6)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    out = (zarr.create_array(store=zarr.storage.MemoryStore(), shape=(4, 23, 6), dtype="float32", chunks=(4, 5, 6)),
           zarr.create_array(store=zarr.storage.MemoryStore(), shape=(23, 6), dtype="bool", chunks=(5, 6)))
    written = intensity(zc, za, 6, out=out)
    assert written[0] is out[0] and written[1] is out[1]
    np.testing.assert_array_equal(out[0][:], expected[0])
    np.testing.assert_array_equal(out[1][:], expected[1])


def test_intensity_of_constant_cam_is_that_constant_where_present():
    _, assign = random_inputs(t=2)
    cams = np.full((2,) + assign.shape, 2.5, dtype=np.float32)
    P, present = intensity(cams, assign, 6)
    np.testing.assert_array_equal(P, np.where(present, 2.5, 0.0)[None].repeat(2, axis=0))


def test_presence_share_matches_loops():
    _, assign = random_inputs(n=13, seed=2)
    share = presence_share(assign, 6, chunk=4)
    n, h, w = assign.shape
    expected = np.zeros((n, 6))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                expected[i, assign[i, y, x]] += 1 / (h * w)
    np.testing.assert_allclose(share, expected, rtol=1e-6)
    np.testing.assert_allclose(share.sum(axis=1), 1.0, rtol=1e-6)
