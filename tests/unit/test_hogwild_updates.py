"""Update kernels under Hogwild: two workers updating the same arrays at once (issue 15).

Worker A runs an update op; at one point of its Python code (one trial per line it
executes) worker B runs the same op on the same arrays with its own gradient, whole.
Every trial must end as two benign Hogwild steps: each element moved by a few bounded
steps at most (a step read from a half-applied update, m1 advanced and m2 not yet, is
m1 / eps where m2 is 0: 1e5 times too far), both gradients counted in the moments (none
undone by a copy written back), the beta powers advanced once per step.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import fleetkit as fk
from fleetkit.core.ops import adam_host
from fleetkit.core.registry import KernelContext, get_op_def
from fleetkit.core.scope import SelectedRows

LR, B1, B2 = 0.01, 0.9, 0.999
SMALL, LARGE = (50, 4), (adam_host.BLOCK + 3000, 5)  # LARGE: the blocked host Adam
assert LARGE[0] * LARGE[1] > 4 * adam_host.BLOCK
#: |m1| / sqrt(m2) of Adam moments grown from zero never exceeds this (Cauchy-Schwarz)
RATIO_BOUND = (1 - B1) / np.sqrt((1 - B2) * (1 - B1 * B1 / B2))


def _contexts(op_type, shape, attrs, accs):
    """Contexts of two ops updating the same parameter and accumulators, with gradients gA and gB."""
    prog = fk.Program()
    block = prog.global_block()
    for n in ("p", "gA", "gB", *accs):
        block.create_var(name=n, shape=list(shape), dtype="float32", persistable=n not in ("gA", "gB"))
    for n in ("lr", "b1p", "b2p"):
        block.create_var(name=n, shape=[1], dtype="float32", persistable=True)
    pows = {"adam": {"Beta1Pow": "b1p", "Beta2Pow": "b2p"}, "adamax": {"Beta1Pow": "b1p"}}.get(op_type, {})
    ctxs = []
    for g in ("gA", "gB"):
        ins = {"Param": ["p"], "Grad": [g], "LearningRate": ["lr"], **{s: [n] for s, n in {**accs, **pows}.items()}}
        outs = {"ParamOut": ["p"], **{s + "Out": [n] for s, n in {**accs, **pows}.items()}}
        op = block.append_op(op_type, ins, outs, attrs)
        ctxs.append(KernelContext(op, np, None, fk.CPUPlace()))
    return get_op_def(op_type).forward, ctxs


def _grads(rng, shape, sparse):
    """gA, gB: dense with about half the elements zero (each worker's own), or rows that partly overlap."""
    if not sparse:
        return [(rng.normal(size=shape) * (rng.random(shape) < 0.5)).astype(np.float32) for _ in range(2)]
    n = min(shape[0], 60)  # a few rows of a large table: each trial stays quick
    rows = [np.arange(0, n * 2 // 3), np.arange(n // 3, n)]
    return [SelectedRows(r, rng.normal(size=(len(r), shape[1])).astype(np.float32), shape[0]) for r in rows]


def _env(p0, grads, accs):
    env = {"p": p0.copy(), "gA": grads[0], "gB": grads[1], "lr": np.array([LR], np.float32),
           "b1p": np.array([B1], np.float32), "b2p": np.array([B2], np.float32)}
    env.update({n: np.zeros_like(p0) for n in accs.values()})
    return env


def _run_a_with_b_at(kernel, ctxs, env, at):
    """Run A; B runs whole when A's code reaches its ``at``-th line (after A if never). Returns A's line count."""
    lines = [0]

    def local(frame, event, arg):
        if event == "line":
            if lines[0] == at:
                kernel(ctxs[1])  # a trace function runs untraced: B runs whole, here
            lines[0] += 1
        return local

    for c in ctxs:
        c.env = env
    sys.settrace(lambda frame, event, arg: local)
    try:
        kernel(ctxs[0])
    finally:
        sys.settrace(None)
    if at >= lines[0]:
        kernel(ctxs[1])
    return lines[0]


def _interleavings(op_type, shape, attrs, accs, sparse):
    rng = np.random.default_rng(11)
    kernel, ctxs = _contexts(op_type, shape, attrs, accs)
    p0 = rng.normal(size=shape).astype(np.float32)
    grads = _grads(rng, shape, sparse)
    count = _run_a_with_b_at(kernel, ctxs, _env(p0, grads, accs), at=-1)
    dense = [g.to_dense() if isinstance(g, SelectedRows) else g for g in grads]
    for at in range(count + 1):
        env = _env(p0, grads, accs)
        _run_a_with_b_at(kernel, ctxs, env, at)
        yield at, p0, dense, env


def _check_common(at, p0, env, max_step):
    moved = np.abs(env["p"] - p0).max()
    assert moved <= max_step, f"B run at line event {at} of A: a parameter moved {moved:.3g} (bound {max_step:.3g})"
    np.testing.assert_allclose(env["b1p"], [B1 ** 3], rtol=1e-6, err_msg=f"Beta1Pow, B at line event {at}")


def _check_first_moment(at, m, dense, b):
    """Both gradients' (1 - b) * g in ``m``, each decayed (* b) at most once, by the other worker."""
    want, slack = (1 - b) * (dense[0] + dense[1]), (1 - b) ** 2 * (np.abs(dense[0]) + np.abs(dense[1]))
    bad = np.abs(m - want) > slack * (1 + 1e-4) + 1e-9
    assert not bad.any(), f"B run at line event {at} of A: {int(bad.sum())} first-moment elements lost an update"


@pytest.mark.parametrize("shape,sparse,lazy", [(SMALL, False, False), (LARGE, False, False), (SMALL, True, False),
                                               (LARGE, True, False), (SMALL, True, True)],
                         ids=["dense", "dense-blocked", "sparse", "sparse-blocked", "sparse-lazy"])
def test_adam_interleaved_with_another_worker_takes_two_bounded_steps(shape, sparse, lazy):
    accs = {"Moment1": "m1", "Moment2": "m2"}
    attrs = {"beta1": B1, "beta2": B2, "epsilon": 1e-8, "lazy_mode": lazy}
    lr_t = LR * np.sqrt(1 - B2) / (1 - B1)  # the larger of the two steps' rates
    # |m1| / sqrt(m2) of two gradients' moments: at most (1 - b1) * sqrt(2) / sqrt(b2 * (1 - b2)); the
    # sparse rule's zero-gradient step and its undoing may also see the other worker's moments: 4 steps
    max_step = 4 * lr_t * (1 - B1) * np.sqrt(2) / np.sqrt(B2 * (1 - B2))
    trials = 0
    for at, p0, dense, env in _interleavings("adam", shape, attrs, accs, sparse):
        _check_common(at, p0, env, max_step)
        np.testing.assert_allclose(env["b2p"], [B2 ** 3], rtol=1e-6, err_msg=f"Beta2Pow, B at line event {at}")
        _check_first_moment(at, env["m1"], dense, B1)
        lost = env["m2"] < B2 * (1 - B2) * (dense[0] ** 2 + dense[1] ** 2) * (1 - 1e-4)
        assert not lost.any(), f"B run at line event {at} of A: {int(lost.sum())} second-moment elements lost an update"
        trials += 1
    assert trials > 5  # the tracer saw A's code


def test_adamax_interleaved_with_another_worker_takes_two_bounded_steps():
    accs = {"Moment": "m", "InfNorm": "inf"}
    attrs = {"beta1": B1, "beta2": B2, "epsilon": 1e-8}
    # a step is lr / (1 - b1^t) * m / inf with |m| <= (1 - b1) (|gA| + |gB|) and inf >= b2 max(|gA|, |gB|)
    max_step = 4 * LR / (1 - B1) * 2 * (1 - B1) / B2
    for at, p0, dense, env in _interleavings("adamax", SMALL, attrs, accs, sparse=False):
        _check_common(at, p0, env, max_step)
        _check_first_moment(at, env["m"], dense, B1)
        lost = env["inf"] < B2 * np.maximum(np.abs(dense[0]), np.abs(dense[1])) * (1 - 1e-4)
        assert not lost.any(), f"B run at line event {at} of A: {int(lost.sum())} InfNorm elements lost an update"


def _one_adam_step(m1, m2, g, b1p=B1, b2p=B2):
    """p after one adam op from p = 0 with these moments (float64, one row of elements)."""
    kernel, ctxs = _contexts("adam", m1.shape, {"beta1": B1, "beta2": B2, "epsilon": 1e-8, "lazy_mode": False},
                             {"Moment1": "m1", "Moment2": "m2"})
    env = {"p": np.zeros_like(m1), "gA": g, "m1": m1.copy(), "m2": m2.copy(), "lr": np.array([LR]),
           "b1p": np.array([b1p]), "b2p": np.array([b2p])}
    ctxs[0].env = env
    kernel(ctxs[0])
    return env


def test_adam_step_is_bounded_when_a_race_on_two_cores_lost_a_second_moment_write():
    """Two cores updating one element at the same instant can lose a write (m2 *= b2 storing over
    the other's m2 += ...): m1 holds that gradient, m2 not.  The step stays a normal one."""
    g_other = np.array([[1e-3, -2e-3, 5e-2, 0.0]])
    env = _one_adam_step((1 - B1) * g_other, np.zeros_like(g_other), np.zeros_like(g_other))
    bound = 1.01 * RATIO_BOUND * LR * np.sqrt(1 - B2) / (1 - B1)
    assert np.abs(env["p"]).max() <= bound, f"one step moved {np.abs(env['p']).max():.3g} (bound {bound:.3g})"


def test_adam_ratio_bound_is_never_reached_by_serial_adam():
    """The clip changes nothing in serial training: the gradient sequence that comes closest
    to the bound (each gradient b2 / b1 times the previous) gives the unclipped rule's values."""
    g = (B2 / B1) ** np.arange(150.0)[:, None] * np.array([[1e-6, -3e-6]])
    m1, m2, b1p, b2p = np.zeros((1, 2)), np.zeros((1, 2)), B1, B2
    ratio = 0.0
    for gt in g:
        env = _one_adam_step(m1, m2, gt[None, :], b1p, b2p)
        m1, m2 = B1 * m1 + (1 - B1) * gt, B2 * m2 + (1 - B2) * gt * gt  # the textbook rule
        lr_t = LR * np.sqrt(1 - b2p) / (1 - b1p)
        np.testing.assert_allclose(env["p"], -lr_t * m1 / (np.sqrt(m2) + 1e-8), rtol=1e-9)
        ratio = max(ratio, float(np.abs(m1 / np.sqrt(m2)).max()))
        b1p, b2p = b1p * B1, b2p * B2
    assert 0.95 * RATIO_BOUND < ratio < RATIO_BOUND
    assert adam_host.ratio_bound(B1, B2) >= RATIO_BOUND


def test_centered_rmsprop_interleaved_with_another_worker_stays_finite():
    """Centered RMSProp divides by sqrt(MeanSquare - MeanGrad^2 + eps), never negative in serial
    training (Cauchy-Schwarz); a worker that reads MeanGrad with another's update and MeanSquare
    without it can see a negative variance, and sqrt made the parameter NaN."""
    accs = {"MeanSquare": "ms", "Moment": "mom", "MeanGrad": "mg"}
    attrs = {"decay": 0.5, "epsilon": 1e-10, "momentum": 0.0, "centered": True}
    saw_negative = False
    for at, p0, dense, env in _interleavings("rmsprop", SMALL, attrs, accs, sparse=False):
        assert np.isfinite(env["p"]).all(), f"B run at line event {at} of A: a parameter became NaN"
        saw_negative |= bool((env["ms"] - env["mg"] ** 2 < -1e-6).any())
    assert saw_negative  # the interleavings reach the state the clamp is for
