"""conv2d, pool2d, batch_norm, dropout: forward vs loop references, finite-difference
gradients, running statistics, test mode, shape errors, and a small net through the Executor."""

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(0)
BN_OUTS = ("Y", "MeanOut", "VarianceOut", "SavedMean", "SavedVariance")


# --------------------------------------------------------------- references
def ref_conv2d(x, w, stride=(1, 1), pad=(0, 0), dil=(1, 1), groups=1):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, m, oh, ow), dtype=np.float64)
    per_group = m // groups
    for f in range(m):
        c0 = (f // per_group) * cg
        for y in range(oh):
            for xx in range(ow):
                y0, x0 = y * stride[0], xx * stride[1]
                patch = xp[:, c0:c0 + cg, y0:y0 + dil[0] * (kh - 1) + 1:dil[0], x0:x0 + dil[1] * (kw - 1) + 1:dil[1]]
                out[:, f, y, xx] = (patch * w[f]).sum(axis=(1, 2, 3))
    return out


def ref_pool2d(x, k, s, p, pool_type, exclusive=True, ceil_mode=False):
    """fluid's loops: windows clipped to the input; avg divides by the clipped or the full size."""
    n, c, h, w = x.shape

    def size(d, kk, ss, pp):
        return (d - kk + 2 * pp + (ss - 1 if ceil_mode else 0)) // ss + 1

    oh, ow = size(h, k[0], s[0], p[0]), size(w, k[1], s[1], p[1])
    out = np.zeros((n, c, oh, ow))
    for y in range(oh):
        for xx in range(ow):
            hs, ws = y * s[0] - p[0], xx * s[1] - p[1]
            he, we = min(hs + k[0], h), min(ws + k[1], w)
            hs, ws = max(hs, 0), max(ws, 0)
            win = x[:, :, hs:he, ws:we]
            if win.size == 0:  # a ceil_mode window wholly in the padding: fluid's initial max, 0 for avg
                out[:, :, y, xx] = np.finfo(x.dtype).min if pool_type == "max" else 0.0
            elif pool_type == "max":
                out[:, :, y, xx] = win.max(axis=(2, 3))
            else:
                cnt = (he - hs) * (we - ws) if exclusive else k[0] * k[1]
                out[:, :, y, xx] = win.sum(axis=(2, 3)) / cnt
    return out


def ref_batch_norm(x, scale, bias, mean, var, eps, layout="NCHW"):
    ch = x.ndim - 1 if layout == "NHWC" and x.ndim > 2 else 1
    shape = [1] * x.ndim
    shape[ch] = -1
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)


def _run(fetch, feed, program=None):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe.run(program, feed=feed, fetch_list=fetch)


def _distinct(shape):
    """Values at least 0.01 apart, so a max never changes under finite differences."""
    n = int(np.prod(shape))
    return (RNG.permutation(n) * 0.01 + RNG.uniform(0, 0.002, n)).reshape(shape) - n * 0.005


def _op_program(op_type, inputs, outputs, attrs):
    """One op in a fresh program; inputs: {slot: array}; returns (program, {slot: out var name})."""
    prog = fk.Program()
    block = prog.global_block()
    for slot, arr in inputs.items():
        block.create_var(name=slot.lower(), shape=arr.shape, dtype=arr.dtype)
    outs = {s: [f"out_{s.lower()}"] for s in outputs}
    block.append_op(op_type, {s: [s.lower()] for s in inputs}, outs, attrs)
    return prog, {s: n[0] for s, n in outs.items()}


def _run_op(op_type, inputs, outputs=("Out",), attrs=None):
    prog, names = _op_program(op_type, inputs, outputs, attrs or {})
    res = fk.Executor().run(prog, feed={s.lower(): a for s, a in inputs.items()},
                            fetch_list=[names[s] for s in outputs], scope=fk.Scope())
    return dict(zip(outputs, res))


