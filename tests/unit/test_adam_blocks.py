"""The blocked host Adam (large tables) gives the whole-array rule's results: bit for bit for
dense gradients, and for sparse ones (no dense zero-filled gradient) up to float32 rounding of
the touched rows."""
from __future__ import annotations

import numpy as np

from fleetkit.core.ops import optimizer as opt
from fleetkit.core.scope import SelectedRows

ATTRS = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "lazy_mode": False}


def _state(rng, shape):
    p = rng.normal(size=shape).astype(np.float32)
    m1 = rng.normal(size=shape).astype(np.float32) * 0.1
    # |m1| <= sqrt(m2), as for moments grown from zero (the rule clips m1 / sqrt(m2) beyond that)
    m2 = np.abs(rng.normal(size=shape)).astype(np.float32) * 0.01 + m1 * m1
    return p, m1, m2


def _reference(p, g, m1, m2, lr, sc):
    """The whole-array rule, written out (the kernel's code before blocking)."""
    b1, b2 = ATTRS["beta1"], ATTRS["beta2"]
    m1 *= b1
    m1 += (1 - b1) * g
    m2 *= b2
    m2 += (1 - b2) * (g * g)
    lr_t = lr * np.sqrt(1 - sc["Beta2Pow"]) / (1 - sc["Beta1Pow"])
    p -= lr_t * (m1 / (np.sqrt(m2) + ATTRS["epsilon"]))


def _scalars():
    lr = np.float32(0.01).reshape(())
    return lr, {"Beta1Pow": np.float32(0.9 ** 3).reshape(()), "Beta2Pow": np.float32(0.999 ** 3).reshape(())}


def test_blocked_dense_adam_equals_whole_array_rule():
    rng = np.random.default_rng(0)
    shape = (opt._BLOCK * 5 // 7 + 11, 7)  # not a multiple of the block
    assert opt._blockable(np, np.zeros(shape, np.float32))
    p, m1, m2 = _state(rng, shape)
    g = rng.normal(size=shape).astype(np.float32)
    ref = [a.copy() for a in (p, m1, m2)]
    lr, sc = _scalars()
    _reference(ref[0], g, ref[1], ref[2], lr, sc)
    opt._adam(np, ATTRS, lr, p, g, {"Moment1": m1, "Moment2": m2}, sc)
    for got, want in zip((p, m1, m2), ref):
        np.testing.assert_array_equal(got, want)


def test_sparse_non_lazy_adam_equals_densified_rule():
    rng = np.random.default_rng(1)
    shape = (40_000, 5)
    p, m1, m2 = _state(rng, shape)
    rows = np.unique(rng.integers(0, shape[0], 300))
    g = SelectedRows(rows, rng.normal(size=(len(rows), 5)).astype(np.float32), shape[0])
    ref = [a.copy() for a in (p, m1, m2)]
    lr, sc = _scalars()
    _reference(ref[0], opt.densify(np, g, p), ref[1], ref[2], lr, sc)
    opt._adam_sparse_dense(ATTRS, lr, p, g, {"Moment1": m1, "Moment2": m2}, sc)
    untouched = np.setdiff1d(np.arange(shape[0]), rows)
    for got, want in zip((p, m1, m2), ref):
        np.testing.assert_array_equal(got[untouched], want[untouched])  # the same float32 operations
        # b * (m + (1 - b) / b * g) for b * m + (1 - b) * g: a few float32 roundings of terms about
        # 0.1 apart (more relative error where the two terms cancel)
        np.testing.assert_allclose(got[rows], want[rows], rtol=1e-6, atol=1e-7)
