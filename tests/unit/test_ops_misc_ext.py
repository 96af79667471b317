"""rank_loss, margin_rank_loss, bpr_loss, kldiv_loss, maxout, multiplex, scatter, reduce_all/any,
where, sampling_id, gaussian_random_batch_size_like, autoincreased_step_counter."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(12)


def sig(v):
    return 1 / (1 + np.exp(-v))


def _run(fetch, feed, startup=False):
    exe = fk.Executor()
    if startup:
        exe.run(fk.default_startup_program())
    return exe.run(feed=feed, fetch_list=fetch)


def _d(name, shape, dtype="float64", **kw):
    return layers.data(name, shape, dtype=dtype, **kw)


def test_rank_losses():
    lab, l, r = RNG.integers(0, 2, size=(5, 1)).astype(float), RNG.normal(size=(5, 1)), RNG.normal(size=(5, 1))
    check_grad("rank_loss", {"Label": lab, "Left": l, "Right": r}, wrt=["Left", "Right"])
    sign = np.where(lab > 0, 1.0, -1.0)
    check_grad("margin_rank_loss", {"Label": sign, "Left": l, "Right": r}, {"margin": 0.1},
               outputs=("Out", "Activated"), grad_outputs=("Out",), wrt=["Left", "Right"])
    lv, left, right = _d("lab", [1]), _d("l", [1]), _d("r", [1])
    got = _run([layers.rank_loss(lv, left, right), layers.margin_rank_loss(lv, left, right, margin=0.1)],
               {"lab": sign, "l": l, "r": r})
    np.testing.assert_allclose(got[0], np.log1p(np.exp(l - r)) - sign * (l - r))
    np.testing.assert_allclose(got[1], np.maximum(0, -sign * (l - r) + 0.1))


def test_bpr_loss():
    x, lab = RNG.normal(size=(4, 5)), RNG.integers(0, 5, size=(4, 1))
    check_grad("bpr_loss", {"X": x, "Label": lab}, outputs=("Y",))
    (got,) = _run([layers.bpr_loss(_d("x", [5]), _d("y", [1], dtype="int64"))], {"x": x, "y": lab})
    want = [-np.mean([np.log(sig(x[i, lab[i, 0]] - x[i, j])) for j in range(5) if j != lab[i, 0]]) for i in range(4)]
    np.testing.assert_allclose(got.ravel(), want)


@pytest.mark.parametrize("reduction", ["none", "batchmean", "mean", "sum"])
def test_kldiv_loss(reduction):
    x = np.log(RNG.dirichlet(np.ones(4), size=3))
    t = RNG.dirichlet(np.ones(4), size=3)
    t[0, 1] = 0.0  # a zero target contributes nothing
    check_grad("kldiv_loss", {"X": x, "Target": t}, {"reduction": reduction}, outputs=("Loss",), wrt=["X"])
    (got,) = _run([layers.kldiv_loss(_d("x", [4]), _d("t", [4]), reduction)], {"x": x, "t": t})
    full = np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - x), 0)
    want = {"none": full, "sum": full.sum(), "mean": full.mean(), "batchmean": full.sum() / 3}[reduction]
    np.testing.assert_allclose(np.asarray(got).reshape(np.shape(want)), want)


def test_maxout():
    x = RNG.normal(size=(2, 6, 2, 2))
    check_grad("maxout", {"X": x}, {"groups": 3})
    (got,) = _run([layers.maxout(_d("x", [6, 2, 2]), groups=3)], {"x": x})
    np.testing.assert_array_equal(got, x.reshape(2, 2, 3, 2, 2).max(2))


def test_multiplex_and_scatter():
    a, b, ids = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3)), np.array([[1], [0], [1], [1]])
    check_grad("multiplex", {"X": [a, b], "Ids": ids}, wrt=["X"])
    (got,) = _run([layers.multiplex([_d("a", [3]), _d("b", [3])], _d("i", [1], dtype="int64"))],
                  {"a": a, "b": b, "i": ids})
    np.testing.assert_array_equal(got, np.where(ids == 1, b, a))
    x, upd, rows = RNG.normal(size=(5, 2)), RNG.normal(size=(2, 2)), np.array([3, 1])
    check_grad("scatter", {"X": x, "Ids": rows, "Updates": upd}, wrt=["X", "Updates"])
    (got,) = _run([layers.scatter(_d("x", [2]), _d("r", [2], dtype="int64", append_batch_size=False),
                                  _d("u", [2]))], {"x": x, "r": rows, "u": upd})
    want = x.copy()
    want[rows] = upd
    np.testing.assert_array_equal(got, want)
    with pytest.raises(InvalidArgumentError, match="must hold 4 indices in \\[0, 2\\)"):
        _run([layers.multiplex([_d("c", [3]), _d("e", [3])], _d("j", [1], dtype="int64"))],
             {"c": a, "e": b, "j": np.array([[2], [0], [0], [0]])})


def test_bool_reductions_and_where():
    m = np.array([[True, False, True], [True, True, True]])
    mv = _d("m", [3], dtype="bool")
    got = _run([layers.reduce_all(mv), layers.reduce_any(mv, dim=1), layers.reduce_all(mv, dim=1, keep_dim=True),
                layers.where(mv)], {"m": m})
    assert got[0].tolist() == [False] and got[1].tolist() == [True, True] and got[2].tolist() == [[False], [True]]
    np.testing.assert_array_equal(got[3], np.argwhere(m))


def test_sampling_id_and_gaussian_batch_like():
    p = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]] * 500)
    x = _d("p", [3])
    ids = layers.sampling_id(x, seed=3)
    noise = layers.gaussian_random_batch_size_like(x, shape=[-1, 4], mean=2.0, std=0.5, seed=1)
    got_ids, got_noise = _run([ids, noise], {"p": p})
    assert (got_ids[0::2] == 1).all() and set(got_ids[1::2].tolist()) == {0, 2}
    assert abs((got_ids[1::2] == 0).mean() - 0.5) < 0.1
    assert got_noise.shape == (1000, 4) and abs(got_noise.mean() - 2.0) < 0.05 and abs(got_noise.std() - 0.5) < 0.05


def test_autoincreased_step_counter():
    c = layers.autoincreased_step_counter(begin=5, step=2)
    assert layers.autoincreased_step_counter() is c
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    seen = [int(exe.run(fetch_list=[c])[0][0]) for _ in range(3)]
    assert seen == [6, 8, 10]  # fluid starts the counter at begin - 1
