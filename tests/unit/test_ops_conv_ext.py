"""conv2d_transpose (against the adjoint of conv2d and a direct scatter loop), lrn, pad2d,
pixel_shuffle, shuffle_channel and the resize ops: forward references and gradients."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.ops.conv_ext import interp_matrix
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(13)


def _run(fetch, feed):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe.run(feed=feed, fetch_list=fetch)


def _op(op, ins, attrs, out="Out"):
    prog = fk.Program()
    block = prog.global_block()
    for k, v in ins.items():
        block.create_var(name=k.lower(), shape=v.shape, dtype=v.dtype)
    block.append_op(op, {k: [k.lower()] for k in ins}, {out: ["o"]}, attrs)
    return fk.Executor().run(prog, feed={k.lower(): v for k, v in ins.items()}, fetch_list=["o"])[0]


def ref_conv_t(x, w, s, p, d, groups, extra=0):
    n, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    oh, ow = (h - 1) * s - 2 * p + d * (kh - 1) + 1 + extra, (wd - 1) * s - 2 * p + d * (kw - 1) + 1 + extra
    out = np.zeros((n, mg * groups, oh + 2 * p, ow + 2 * p))
    cg = c // groups
    for b, ci, y, z, i, j in np.ndindex(n, c, h, wd, kh, kw):
        gi = ci // cg
        out[b, gi * mg:(gi + 1) * mg, y * s + i * d, z * s + j * d] += x[b, ci, y, z] * w[ci, :, i, j]
    return out[:, :, p:p + oh, p:p + ow]


@pytest.mark.parametrize("s,p,d,groups", [(1, 0, 1, 1), (2, 1, 1, 2), (2, 0, 2, 1)])
def test_conv2d_transpose(s, p, d, groups):
    x, w = RNG.normal(size=(2, 4, 3, 3)), RNG.normal(size=(4, 3, 3, 2))
    attrs = {"strides": [s, s], "paddings": [p, p], "dilations": [d, d], "groups": groups}
    got = _op("conv2d_transpose", {"Input": x, "Filter": w}, attrs, out="Output")
    np.testing.assert_allclose(got, ref_conv_t(x, w, s, p, d, groups), rtol=1e-10, atol=1e-12)
    check_grad("conv2d_transpose", {"Input": x, "Filter": w}, attrs, outputs=("Output",))


def test_conv2d_transpose_output_size_one_more_than_computed():
    """The book's DCGAN: 7x7 -> 14x14 with filter 5, stride 2, padding 2 (computed: 13x13)."""
    x, w = RNG.normal(size=(2, 3, 7, 7)), RNG.normal(size=(3, 2, 5, 5))
    attrs = {"strides": [2, 2], "paddings": [2, 2], "dilations": [1, 1], "groups": 1, "output_size": [14, 14]}
    got = _op("conv2d_transpose", {"Input": x, "Filter": w}, attrs, out="Output")
    assert got.shape == (2, 2, 14, 14)
    np.testing.assert_allclose(got, ref_conv_t(x, w, 2, 2, 1, 1, extra=1), rtol=1e-10, atol=1e-12)
    check_grad("conv2d_transpose", {"Input": x[:1, :, :4, :4], "Filter": w},
               dict(attrs, output_size=[8, 8]), outputs=("Output",))
    y = layers.conv2d_transpose(layers.data("img", [3, 7, 7]), 2, output_size=[14, 14], filter_size=5,
                                stride=2, padding=2)
    assert y.shape == (-1, 2, 14, 14)
    with pytest.raises(fk.FleetkitError, match=r"output_size \[15, 15\]: H 15 must be in \[13, 15\)"):
        layers.conv2d_transpose(layers.data("img2", [3, 7, 7]), 2, output_size=[15, 15], filter_size=5,
                                stride=2, padding=2)


def test_conv2d_transpose_is_the_adjoint_of_conv2d():
    """<conv2d(y, W), x> == <y, conv2d_transpose(x, W)> for every x, y."""
    y, w, x = RNG.normal(size=(1, 3, 7, 7)), RNG.normal(size=(4, 3, 3, 3)), None
    attrs = {"strides": [2, 2], "paddings": [1, 1], "dilations": [1, 1], "groups": 1}
    cy = _op("conv2d", {"Input": y, "Filter": w}, attrs, out="Output")
    x = RNG.normal(size=cy.shape)
    tx = _op("conv2d_transpose", {"Input": x, "Filter": w}, attrs, out="Output")
    assert tx.shape == y.shape
    assert np.sum(cy * x) == pytest.approx(np.sum(y * tx))