# ------------------------------------------------------------------- conv2d
CONV_CASES = [
    dict(x=(2, 3, 6, 6), w=(4, 3, 3, 3)),
    dict(x=(2, 3, 7, 6), w=(2, 3, 3, 2), strides=[2, 1], paddings=[1, 2]),
    dict(x=(1, 4, 6, 6), w=(6, 2, 3, 3), groups=2, paddings=[1, 1]),
    dict(x=(2, 2, 7, 7), w=(3, 2, 3, 3), dilations=[2, 2], paddings=[1, 1]),
    dict(x=(2, 4, 5, 5), w=(4, 1, 2, 2), groups=4, strides=[2, 2], dilations=[1, 2]),
    dict(x=(3, 2, 4, 4), w=(5, 2, 1, 1)),
]


def _conv_attrs(case):
    return {k: case[k] for k in ("strides", "paddings", "dilations", "groups") if k in case}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_reference(case):
    x, w = RNG.normal(size=case["x"]), RNG.normal(size=case["w"])
    attrs = _conv_attrs(case)
    got = _run_op("conv2d", {"Input": x, "Filter": w}, ("Output",), attrs)["Output"]
    want = ref_conv2d(x, w, attrs.get("strides", (1, 1)), attrs.get("paddings", (0, 0)),
                      attrs.get("dilations", (1, 1)), attrs.get("groups", 1))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_grad(case):
    x, w = RNG.normal(size=case["x"]), RNG.normal(size=case["w"])
    check_grad("conv2d", {"Input": x, "Filter": w}, _conv_attrs(case), outputs=("Output",))


def test_depthwise_conv2d_is_conv2d_with_groups():
    x, w = RNG.normal(size=(2, 3, 5, 5)), RNG.normal(size=(6, 1, 3, 3))
    attrs = {"groups": 3, "paddings": [1, 1]}
    got = _run_op("depthwise_conv2d", {"Input": x, "Filter": w}, ("Output",), attrs)["Output"]
    np.testing.assert_allclose(got, ref_conv2d(x, w, pad=(1, 1), groups=3), rtol=1e-10, atol=1e-10)
    check_grad("depthwise_conv2d", {"Input": x[:1, :, :4, :4], "Filter": w}, attrs, outputs=("Output",))


def test_conv2d_keeps_float32():
    x = RNG.normal(size=(2, 3, 5, 5)).astype("float32")
    w = RNG.normal(size=(4, 3, 3, 3)).astype("float32")
    got = _run_op("conv2d", {"Input": x, "Filter": w}, ("Output",), {"paddings": [1, 1]})["Output"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref_conv2d(x.astype(np.float64), w.astype(np.float64), pad=(1, 1)),
                               rtol=1e-4, atol=1e-5)


def test_conv2d_layer_shapes_bias_and_default_init():
    x = layers.data("x", [3, 9, 9])
    out = layers.conv2d(x, num_filters=8, filter_size=[3, 5], stride=2, padding=[1, 2], act="relu")
    assert out.shape == (-1, 8, 5, 5)
    main = fk.default_main_program()
    assert [op.type for op in main.global_block().ops] == ["conv2d", "elementwise_add", "relu"]
    w = main.global_block().var("conv2d_0.w_0")
    assert w.shape == (8, 3, 3, 5)
    init = [op for op in fk.default_startup_program().global_block().ops if op.output("Out") == [w.name]][0]
    assert init.type == "gaussian_random"
    assert init.attr("std") == pytest.approx((2.0 / (3 * 5 * 3)) ** 0.5) and init.attr("mean") == 0.0
    (got,) = _run([out], {"x": RNG.normal(size=(2, 3, 9, 9)).astype("float32")})
    assert got.shape == (2, 8, 5, 5) and (got >= 0).all()


def test_conv2d_layer_groups_and_no_bias():
    x = layers.data("x", [4, 6, 6])
    out = layers.conv2d(x, num_filters=6, filter_size=3, groups=2, bias_attr=False)
    assert fk.default_main_program().global_block().var("conv2d_0.w_0").shape == (6, 2, 3, 3)
    assert [op.type for op in fk.default_main_program().global_block().ops] == ["conv2d"]
    assert out.shape == (-1, 6, 4, 4)


