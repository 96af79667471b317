"""The blocked host Adam (large tables) gives the whole-array rule's results: bit for bit for
dense gradients, and for sparse ones (no dense zero-filled gradient) up to float32 rounding of
the touched rows."""
from __future__ import annotations

import numpy as np

from fleetkit.core.ops import adam_host
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


def _sparse(rng, shape, n):
    rows = np.unique(rng.integers(0, shape[0], n))
    return SelectedRows(rows, rng.normal(size=(len(rows), shape[1])).astype(np.float32), shape[0])


def _scalars():
    lr = np.float32(0.01).reshape(())
    return lr, {"Beta1Pow": np.float32(0.9 ** 3).reshape(()), "Beta2Pow": np.float32(0.999 ** 3).reshape(())}


def test_blocked_dense_adam_equals_whole_array_rule():
    rng = np.random.default_rng(0)
    shape = (adam_host.BLOCK * 5 // 7 + 11, 7)  # not a multiple of the block
    assert adam_host.blockable(np, np.zeros(shape, np.float32))
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
    g = _sparse(rng, shape, 300)
    rows = g.rows
    ref = [a.copy() for a in (p, m1, m2)]
    lr, sc = _scalars()
    _reference(ref[0], opt.densify(np, g, p), ref[1], ref[2], lr, sc)
    adam_host.sparse_dense(ATTRS, lr, p, g, {"Moment1": m1, "Moment2": m2}, sc)
    untouched = np.setdiff1d(np.arange(shape[0]), rows)
    for got, want in zip((p, m1, m2), ref):
        np.testing.assert_array_equal(got[untouched], want[untouched])  # the same float32 operations
        # b * (m + (1 - b) / b * g) for b * m + (1 - b) * g: a few float32 roundings of terms about
        # 0.1 apart (more relative error where the two terms cancel)
        np.testing.assert_allclose(got[rows], want[rows], rtol=1e-6, atol=1e-7)


def test_paired_steps_give_the_serial_moments_and_take_both_parameter_steps():
    """A Hogwild worker's two steps in one pass: the moments are the serial rule's (each gradient
    added divided by b^k, then decayed twice), the parameter takes both steps; rows no gradient
    touched are the serial rule's bit for bit."""
    rng = np.random.default_rng(2)
    shape = (40_000, 5)
    p, m1, m2 = _state(rng, shape)
    g1, g2 = _sparse(rng, shape, 300), _sparse(rng, shape, 300)
    lr, sc1 = _scalars()
    sc2 = {k: np.float32(v * (0.9 if k == "Beta1Pow" else 0.999)).reshape(()) for k, v in sc1.items()}
    p0, serial = p.copy(), [a.copy() for a in (p, m1, m2)]
    for g, sc in ((g1, sc1), (g2, sc2)):
        _reference(serial[0], opt.densify(np, g, p), serial[1], serial[2], lr, sc)
    acc = {"Moment1": m1, "Moment2": m2}
    with adam_host.paired_steps():
        adam_host.sparse_dense(ATTRS, lr, p, g1, acc, sc1)
        np.testing.assert_array_equal(p, p0)  # waits for its partner
        adam_host.sparse_dense(ATTRS, lr, p, g2, acc, sc2)
    touched = np.union1d(g1.rows, g2.rows)
    untouched = np.setdiff1d(np.arange(shape[0]), touched)
    for got, want in zip((p, m1, m2), serial):
        np.testing.assert_array_equal(got[untouched], want[untouched])
    np.testing.assert_allclose(m1[touched], serial[1][touched], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m2[touched], serial[2][touched], rtol=1e-6, atol=1e-7)
    # the first step's parameter move already sees the second gradient: a fraction of one step apart
    one_step = float(lr) * 2 * adam_host.ratio_bound(0.9, 0.999)
    assert np.abs(p[touched] - serial[0][touched]).max() < one_step
    assert np.abs(p[touched] - serial[0][touched]).max() > 0  # paired, not serial


def test_a_step_without_a_partner_is_taken_on_the_way_out():
    rng = np.random.default_rng(3)
    shape = (40_000, 5)
    p, m1, m2 = _state(rng, shape)
    g = _sparse(rng, shape, 300)
    lr, sc = _scalars()
    serial = [a.copy() for a in (p, m1, m2)]
    adam_host.sparse_dense(ATTRS, lr, serial[0], g, {"Moment1": serial[1], "Moment2": serial[2]}, sc)
    with adam_host.paired_steps():
        adam_host.sparse_dense(ATTRS, lr, p, g, {"Moment1": m1, "Moment2": m2}, sc)
    for got, want in zip((p, m1, m2), serial):
        np.testing.assert_array_equal(got, want)  # one step in a pass of its own: the serial operations
