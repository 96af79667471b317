"""sequence_conv, sequence_softmax, sequence_expand, sequence_reshape, lod_reset: forward
against per-sequence loops, finite-difference gradients, LoD of the outputs, bad input."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(7)
OFF = [0, 3, 4, 4, 8]  # includes a one-row and an empty sequence


def _run(fetch, feed):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe.run(feed=feed, fetch_list=fetch, return_numpy=False)


# ------------------------------------------------------------ sequence_conv
def _ref_seq_conv(x, off, f, length, start):
    out = np.zeros((x.shape[0], f.shape[1]))
    for a, b in zip(off, off[1:]):
        for t in range(a, b):
            col = [x[t + start + k] if a <= t + start + k < b else np.zeros(x.shape[1]) for k in range(length)]
            out[t] = np.concatenate(col) @ f
    return out


@pytest.mark.parametrize("length,start", [(3, -1), (2, 0), (4, -3)])
def test_sequence_conv_forward_and_grad(length, start):
    x, f = RNG.normal(size=(8, 2)), RNG.normal(size=(length * 2, 3))
    attrs = {"contextLength": length, "contextStart": start, "contextStride": 1}
    check_grad("sequence_conv", {"X": (x, [OFF]), "Filter": f}, attrs)
    prog = fk.Program()
    with fk.program_guard(prog, fk.Program()):
        xv = layers.data("x", [2], dtype="float64", lod_level=1)
        fv = layers.data("f", [length * 2, 3], dtype="float64", append_batch_size=False)
        out = prog.global_block().create_var(name="o", dtype="float64")
        prog.global_block().append_op("sequence_conv", {"X": [xv], "Filter": [fv]}, {"Out": [out]}, attrs)
    (got,) = fk.Executor().run(prog, feed={"x": (x, [[3, 1, 0, 4]]), "f": f}, fetch_list=["o"],
                               return_numpy=False)
    np.testing.assert_allclose(np.asarray(got), _ref_seq_conv(x, OFF, f, length, start), rtol=1e-12)
    assert got.lod() == [OFF]


def test_sequence_conv_layer_shapes_params_and_bias():
    x = layers.data("x", [5], lod_level=1)
    y = layers.sequence_conv(x, num_filters=4, filter_size=3, act="tanh")
    assert y.shape == (-1, 4) and y.lod_level == 1
    params = {p.name: p.shape for p in fk.default_main_program().global_block().all_parameters()}
    assert sorted(params.values()) == [(4,), (15, 4)]
    op = [o for o in fk.default_main_program().global_block().ops if o.type == "sequence_conv"][0]
    assert op.attr("contextStart") == -1 and op.attr("contextLength") == 3
    xs = RNG.normal(size=(6, 5)).astype("float32")
    (out,) = _run([y], {"x": (xs, [[2, 4]])})
    assert np.asarray(out).shape == (6, 4) and out.lod() == [[0, 2, 6]]


def test_sequence_conv_needs_lod():
    x = layers.data("x", [2])
    y = layers.sequence_conv(x, 2, 3)
    with pytest.raises(InvalidArgumentError, match="'x' has no LoD"):
        _run([y], {"x": np.ones((3, 2), "float32")})


def test_sequence_conv_rejects_a_stride():
    with pytest.raises(InvalidArgumentError, match="filter_stride must be 1"):
        layers.sequence_conv(layers.data("x", [2], lod_level=1), 2, 3, filter_stride=2)


# --------------------------------------------------------- sequence_softmax
def test_sequence_softmax_forward_and_grad():
    x = RNG.normal(size=(8, 1)) * 3
    check_grad("sequence_softmax", {"X": (x, [OFF])})
    xv = layers.data("x", [1], dtype="float64", lod_level=1)
    (got,) = _run([layers.sequence_softmax(xv)], {"x": (x, [[3, 1, 0, 4]])})
    want = np.zeros_like(x)
    for a, b in zip(OFF, OFF[1:]):
        e = np.exp(x[a:b] - x[a:b].max()) if b > a else x[a:b]
        want[a:b] = e / e.sum() if b > a else e
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


def test_sequence_softmax_is_stable_for_large_values():
    xv = layers.data("x", [1], dtype="float64", lod_level=1)
    (got,) = _run([layers.sequence_softmax(xv)], {"x": (np.array([[1000.0], [1001.0], [-1000.0]]), [[2, 1]])})
    np.testing.assert_allclose(np.asarray(got).ravel(), [1 / (1 + np.e), np.e / (1 + np.e), 1.0])


# ---------------------------------------------------------- sequence_expand
def test_sequence_expand_with_lod_x():
    x = np.arange(8.0).reshape(4, 2)
    y = np.zeros((5, 1))
    check_grad("sequence_expand", {"X": (x, [[0, 2, 3, 4]]), "Y": (y, [[0, 2, 2, 5]])}, {"ref_level": 0}, wrt=["X"])
    xv = layers.data("x", [2], dtype="float64", lod_level=1)
    yv = layers.data("y", [1], dtype="float64", lod_level=2)
    out = layers.sequence_expand(xv, yv, ref_level=0)
    (got,) = _run([out], {"x": (x, [[2, 1, 1]]), "y": (np.zeros((4, 1)), [[2, 0, 1], [1, 2, 1]])})
    # sequence 0 (rows 0-1) twice, sequence 1 not at all, sequence 2 (row 3) once
    np.testing.assert_array_equal(np.asarray(got), x[[0, 1, 0, 1, 3]])
    assert got.lod() == [[0, 2, 4, 5]]


def test_sequence_expand_rows_of_a_dense_x():
    x = RNG.normal(size=(3, 2))
    check_grad("sequence_expand", {"X": x, "Y": (np.zeros((5, 1)), [[0, 2, 2, 5]])}, wrt=["X"])
    xv = layers.data("x", [2], dtype="float64")
    yv = layers.data("y", [1], dtype="float64", lod_level=1)
    (got,) = _run([layers.sequence_expand(xv, yv)], {"x": x, "y": (np.zeros((5, 1)), [[2, 0, 3]])})
    np.testing.assert_array_equal(np.asarray(got), x[[0, 0, 2, 2, 2]])


def test_sequence_expand_count_mismatch():
    xv = layers.data("x", [2], dtype="float64")
    yv = layers.data("y", [1], dtype="float64", lod_level=1)
    with pytest.raises(InvalidArgumentError, match="'x' has 2 sequences but level -1 of Y 'y' has 3"):
        _run([layers.sequence_expand(xv, yv)], {"x": np.ones((2, 2)), "y": (np.zeros((3, 1)), [[1, 1, 1]])})


# --------------------------------------------------------- sequence_reshape
def test_sequence_reshape_forward_grad_and_lod():
    x = RNG.normal(size=(6, 4))
    check_grad("sequence_reshape", {"X": (x, [[0, 2, 6]])}, {"new_dim": 8})
    xv = layers.data("x", [4], dtype="float64", lod_level=1)
    out = layers.sequence_reshape(xv, 2)
    assert out.shape == (-1, 2)
    (got,) = _run([out], {"x": (x, [[2, 4]])})
    np.testing.assert_array_equal(np.asarray(got), x.reshape(-1, 2))
    assert got.lod() == [[0, 4, 12]]


def test_sequence_reshape_indivisible_sequence():
    xv = layers.data("x", [3], dtype="float64", lod_level=1)
    with pytest.raises(InvalidArgumentError, match="1 rows of width 3.*new_dim=2"):
        _run([layers.sequence_reshape(xv, 2)], {"x": (np.ones((3, 3)), [[1, 2]])})


# ----------------------------------------------------------------- lod_reset
def test_lod_reset_from_target_lod_y_lod_and_y_values():
    x = RNG.normal(size=(5, 2))
    check_grad("lod_reset", {"X": (x, [[0, 5]])}, {"target_lod": [0, 2, 5]})
    xv = layers.data("x", [2], dtype="float64", lod_level=1)
    yl = layers.data("yl", [1], dtype="float64", lod_level=1)
    yd = layers.data("yd", [3], dtype="int32", append_batch_size=False)
    a = layers.lod_reset(xv, target_lod=[0, 1, 5])
    b = layers.lod_reset(xv, yl)
    c = layers.lod_reset(xv, yd)
    assert a.lod_level == 1
    got = _run([a, b, c], {"x": (x, [[5]]), "yl": (np.zeros((5, 1)), [[3, 2]]),
                           "yd": np.array([0, 4, 5], dtype="int32")})
    assert [g.lod() for g in got] == [[[0, 1, 5]], [[0, 3, 5]], [[0, 4, 5]]]
    np.testing.assert_array_equal(np.asarray(got[0]), x)


def test_lod_reset_bad_target():
    xv = layers.data("x", [2], dtype="float64")
    out = layers.lod_reset(xv, target_lod=[0, 2, 4])
    with pytest.raises(InvalidArgumentError, match=r"offsets \[0, 2, 4\] of 'x' do not fit its 3 rows.*target_lod"):
        _run([out], {"x": np.ones((3, 2))})
    with pytest.raises(InvalidArgumentError, match="give y or target_lod"):
        layers.lod_reset(xv)


def test_sequence_softmax_rejects_wide_input():
    with pytest.raises(ShapeError, match=r"\[T\] or \[T, 1\]"):
        layers.sequence_softmax(layers.data("x", [3], lod_level=1))


def test_sequence_expand_refuses_an_output_the_lod_makes_too_big():
    xv = layers.data("x", [1], dtype="float32", lod_level=1)
    yv = layers.data("y", [1], dtype="float32", lod_level=1)
    out = layers.sequence_expand(xv, yv)
    with pytest.raises(InvalidArgumentError, match="would make 536870912 rows"):
        _run([out], {"x": (np.zeros((1 << 15, 1), "float32"), [[1 << 15]]),
                     "y": (np.zeros((1 << 14, 1), "float32"), [[1 << 14]])})