def test_conv2d_shape_errors_name_the_shapes():
    with pytest.raises(ShapeError, match=r"\[-1, 5, 5\]"):
        layers.conv2d(layers.data("a", [5, 5]), 4, 3)
    with pytest.raises(ShapeError, match=r"groups=2.*3"):
        layers.conv2d(layers.data("b", [3, 5, 5]), 4, 3, groups=2)
    with pytest.raises(InvalidArgumentError, match="filter_size"):
        layers.conv2d(layers.data("c", [3, 5, 5]), 4, [3, 3, 3])
    block = fk.Program().global_block()
    block.create_var(name="x", shape=(-1, 3, 8, 8))
    block.create_var(name="w", shape=(4, 2, 3, 3))
    with pytest.raises(ShapeError, match=r"3 channels.*\[4, 2, 3, 3\].*expects 2") as e:
        block.append_op("conv2d", {"Input": ["x"], "Filter": ["w"]}, {"Output": ["y"]})
    assert "[-1, 3, 8, 8]" in str(e.value)
    block.create_var(name="w2", shape=(4, 3, 9, 9))
    with pytest.raises(ShapeError, match="does not fit"):
        block.append_op("conv2d", {"Input": ["x"], "Filter": ["w2"]}, {"Output": ["y"]})


# ------------------------------------------------------------------- pool2d
POOL_CASES = [
    dict(x=(2, 3, 6, 6), ksize=[2, 2], strides=[2, 2]),
    dict(x=(2, 2, 7, 6), ksize=[3, 3], strides=[2, 2], paddings=[1, 1]),
    dict(x=(1, 2, 5, 7), ksize=[2, 3], strides=[1, 2], paddings=[1, 0]),
    dict(x=(2, 2, 5, 5), ksize=[2, 2], strides=[2, 2], ceil_mode=True),
    dict(x=(1, 2, 6, 5), ksize=[3, 2], strides=[2, 2], paddings=[1, 0], ceil_mode=True),
]


def _pool_attrs(case, pool_type, exclusive=True):
    attrs = {k: case[k] for k in ("ksize", "strides", "paddings", "ceil_mode") if k in case}
    return {**attrs, "pooling_type": pool_type, "exclusive": exclusive}


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("pool_type,exclusive", [("max", True), ("avg", True), ("avg", False)])
def test_pool2d_forward_matches_reference(case, pool_type, exclusive):
    x = RNG.normal(size=case["x"])
    got = _run_op("pool2d", {"X": x}, attrs=_pool_attrs(case, pool_type, exclusive))["Out"]
    want = ref_pool2d(x, case["ksize"], case["strides"], case.get("paddings", [0, 0]), pool_type, exclusive,
                      case.get("ceil_mode", False))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("pool_type,exclusive", [("max", True), ("avg", True), ("avg", False)])
def test_pool2d_grad(case, pool_type, exclusive):
    check_grad("pool2d", {"X": _distinct(case["x"])}, _pool_attrs(case, pool_type, exclusive))


@pytest.mark.parametrize("pool_type", ["max", "avg"])
def test_global_pool2d_forward_and_grad(pool_type):
    x = _distinct((2, 3, 4, 5))
    attrs = {"pooling_type": pool_type, "global_pooling": True, "ksize": [1, 1], "paddings": [1, 1]}
    got = _run_op("pool2d", {"X": x}, attrs=attrs)["Out"]
    want = x.max(axis=(2, 3), keepdims=True) if pool_type == "max" else x.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    check_grad("pool2d", {"X": x}, attrs)


