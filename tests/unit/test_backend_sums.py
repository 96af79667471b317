"""Sorting and summing by index (``core.backend``): the stable order the sparse-gradient
merges use, for every integer dtype and value range (the fast path makes values unique
with their positions; out-of-range spans fall back to numpy's stable sort)."""
from __future__ import annotations

import numpy as np
import pytest

from fleetkit.core.backend import scatter_add, stable_order, sum_by_index


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8, np.uint32, np.uint64])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 13312])
def test_stable_order_is_numpys_stable_argsort(dtype, n):
    rng = np.random.default_rng(n)
    info = np.iinfo(dtype)
    for span in (1, 5, 1000, 2**40):
        lo, hi = max(int(info.min), -span), min(int(info.max), span)
        a = rng.integers(lo, hi, size=n, endpoint=True).astype(dtype)
        assert np.array_equal(stable_order(a), np.argsort(a, kind="stable")), (span, a[:10])


def test_stable_order_at_the_ends_of_int64_and_uint64():
    for a in (np.array([2**63 - 1, 0, 5, 2**63 - 1, -2**63, 5], dtype=np.int64),
              np.array([2**64 - 1, 3, 2**64 - 1, 0, 3], dtype=np.uint64),
              np.arange(50, dtype=np.int64) * (2**57)):   # span too wide for position keys
        assert np.array_equal(stable_order(a), np.argsort(a, kind="stable"))


def test_sum_by_index_and_scatter_add_equal_add_at():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 400, size=5000)
    vals = rng.standard_normal((5000, 6)).astype(np.float32)
    uniq, sums = sum_by_index(idx, vals)
    want = np.zeros((400, 6), np.float32)
    np.add.at(want, idx, vals)
    assert np.array_equal(uniq, np.unique(idx))
    np.testing.assert_allclose(sums, want[uniq], rtol=1e-5, atol=1e-5)
    out = np.ones((400, 6), np.float32)
    scatter_add(out, idx, vals)
    np.testing.assert_allclose(out, want + 1, rtol=1e-5, atol=1e-5)