def test_conv2d_transpose_layer():
    x = layers.data("x", [2, 4, 4])
    y = layers.conv2d_transpose(x, num_filters=3, output_size=[9, 9], stride=2, act="relu")
    assert y.shape == (-1, 3, 9, 9)
    params = sorted(tuple(p.shape) for p in fk.default_main_program().global_block().all_parameters())
    assert params == [(2, 3, 3, 3), (3,)]
    (got,) = _run([y], {"x": RNG.normal(size=(2, 2, 4, 4)).astype("float32")})
    assert got.shape == (2, 3, 9, 9) and (got >= 0).all()
    with pytest.raises(InvalidArgumentError, match="give filter_size or output_size"):
        layers.conv2d_transpose(x, 3)


@pytest.mark.parametrize("n", [5, 4])
def test_lrn(n):
    x = RNG.normal(size=(2, 6, 2, 2))
    attrs = {"n": n, "k": 2.0, "alpha": 0.1, "beta": 0.75}
    check_grad("lrn", {"X": x}, attrs, outputs=("Out", "MidOut"), grad_outputs=("Out",))
    (got,) = _run([layers.lrn(layers.data("x", [6, 2, 2], dtype="float64"), n, 2.0, 0.1, 0.75)], {"x": x})
    mid = np.stack([2.0 + 0.1 * (x[:, max(0, c - (n - 1) // 2):c + n // 2 + 1] ** 2).sum(1) for c in range(6)], 1)
    np.testing.assert_allclose(got, x / mid ** 0.75)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad2d(mode):
    x = RNG.normal(size=(2, 2, 3, 4))
    attrs = {"paddings": [1, 2, 2, 1], "mode": mode, "pad_value": 0.5}
    check_grad("pad2d", {"X": x}, attrs)
    (got,) = _run([layers.pad2d(layers.data("x", [2, 3, 4], dtype="float64"), [1, 2, 2, 1], mode, 0.5)], {"x": x})
    kw = {"constant_values": 0.5} if mode == "constant" else {}
    np.testing.assert_array_equal(got, np.pad(x, [(0, 0), (0, 0), (1, 2), (2, 1)], mode=mode, **kw))


def test_pixel_and_channel_shuffle():
    x = RNG.normal(size=(1, 8, 2, 3))
    check_grad("pixel_shuffle", {"X": x}, {"upscale_factor": 2})
    check_grad("shuffle_channel", {"X": x}, {"group": 4})
    xv = layers.data("x", [8, 2, 3], dtype="float64")
    ps, sc = _run([layers.pixel_shuffle(xv, 2), layers.shuffle_channel(xv, 4)], {"x": x})
    assert ps.shape == (1, 2, 4, 6)
    for c, y, z in np.ndindex(2, 4, 6):  # out[c, y, z] = in[c*4 + (y%2)*2 + z%2, y//2, z//2]
        assert ps[0, c, y, z] == x[0, c * 4 + (y % 2) * 2 + z % 2, y // 2, z // 2]
    np.testing.assert_array_equal(sc[0], x[0, [0, 2, 4, 6, 1, 3, 5, 7]])


@pytest.mark.parametrize("op,align,mode", [("bilinear_interp", True, 1), ("bilinear_interp", False, 0),
                                           ("bilinear_interp", False, 1), ("nearest_interp", True, 1),
                                           ("nearest_interp", False, 1)])
def test_resize(op, align, mode):
    x = RNG.normal(size=(1, 2, 3, 4))
    attrs = {"out_h": 5, "out_w": 3, "align_corners": align, "align_mode": mode}
    check_grad(op, {"X": x}, attrs)
    got = _op(op, {"X": x}, attrs)
    mh = interp_matrix(3, 5, op.startswith("nearest"), align, mode)
    mw = interp_matrix(4, 3, op.startswith("nearest"), align, mode)
    np.testing.assert_allclose(got, np.einsum("ah,nchw,bw->ncab", mh, x, mw))


def test_bilinear_align_corners_keeps_the_corners_and_interpolates_linearly():
    m = interp_matrix(3, 5, False, True, 1)
    np.testing.assert_allclose(m @ np.array([0.0, 2.0, 4.0]), [0, 1, 2, 3, 4])
    xv = layers.data("x", [1, 2, 2], dtype="float64")
    (up,) = _run([layers.resize_bilinear(xv, out_shape=[3, 3])], {"x": np.array([[[[0.0, 2.0], [4.0, 6.0]]]])})
    np.testing.assert_allclose(up[0, 0], [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    (near,) = _run([layers.resize_nearest(xv, scale=2.0)], {"x": np.array([[[[0.0, 2.0], [4.0, 6.0]]]])})
    assert near.shape == (1, 1, 4, 4)