@pytest.mark.parametrize("pool_type,exclusive", [("max", True), ("avg", True), ("avg", False)])
def test_pool2d_window_larger_than_its_input_gives_one_output_as_fluid(pool_type, exclusive):
    """GoogLeNet at 224x224: a 7x7 stride-7 average pool over a 6x6 map.  fluid sizes the
    output with C integer division ((6 - 7) / 7 + 1 = 1) and pools the cells that exist."""
    x = _distinct((2, 3, 6, 6))
    attrs = {"pooling_type": pool_type, "ksize": [7, 7], "strides": [7, 7], "paddings": [0, 0], "exclusive": exclusive}
    got = _run_op("pool2d", {"X": x}, attrs=attrs)["Out"]
    if pool_type == "max":
        want = x.max(axis=(2, 3), keepdims=True)
    else:
        want = x.sum(axis=(2, 3), keepdims=True) / (36 if exclusive else 49)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    check_grad("pool2d", {"X": x}, attrs)
    with pytest.raises(ShapeError, match="does not fit"):   # 2 cells short with stride 1: no output
        layers.pool2d(layers.data("small", [3, 5, 5]), 7, pool_stride=1)


@pytest.mark.parametrize("pool_type", ["max", "avg"])
def test_pool2d_ceil_mode_window_wholly_in_padding(pool_type):
    """Width 5, kernel 2, stride 2, padding 1, ceil: the 4th window starts past the input."""
    x = RNG.normal(size=(1, 2, 2, 5)).astype("float32")
    attrs = {"pooling_type": pool_type, "ksize": [1, 2], "strides": [1, 2], "paddings": [0, 1], "ceil_mode": True}
    got = _run_op("pool2d", {"X": x}, attrs=attrs)["Out"]
    assert got.shape == (1, 2, 2, 4)
    np.testing.assert_allclose(got, ref_pool2d(x, [1, 2], [1, 2], [0, 1], pool_type, True, True), rtol=1e-6)
    assert np.isfinite(got).all()


def test_max_pool_grad_routes_to_first_argmax_only():
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 1] = 5.0  # window 0's max; window 1 is all ties -> its first cell wins
    prog, names = _op_program("pool2d", {"X": x}, ("Out",), {"pooling_type": "max", "ksize": [2, 2],
                                                             "strides": [2, 2]})
    x_var = prog.global_block().var("x")
    x_var.stop_gradient = False
    out = prog.global_block().var(names["Out"])
    with fk.program_guard(prog):
        loss = layers.mean(out)
        (dx,) = fk.gradients([loss], [x_var])
    (got,) = fk.Executor().run(prog, feed={"x": x}, fetch_list=[dx], scope=fk.Scope())
    want = np.zeros_like(x)
    want[0, 0, 1, 1] = want[0, 0, 0, 2] = 0.5
    np.testing.assert_array_equal(got, want)


def test_pool2d_layer_and_errors():
    x = layers.data("x", [3, 7, 7])
    assert layers.pool2d(x, 2, "max", pool_stride=2).shape == (-1, 3, 3, 3)
    assert layers.pool2d(x, 2, "avg", pool_stride=2, ceil_mode=True).shape == (-1, 3, 4, 4)
    assert layers.pool2d(x, pool_type="avg", global_pooling=True).shape == (-1, 3, 1, 1)
    assert layers.pool2d(x, 3, pool_stride=1, pool_padding=1).shape == (-1, 3, 7, 7)
    with pytest.raises(InvalidArgumentError, match="pool_type"):
        layers.pool2d(x, 2, "sum")
    with pytest.raises(InvalidArgumentError, match="pool_size"):
        layers.pool2d(x)
    with pytest.raises(ShapeError, match=r"\[-1, 7\]"):
        layers.pool2d(layers.data("v", [7]), 2)
    with pytest.raises(ShapeError, match=r"does not fit X \[-1, 3, 7, 7\]"):
        layers.pool2d(x, 9)


def test_pool2d_keeps_float32():
    x = RNG.normal(size=(2, 2, 5, 5)).astype("float32")
    for pt in ("max", "avg"):
        got = _run_op("pool2d", {"X": x}, attrs={"pooling_type": pt, "ksize": [3, 3], "paddings": [1, 1]})["Out"]
        assert got.dtype == np.float32


