"""conv3d, conv3d_transpose, pool3d, adaptive_pool3d: forward against direct loops (conv3d also
against conv2d on a depth-1 volume), adjointness, finite-difference gradients."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(17)


def _op(op, ins, attrs, out="Output"):
    prog = fk.Program()
    block = prog.global_block()
    for k, v in ins.items():
        block.create_var(name=k.lower(), shape=v.shape, dtype=v.dtype)
    block.append_op(op, {k: [k.lower()] for k in ins}, {out: ["o"]}, attrs)
    return fk.Executor().run(prog, feed={k.lower(): v for k, v in ins.items()}, fetch_list=["o"])[0]


def ref_conv3d(x, w, s, p, groups):
    n, c, *sp = x.shape
    m, cg, *k = w.shape
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p)] * 3)
    out_sp = [(a + 2 * p - b) // s + 1 for a, b in zip(sp, k)]
    out = np.zeros([n, m] + out_sp)
    for b, mi, z, y, q in np.ndindex(n, m, *out_sp):
        gi = mi // (m // groups)
        patch = xp[b, gi * cg:(gi + 1) * cg, z * s:z * s + k[0], y * s:y * s + k[1], q * s:q * s + k[2]]
        out[b, mi, z, y, q] = (patch * w[mi]).sum()
    return out


@pytest.mark.parametrize("s,p,groups", [(1, 0, 1), (2, 1, 2)])
def test_conv3d(s, p, groups):
    x, w = RNG.normal(size=(2, 4, 3, 4, 4)), RNG.normal(size=(4, 4 // groups, 2, 3, 2))
    attrs = {"strides": [s] * 3, "paddings": [p] * 3, "dilations": [1, 1, 1], "groups": groups}
    np.testing.assert_allclose(_op("conv3d", {"Input": x, "Filter": w}, attrs), ref_conv3d(x, w, s, p, groups),
                               rtol=1e-10, atol=1e-12)
    check_grad("conv3d", {"Input": x, "Filter": w}, attrs, outputs=("Output",))


def test_conv3d_transpose_is_the_adjoint_of_conv3d_and_trains_through_layers():
    y, w = RNG.normal(size=(1, 2, 5, 5, 4)), RNG.normal(size=(3, 2, 3, 3, 2))
    attrs = {"strides": [2, 2, 1], "paddings": [1, 1, 0], "dilations": [1, 1, 1], "groups": 1}
    cy = _op("conv3d", {"Input": y, "Filter": w}, attrs)
    x = RNG.normal(size=cy.shape)
    tx = _op("conv3d_transpose", {"Input": x, "Filter": w}, attrs)
    assert tx.shape == y.shape and np.sum(cy * x) == pytest.approx(np.sum(y * tx))
    check_grad("conv3d_transpose", {"Input": x, "Filter": w}, attrs, outputs=("Output",))
    v = layers.data("v", [2, 4, 4, 4])
    out = layers.conv3d_transpose(layers.conv3d(v, 3, 3, padding=1, act="relu"), 2, filter_size=2, stride=2)
    assert out.shape == (-1, 2, 8, 8, 8)


@pytest.mark.parametrize("kind,ceil,exclusive,pad", [("max", False, True, 1), ("avg", False, True, 1),
                                                     ("avg", True, False, 1), ("max", True, True, 0)])
def test_pool3d(kind, ceil, exclusive, pad):
    """(with ceil_mode and padding a max window can lie wholly in the padding: avoided for max)"""
    x = RNG.permutation(2 * 2 * 5 * 4 * 5).reshape(2, 2, 5, 4, 5).astype(np.float64) / 7
    attrs = {"pooling_type": kind, "ksize": [2, 2, 3], "strides": [2, 2, 2], "paddings": [pad, 0, pad],
             "ceil_mode": ceil, "exclusive": exclusive, "global_pooling": False}
    check_grad("pool3d", {"X": x}, attrs)
    got = _op("pool3d", {"X": x}, attrs, out="Out")
    xpad = np.pad(x, [(0, 0), (0, 0), (pad, 3), (0, 2), (pad, 3)], constant_values=np.nan)
    for b, c, z, y, q in np.ndindex(*got.shape):
        win = xpad[b, c, z * 2:z * 2 + 2, y * 2:y * 2 + 2, q * 2:q * 2 + 3]
        cells = win[~np.isnan(win)]
        want = cells.max() if kind == "max" else cells.sum() / (cells.size if exclusive else 12)
        assert got[b, c, z, y, q] == pytest.approx(want)


def test_global_and_adaptive_pool3d():
    x = RNG.permutation(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6).astype(np.float64)
    xv = layers.data("x", [3, 4, 5, 6], dtype="float64")
    exe = fk.Executor()
    g, a = exe.run(feed={"x": x}, fetch_list=[layers.pool3d(xv, global_pooling=True, pool_type="avg"),
                                                   layers.adaptive_pool3d(xv, [2, 2, 3], "max")])
    np.testing.assert_allclose(g[..., 0, 0, 0], x.mean(axis=(2, 3, 4)))
    np.testing.assert_allclose(a[:, :, 1, 0, 2], x[:, :, 2:4, 0:3, 4:6].max(axis=(2, 3, 4)))
    for kind in ("max", "avg"):
        check_grad("adaptive_pool3d", {"X": x[:1, :1] / 100}, {"ksize": [2, 2, 3], "pooling_type": kind})
    with pytest.raises(InvalidArgumentError, match="pool_size must be given"):
        layers.pool3d(xv)