# --------------------------------------------------------------- batch_norm
def _bn_inputs(shape, layout="NCHW"):
    c = shape[-1] if layout == "NHWC" and len(shape) > 2 else shape[1]
    return {"X": RNG.normal(size=shape) * 2 + 1, "Scale": RNG.uniform(0.5, 1.5, c), "Bias": RNG.normal(size=c),
            "Mean": RNG.normal(size=c), "Variance": RNG.uniform(0.5, 2, c)}


@pytest.mark.parametrize("shape,layout", [((4, 3, 2, 3), "NCHW"), ((6, 4), "NCHW"), ((3, 2, 2, 3), "NHWC")])
def test_batch_norm_train_forward_and_running_stats(shape, layout):
    ins = _bn_inputs(shape, layout)
    attrs = {"momentum": 0.8, "epsilon": 1e-3, "data_layout": layout}
    got = _run_op("batch_norm", ins, BN_OUTS, attrs)
    axes = tuple(i for i in range(len(shape)) if i != (len(shape) - 1 if layout == "NHWC" and len(shape) > 2 else 1))
    bm, bv = ins["X"].mean(axis=axes), ins["X"].var(axis=axes)
    np.testing.assert_allclose(got["Y"], ref_batch_norm(ins["X"], ins["Scale"], ins["Bias"], bm, bv, 1e-3, layout),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["MeanOut"], 0.8 * ins["Mean"] + 0.2 * bm, rtol=1e-12)
    np.testing.assert_allclose(got["VarianceOut"], 0.8 * ins["Variance"] + 0.2 * bv, rtol=1e-12)
    np.testing.assert_allclose(got["SavedMean"], bm, rtol=1e-12)
    np.testing.assert_allclose(got["SavedVariance"], 1 / np.sqrt(bv + 1e-3), rtol=1e-12)


def test_batch_norm_test_mode_uses_running_stats():
    ins = _bn_inputs((4, 3, 2, 2))
    got = _run_op("batch_norm", ins, BN_OUTS, {"is_test": True})
    want = ref_batch_norm(ins["X"], ins["Scale"], ins["Bias"], ins["Mean"], ins["Variance"], 1e-5)
    np.testing.assert_allclose(got["Y"], want, rtol=1e-10)


@pytest.mark.parametrize("shape,attrs", [
    ((4, 3, 2, 2), {}),
    ((5, 3), {}),
    ((3, 2, 2, 3), {"data_layout": "NHWC"}),
    ((4, 3, 2, 2), {"fuse_with_relu": True}),
    ((4, 3, 2, 2), {"use_global_stats": True}),
    ((4, 3, 2, 2), {"is_test": True}),
])
def test_batch_norm_grad(shape, attrs):
    check_grad("batch_norm", _bn_inputs(shape, attrs.get("data_layout", "NCHW")), attrs, outputs=BN_OUTS,
               wrt=["X", "Scale", "Bias"], grad_outputs=["Y"], atol=1e-6)


def test_batch_norm_layer_params_running_update_and_clone_for_test():
    x = layers.data("x", [3, 2, 2])
    y = layers.batch_norm(x, momentum=0.5, moving_mean_name="rm", moving_variance_name="rv")
    main = fk.default_main_program()
    op = main.global_block().ops[-1]
    assert op.type == "batch_norm" and op.attr("is_test") is False
    assert op.output("MeanOut") == op.input("Mean") == ["rm"] and op.output("VarianceOut") == ["rv"]
    rm, rv = main.global_block().var("rm"), main.global_block().var("rv")
    for v in (rm, rv):
        assert v.persistable and not v.trainable and v.stop_gradient
    assert {p.name for p in main.all_parameters() if p.trainable} == {op.input("Scale")[0], op.input("Bias")[0]}
    test_prog = main.clone(for_test=True)
    assert test_prog.global_block().ops[-1].attr("is_test") is True

    exe, scope = fk.Executor(), fk.global_scope()
    exe.run(fk.default_startup_program())
    np.testing.assert_array_equal(scope.numpy("rm"), 0.0)
    np.testing.assert_array_equal(scope.numpy("rv"), 1.0)
    xs = [(RNG.normal(size=(8, 3, 2, 2)) * 3 + 2).astype("float32") for _ in range(2)]
    want_m, want_v = np.zeros(3), np.ones(3)
    for xv in xs:
        (yv,) = exe.run(main, feed={"x": xv}, fetch_list=[y])
        bm, bv = xv.mean(axis=(0, 2, 3)), xv.var(axis=(0, 2, 3))
        np.testing.assert_allclose(yv, ref_batch_norm(xv, np.ones(3), np.zeros(3), bm, bv, 1e-5), rtol=1e-4,
                                   atol=1e-4)
        want_m, want_v = 0.5 * want_m + 0.5 * bm, 0.5 * want_v + 0.5 * bv
        np.testing.assert_allclose(scope.numpy("rm"), want_m, rtol=1e-5)
        np.testing.assert_allclose(scope.numpy("rv"), want_v, rtol=1e-5)
    (yt,) = exe.run(test_prog, feed={"x": xs[0]}, fetch_list=[y.name])
    np.testing.assert_allclose(yt, ref_batch_norm(xs[0], np.ones(3), np.zeros(3), want_m, want_v, 1e-5),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scope.numpy("rm"), want_m, rtol=1e-5)  # test mode leaves them alone


def test_batch_norm_layer_2d_act_and_errors():
    x = layers.data("x", [5])
    y = layers.batch_norm(x, act="relu")
    assert y.shape == (-1, 5)
    (yv,) = _run([y], {"x": RNG.normal(size=(6, 5)).astype("float32")})
    assert (yv >= 0).all()
    with pytest.raises(InvalidArgumentError, match="data_layout"):
        layers.batch_norm(x, data_layout="NWC")
    block = fk.Program().global_block()
    for name, shape in [("x", (-1, 3, 4, 4)), ("s", (4,)), ("b", (3,)), ("m", (3,)), ("v", (3,))]:
        block.create_var(name=name, shape=shape)
    with pytest.raises(ShapeError, match=r"Scale must have shape \[3\].*got \[4\]"):
        block.append_op("batch_norm", {"X": ["x"], "Scale": ["s"], "Bias": ["b"], "Mean": ["m"], "Variance": ["v"]},
                        {"Y": ["y"]})


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("impl", ["downgrade_in_infer", "upscale_in_train"])
def test_dropout_grad_with_fixed_seed(impl):
    attrs = {"dropout_prob": 0.4, "fix_seed": True, "seed": 7, "dropout_implementation": impl}
    check_grad("dropout", {"X": RNG.normal(size=(4, 5))}, attrs, outputs=("Out", "Mask"), grad_outputs=["Out"])


@pytest.mark.parametrize("impl,scale", [("downgrade_in_infer", 1.0), ("upscale_in_train", 1 / 0.7)])
def test_dropout_statistics_gradient_and_test_mode(impl, scale):
    x = layers.data("x", [400])
    x.stop_gradient = False
    out = layers.dropout(x, 0.3, dropout_implementation=impl)
    mask_name = fk.default_main_program().global_block().ops[-1].output("Mask")[0]
    loss = layers.mean(out)
    (dx,) = fk.gradients([loss], [x])
    test_prog = fk.default_main_program().clone(for_test=True)
    assert [op.attr("is_test") for op in test_prog.global_block().ops if op.type == "dropout"] == [True]
    xv = RNG.uniform(1, 2, size=(250, 400)).astype("float32")
    exe = fk.Executor()
    ov, mv, dxv = exe.run(feed={"x": xv}, fetch_list=[out, mask_name, dx])
    assert mv.dtype == np.float32 and set(np.unique(mv)) <= {0.0, 1.0}
    assert abs(mv.mean() - 0.7) < 0.01  # 100k draws: std of the mean ~0.0015
    np.testing.assert_allclose(ov, xv * mv * scale, rtol=1e-6)
    assert abs(ov.mean() / xv.mean() - 0.7 * scale) < 0.02
    # the gradient is Mask-based: d mean(out)/dx = mask * scale / numel
    np.testing.assert_allclose(dxv, mv * scale / xv.size, rtol=1e-6)
    # a new draw each run without a seed
    (mv2,) = exe.run(feed={"x": xv}, fetch_list=[mask_name])
    assert not np.array_equal(mv, mv2)
    # test mode: downgrade scales by 1 - p, upscale passes through
    (ot,) = exe.run(test_prog, feed={"x": xv}, fetch_list=[out.name])
    np.testing.assert_allclose(ot, xv * (0.7 if impl == "downgrade_in_infer" else 1.0), rtol=1e-6)


def test_dropout_seed_fixes_the_mask_and_layer_attrs():
    x = layers.data("x", [50])
    out = layers.dropout(x, 0.5, seed=11)
    op = fk.default_main_program().global_block().ops[-1]
    assert op.attr("fix_seed") is True and op.attr("seed") == 11 and op.attr("is_test") is False
    assert op.attr("dropout_implementation") == "downgrade_in_infer"
    assert layers.dropout(x, 0.5, is_test=True).shape == (-1, 50)
    assert fk.default_main_program().global_block().ops[-1].attr("fix_seed") is False
    xv = np.ones((20, 50), dtype="float32")
    exe = fk.Executor()
    a, b = (exe.run(feed={"x": xv}, fetch_list=[out])[0] for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_dropout_edge_probabilities_and_errors():
    x = RNG.normal(size=(3, 4))
    assert np.array_equal(_run_op("dropout", {"X": x}, ("Out", "Mask"), {"dropout_prob": 0.0})["Out"], x)
    for impl in ("downgrade_in_infer", "upscale_in_train"):
        got = _run_op("dropout", {"X": x}, ("Out", "Mask"), {"dropout_prob": 1.0, "dropout_implementation": impl})
        assert np.array_equal(got["Out"], np.zeros_like(x)) and np.isfinite(got["Out"]).all()
    xv = layers.data("x", [4])
    with pytest.raises(InvalidArgumentError, match="dropout_prob"):
        layers.dropout(xv, 1.5)
    with pytest.raises(InvalidArgumentError, match="dropout_implementation"):
        layers.dropout(xv, 0.5, dropout_implementation="scale")


# ------------------------------------------------------- end to end network
def test_small_conv_net_trains_through_executor():
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 3
    with fk.program_guard(main, startup):
        img = layers.data("img", [2, 8, 8])
        label = layers.data("label", [1], dtype="int64")
        h = layers.conv2d(img, 6, 3, padding=1, act="relu")
        h = layers.batch_norm(h)
        h = layers.pool2d(h, 2, "max", pool_stride=2)
        h = layers.conv2d(h, 8, 3, groups=2, padding=1)
        h = layers.pool2d(h, pool_type="avg", global_pooling=True)
        h = layers.dropout(h, 0.2, seed=1)
        predict = layers.fc(h, 2, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        test_prog = main.clone(for_test=True)
        fk.optimizer.SGD(0.1).minimize(loss)
    types = [op.type for op in main.global_block().ops]
    for t in ("conv2d_grad", "batch_norm_grad", "pool2d_grad", "dropout_grad"):
        assert t in types
    assert all(op.attr("is_test") for op in test_prog.global_block().ops if op.has_attr("is_test"))
    # class 1 images are brighter in channel 0: easy to learn
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(64, 2, 8, 8)).astype("float32")
    ys = rng.integers(0, 2, size=(64, 1)).astype("int64")
    xs[:, 0] += ys[:, :, None] * 1.5
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=scope)
    losses = [float(exe.run(main, feed={"img": xs, "label": ys}, fetch_list=[loss], scope=scope)[0][0])
              for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses
    (p,) = exe.run(test_prog, feed={"img": xs, "label": ys}, fetch_list=[predict.name], scope=scope)
    assert ((p[:, 1] > 0.5) == (ys[:, 0] == 1)).mean() > 0.9
