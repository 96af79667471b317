"""Optimizers: update ops vs numpy references (dense and SelectedRows grads), minimize on a
model vs a replay of the fetched gradients, regularization, clipping, per-parameter
learning rate, what minimize returns and its errors."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import clip, layers, optimizer, regularizer
from fleetkit.core.framework import ROLE_LRSCHED, ROLE_OPTIMIZE
from fleetkit.core.scope import SelectedRows
from fleetkit.errors import InvalidArgumentError, ShapeError

TOL = dict(rtol=1e-6, atol=1e-9)


# --------------------------------------------------------- numpy references
# ref(p, g, lr, st, **attrs) -> new p; st (the accumulators) is updated in the dict.
def ref_sgd(p, g, lr, st):
    return p - lr * g


def ref_momentum(p, g, lr, st, mu, use_nesterov):
    v = mu * st["Velocity"] + g
    st["Velocity"] = v
    return p - lr * (g + mu * v) if use_nesterov else p - lr * v


def ref_adam(p, g, lr, st, beta1, beta2, epsilon, lazy_mode=False):
    m1 = beta1 * st["Moment1"] + (1 - beta1) * g
    m2 = beta2 * st["Moment2"] + (1 - beta2) * g ** 2
    lr_t = lr * np.sqrt(1 - st["Beta2Pow"]) / (1 - st["Beta1Pow"])
    st.update(Moment1=m1, Moment2=m2, Beta1Pow=st["Beta1Pow"] * beta1, Beta2Pow=st["Beta2Pow"] * beta2)
    return p - lr_t * m1 / (np.sqrt(m2) + epsilon)


def ref_adagrad(p, g, lr, st, epsilon):
    m = st["Moment"] + g ** 2
    st["Moment"] = m
    return p - lr * g / (np.sqrt(m) + epsilon)


def ref_decayed_adagrad(p, g, lr, st, decay, epsilon):
    m = decay * st["Moment"] + (1 - decay) * g ** 2
    st["Moment"] = m
    return p - lr * g / (np.sqrt(m) + epsilon)


def ref_rmsprop(p, g, lr, st, decay, epsilon, momentum, centered):
    ms = decay * st["MeanSquare"] + (1 - decay) * g ** 2
    if centered:
        mg = decay * st["MeanGrad"] + (1 - decay) * g
        st["MeanGrad"] = mg
        mom = momentum * st["Moment"] + lr * g / np.sqrt(ms - mg ** 2 + epsilon)
    else:
        mom = momentum * st["Moment"] + lr * g / np.sqrt(ms + epsilon)
    st.update(MeanSquare=ms, Moment=mom)
    return p - mom


def ref_adamax(p, g, lr, st, beta1, beta2, epsilon):
    m = beta1 * st["Moment"] + (1 - beta1) * g
    inf = np.maximum(beta2 * st["InfNorm"] + epsilon, np.abs(g))
    out = p - lr / (1 - st["Beta1Pow"]) * m / inf
    st.update(Moment=m, InfNorm=inf, Beta1Pow=st["Beta1Pow"] * beta1)
    return out


def ref_adadelta(p, g, lr, st, rho, epsilon):
    g2 = rho * st["AvgSquaredGrad"] + (1 - rho) * g ** 2
    upd = -np.sqrt((st["AvgSquaredUpdate"] + epsilon) / (g2 + epsilon)) * g
    st.update(AvgSquaredGrad=g2, AvgSquaredUpdate=rho * st["AvgSquaredUpdate"] + (1 - rho) * upd ** 2)
    return p + upd


def ref_ftrl(p, g, lr, st, l1, l2, lr_power):
    sq, lin = st["SquaredAccumulator"], st["LinearAccumulator"]
    new = sq + g ** 2
    lin = lin + g - (new ** -lr_power - sq ** -lr_power) / lr * p
    y = new ** -lr_power / lr + 2 * l2
    st.update(SquaredAccumulator=new, LinearAccumulator=lin)
    return np.where(np.abs(lin) > l1, (l1 * np.sign(lin) - lin) / y, 0.0)


def ref_lars_momentum(p, g, lr, st, mu, lars_coeff, lars_weight_decay):
    pn, gn = np.linalg.norm(p), np.linalg.norm(g)
    local = lr * lars_coeff * pn / (gn + lars_weight_decay * pn) if pn > 0 and gn > 0 else lr
    v = mu * st["Velocity"] + local * (g + lars_weight_decay * p)
    st["Velocity"] = v
    return p - v


# op type -> (accumulators {slot: initial value or "like"}, attrs, reference)
CASES = {
    "sgd": ("sgd", {}, {}, ref_sgd),
    "momentum": ("momentum", {"Velocity": 0.0}, {"mu": 0.9, "use_nesterov": False}, ref_momentum),
    "nesterov": ("momentum", {"Velocity": 0.0}, {"mu": 0.8, "use_nesterov": True}, ref_momentum),
    "adam": ("adam", {"Moment1": 0.0, "Moment2": 0.0, "Beta1Pow": [0.9], "Beta2Pow": [0.999]},
             {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}, ref_adam),
    "adagrad": ("adagrad", {"Moment": 0.1}, {"epsilon": 1e-6}, ref_adagrad),
    "decayed_adagrad": ("decayed_adagrad", {"Moment": 0.0}, {"decay": 0.9, "epsilon": 1e-6}, ref_decayed_adagrad),
    "rmsprop": ("rmsprop", {"MeanSquare": 0.0, "Moment": 0.0},
                {"decay": 0.9, "epsilon": 1e-6, "momentum": 0.5, "centered": False}, ref_rmsprop),
    "rmsprop_centered": ("rmsprop", {"MeanSquare": 0.0, "Moment": 0.0, "MeanGrad": 0.0},
                         {"decay": 0.9, "epsilon": 1e-6, "momentum": 0.5, "centered": True}, ref_rmsprop),
    "adamax": ("adamax", {"Moment": 0.0, "InfNorm": 0.0, "Beta1Pow": [0.9]},
               {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}, ref_adamax),
    "lars_momentum": ("lars_momentum", {"Velocity": 0.0}, {"mu": 0.9, "lars_coeff": 0.01, "lars_weight_decay": 0.001},
                      ref_lars_momentum),
    "adadelta": ("adadelta", {"AvgSquaredGrad": 0.0, "AvgSquaredUpdate": 0.0}, {"rho": 0.95, "epsilon": 1e-6},
                 ref_adadelta),
    "ftrl": ("ftrl", {"SquaredAccumulator": 0.0, "LinearAccumulator": 0.0},
             {"l1": 0.01, "l2": 0.1, "lr_power": -0.5}, ref_ftrl),
}


def _init_state(accs, shape):
    return {s: np.array(v, dtype=np.float64) if isinstance(v, list) else np.full(shape, v, np.float64)
            for s, v in accs.items()}


def run_update_op(op_type, p0, grads, lr, state, attrs):
    """Run the op once per gradient (dense arrays or SelectedRows); return (param, accumulators)."""
    prog, scope = fk.Program(), fk.Scope()
    block = prog.global_block()
    block.create_var(name="p", shape=p0.shape, dtype="float64", persistable=True)
    block.create_var(name="g", shape=p0.shape, dtype="float64")
    block.create_var(name="lr", shape=[1], dtype="float64", persistable=True)
    ins, outs = {"Param": ["p"], "Grad": ["g"]}, {"ParamOut": ["p"]}
    if op_type != "adadelta":
        ins["LearningRate"] = ["lr"]
    for slot, v in state.items():
        block.create_var(name=slot.lower(), shape=v.shape, dtype="float64", persistable=True)
        ins[slot], outs[slot + "Out"] = [slot.lower()], [slot.lower()]
        scope.set(slot.lower(), v.copy())
    block.append_op(op_type, ins, outs, attrs)
    scope.set("p", p0.copy())
    scope.set("lr", np.array([lr]))
    exe = fk.Executor()
    for g in grads:
        scope.set("g", g)
        exe.run(prog, scope=scope)
    return scope.numpy("p").copy(), {s: scope.numpy(s.lower()).copy() for s in state}


def _replay(ref, p, grads, lr, state, attrs):
    st = {k: v.copy() for k, v in state.items()}
    for g in grads:
        g = g.to_dense() if isinstance(g, SelectedRows) else g
        p = ref(p, g, lr, st, **attrs)
    return p, st


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_op_matches_numpy_reference(case):
    op_type, accs, attrs, ref = CASES[case]
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(4)]
    state = _init_state(accs, p0.shape)
    got_p, got_st = run_update_op(op_type, p0, grads, 0.05, state, attrs)
    want_p, want_st = _replay(ref, p0, grads, 0.05, state, attrs)
    np.testing.assert_allclose(got_p, want_p, **TOL)
    for s in state:
        np.testing.assert_allclose(got_st[s], want_st[s], **TOL, err_msg=s)


def _sparse_grads(rng, height=6, width=3, steps=3):
    """SelectedRows grads with repeated rows (rows 4 and 5 never touched)."""
    out = []
    for _ in range(steps):
        rows = rng.choice([0, 1, 2, 3], size=5)
        rows[:2] = [2, 2]  # a repeated row
        out.append(SelectedRows(rows, rng.normal(size=(5, width)), height))
    return out


@pytest.mark.parametrize("case", ["sgd", "momentum", "nesterov", "adam", "adagrad", "decayed_adagrad", "rmsprop",
                                  "rmsprop_centered", "adamax", "adadelta"])
def test_sparse_grad_equals_dense_update(case):
    op_type, accs, attrs, ref = CASES[case]
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=(6, 3))
    grads = _sparse_grads(rng)
    state = _init_state(accs, p0.shape)
    sp_p, sp_st = run_update_op(op_type, p0, grads, 0.1, state, attrs)
    de_p, de_st = run_update_op(op_type, p0, [g.to_dense() for g in grads], 0.1, state, attrs)
    np.testing.assert_allclose(sp_p, de_p, **TOL)
    for s in state:
        np.testing.assert_allclose(sp_st[s], de_st[s], **TOL, err_msg=s)
    want_p, _ = _replay(ref, p0, grads, 0.1, state, attrs)
    np.testing.assert_allclose(sp_p, want_p, **TOL)


def _replay_rows(ref, p, grads, lr, state, attrs, row_shaped):
    """Reference of a lazy update: only the merged rows of each grad change."""
    p, st = p.copy(), {k: v.copy() for k, v in state.items()}
    for g in grads:
        rows = np.unique(g.rows)
        dense = g.to_dense()
        sub = {k: (v[rows] if k in row_shaped else v) for k, v in st.items()}
        p[rows] = ref(p[rows], dense[rows], lr, sub, **attrs)
        for k, v in sub.items():
            if k in row_shaped:
                st[k][rows] = v
            else:
                st[k] = v
    return p, st


@pytest.mark.parametrize("case", ["adam_lazy", "ftrl"])
def test_lazy_updates_touch_only_the_rows(case):
    op_type, accs, attrs, ref = CASES["adam" if case == "adam_lazy" else case]
    attrs = {**attrs, "lazy_mode": True} if case == "adam_lazy" else attrs
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(6, 3))
    grads = _sparse_grads(rng)
    state = _init_state(accs, p0.shape)
    got_p, got_st = run_update_op(op_type, p0, grads, 0.1, state, attrs)
    row_shaped = {k for k, v in state.items() if v.shape == p0.shape}
    want_p, want_st = _replay_rows(ref, p0, grads, 0.1, state, attrs, row_shaped)
    np.testing.assert_allclose(got_p, want_p, **TOL)
    for s in state:
        np.testing.assert_allclose(got_st[s], want_st[s], **TOL, err_msg=s)
    np.testing.assert_array_equal(got_p[4:], p0[4:])  # never-touched rows keep their values
    for s in row_shaped:
        np.testing.assert_array_equal(got_st[s][4:], state[s][4:])
    # the non-lazy adam does move untouched rows (their moments decay, not their zero grads)
    if case == "adam_lazy":
        dense_p, _ = run_update_op(op_type, p0, grads[:1] + [SelectedRows([0], np.ones((1, 3)), 6)],
                                   0.1, state, {**attrs, "lazy_mode": False})
        assert not np.allclose(dense_p[1:4], p0[1:4])


def test_updates_are_in_place_and_read_only_arrays_are_copied():
    prog, scope = fk.Program(), fk.Scope()
    block = prog.global_block()
    for n, shape in (("p", [4]), ("g", [4]), ("lr", [1]), ("v", [4])):
        block.create_var(name=n, shape=shape, dtype="float32", persistable=True)
    block.append_op("momentum", {"Param": ["p"], "Grad": ["g"], "Velocity": ["v"], "LearningRate": ["lr"]},
                    {"ParamOut": ["p"], "VelocityOut": ["v"]}, {"mu": 0.5})
    p, v = np.ones(4, "float32"), np.zeros(4, "float32")
    ro = np.full(4, 2.0, "float32")
    ro.flags.writeable = False
    scope.set("p", p), scope.set("v", v), scope.set("g", np.ones(4, "float32"))
    scope.set("lr", np.array([0.5], "float32"))
    fk.Executor().run(prog, scope=scope)
    assert scope.get("p") is p and scope.get("v") is v  # the same arrays, updated
    np.testing.assert_allclose(p, 0.5)
    scope.set("p", ro)
    fk.Executor().run(prog, scope=scope)
    np.testing.assert_allclose(ro, 2.0)  # the caller's read-only array is untouched
    np.testing.assert_allclose(scope.numpy("p"), 2.0 - 0.5 * 1.5)
    assert scope.numpy("p").dtype == np.float32


def test_increment_op_keeps_dtype():
    prog, scope = fk.Program(), fk.Scope()
    block = prog.global_block()
    block.create_var(name="c", shape=[1], dtype="int64", persistable=True)
    block.append_op("increment", {"X": ["c"]}, {"Out": ["c"]}, {"step": 2.0})
    scope.set("c", np.array([3], "int64"))
    exe = fk.Executor()
    exe.run(prog, scope=scope)
    (c,) = exe.run(prog, scope=scope, fetch_list=["c"])
    assert c.dtype == np.int64 and c.tolist() == [7]


def test_update_op_rejects_mismatched_grad_shape():
    block = fk.Program().global_block()
    block.create_var(name="p", shape=[4, 3])
    block.create_var(name="g", shape=[3, 4])
    block.create_var(name="lr", shape=[1])
    with pytest.raises(ShapeError, match=r"Grad 'g' shape \[3, 4\] differs from Param 'p' shape \[4, 3\]"):
        block.append_op("sgd", {"Param": ["p"], "Grad": ["g"], "LearningRate": ["lr"]}, {"ParamOut": ["p"]})


# --------------------------------------------------------------- on a model
def _regression(param_attr=None, bias_attr=None):
    x = layers.data("x", [4], dtype="float64")
    y = layers.data("y", [1], dtype="float64")
    h = layers.fc(x, 3, act="tanh", param_attr=param_attr, bias_attr=bias_attr)
    pred = layers.fc(h, 1)
    return layers.mean(layers.square(pred - y))


def _batches(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(8, 4)), "y": rng.normal(size=(8, 1))} for _ in range(n)]


def _train_and_replay(loss, pgs, step_ref, steps=5):
    """Run ``steps`` batches; replay with ``step_ref(params, grads)`` from the fetched grads."""
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    scope = fk.global_scope()
    params = {p.name: scope.numpy(p.name).copy() for p, _ in pgs}
    for feed in _batches(steps):
        grads = exe.run(feed=feed, fetch_list=[g for _, g in pgs])
        params = step_ref(params, {p.name: g for (p, _), g in zip(pgs, grads)})
    for name, want in params.items():
        np.testing.assert_allclose(scope.numpy(name), want, **TOL, err_msg=name)


MODEL_CASES = {
    "sgd": (lambda: optimizer.SGD(0.1), "sgd", {}),
    "momentum": (lambda: optimizer.Momentum(0.1, momentum=0.9), "momentum", {"mu": 0.9, "use_nesterov": False}),
    "nesterov": (lambda: optimizer.MomentumOptimizer(0.1, 0.8, use_nesterov=True), "nesterov",
                 {"mu": 0.8, "use_nesterov": True}),
    "adam": (lambda: optimizer.Adam(0.01), "adam", {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}),
    "adagrad": (lambda: optimizer.Adagrad(0.1, initial_accumulator_value=0.1), "adagrad", {"epsilon": 1e-6}),
    "rmsprop": (lambda: optimizer.RMSProp(0.01, rho=0.9, momentum=0.5), "rmsprop",
                {"decay": 0.9, "epsilon": 1e-6, "momentum": 0.5, "centered": False}),
    "adamax": (lambda: optimizer.Adamax(0.01), "adamax", {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}),
    "lars_momentum": (lambda: optimizer.LarsMomentum(0.5, momentum=0.9, lars_coeff=0.02), "lars_momentum",
                      {"mu": 0.9, "lars_coeff": 0.02, "lars_weight_decay": 0.0005}),
    "decayed_adagrad": (lambda: optimizer.DecayedAdagrad(0.1, decay=0.9), "decayed_adagrad",
                        {"decay": 0.9, "epsilon": 1e-6}),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_minimize_matches_replayed_reference(case):
    make, ref_case, attrs = MODEL_CASES[case]
    _, accs, _, ref = CASES[ref_case]
    opt = make()
    loss = _regression()
    _, pgs = opt.minimize(loss)
    lr = float(np.float32(opt._learning_rate))  # the learning-rate variable is float32
    states = {}

    def step(params, grads):
        out = {}
        for n, p in params.items():
            st = states.setdefault(n, _init_state(accs, p.shape))
            out[n] = ref(p, grads[n], lr, st, **attrs)
        return out
    _train_and_replay(loss, pgs, step)


def test_per_parameter_learning_rate():
    loss = _regression(param_attr=fk.ParamAttr(learning_rate=0.5))
    ops, pgs = optimizer.SGD(0.1).minimize(loss)
    scales = [op for op in ops if op.type == "scale"]
    assert len(scales) == 1 and scales[0].role == ROLE_LRSCHED and scales[0].attr("scale") == 0.5
    lr = float(np.float32(0.1))
    factor = {p.name: p.optimize_attr["learning_rate"] for p, _ in pgs}
    assert factor["fc_0.w_0"] == 0.5
    _train_and_replay(loss, pgs, lambda ps, gs: {n: p - lr * factor[n] * gs[n] for n, p in ps.items()})


def test_l2_decay_and_param_level_l1_override():
    loss = _regression(bias_attr=fk.ParamAttr(regularizer=regularizer.L1Decay(0.02),
                                               initializer=fk.initializer.Constant(0.3)))
    ops, pgs = optimizer.SGD(0.1, regularization=regularizer.L2Decay(0.01)).minimize(loss)
    decays = [op for op in ops if op.type == "weight_decay"]
    assert len(decays) == len(pgs) and all(op.role == ROLE_OPTIMIZE for op in decays)
    modes = {op.input("Param")[0]: op.attr("mode") for op in decays}
    assert modes["fc_0.b_0"] == "l1" and modes["fc_0.w_0"] == "l2"
    lr = float(np.float32(0.1))

    def step(ps, gs):
        return {n: p - lr * (gs[n] + (0.02 * np.sign(p) if n == "fc_0.b_0" else 0.01 * p))
                for n, p in ps.items()}
    _train_and_replay(loss, pgs, step)


def test_weight_decay_on_selected_rows_touches_rows_once():
    prog, scope = fk.Program(), fk.Scope()
    block = prog.global_block()
    block.create_var(name="p", shape=[5, 2], dtype="float64")
    block.create_var(name="g", shape=[5, 2], dtype="float64", type="selected_rows")
    block.append_op("weight_decay", {"Param": ["p"], "Grad": ["g"]}, {"Out": ["out"]}, {"coeff": 0.5})
    p = np.arange(10.0).reshape(5, 2)
    scope.set("p", p)
    scope.set("g", SelectedRows([3, 1, 3], np.ones((3, 2)), 5))
    (got,) = fk.Executor().run(prog, scope=scope, fetch_list=["out"], return_numpy=False)
    assert isinstance(got, SelectedRows) and got.rows.tolist() == [1, 3]
    np.testing.assert_allclose(got.values, [[1 + 0.5 * 2, 1 + 0.5 * 3], [2 + 0.5 * 6, 2 + 0.5 * 7]])


def _global_norm_scale(grads, clip_norm):
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
    return clip_norm / max(norm, clip_norm)


def test_gradient_clip_by_global_norm_then_l2_decay():
    loss = _regression()
    fk.clip.set_gradient_clip(clip.GradientClipByGlobalNorm(clip_norm=0.05))
    ops, pgs = optimizer.SGD(0.1, regularization=regularizer.L2Decay(0.01)).minimize(loss)
    types = [op.type for op in ops]
    assert types.count("gradient_clip_by_global_norm") == 1
    assert types.index("gradient_clip_by_global_norm") < types.index("weight_decay") < types.index("sgd")
    lr = float(np.float32(0.1))

    def step(ps, gs):
        s = _global_norm_scale(gs, 0.05)
        assert s < 1  # the clip is active
        return {n: p - lr * (gs[n] * s + 0.01 * p) for n, p in ps.items()}
    _train_and_replay(loss, pgs, step)


def test_gradient_clip_by_value_and_by_norm():
    x = layers.data("x", [4], dtype="float64")
    y = layers.data("y", [1], dtype="float64")
    h = layers.fc(x, 3, param_attr=fk.ParamAttr(gradient_clip=clip.GradientClipByValue(0.02)), bias_attr=False)
    pred = layers.fc(h, 1, param_attr=fk.ParamAttr(gradient_clip=clip.GradientClipByNorm(0.01)), bias_attr=False)
    loss = layers.mean(layers.square(pred - y))
    _, pgs = optimizer.SGD(0.1).minimize(loss)
    lr = float(np.float32(0.1))

    def step(ps, gs):
        g0 = np.clip(gs["fc_0.w_0"], -0.02, 0.02)
        g1 = gs["fc_1.w_0"] * 0.01 / max(np.linalg.norm(gs["fc_1.w_0"]), 0.01)
        return {"fc_0.w_0": ps["fc_0.w_0"] - lr * g0, "fc_1.w_0": ps["fc_1.w_0"] - lr * g1}
    _train_and_replay(loss, pgs, step)


def test_global_norm_op_with_selected_rows():
    prog, scope = fk.Program(), fk.Scope()
    block = prog.global_block()
    block.create_var(name="a", shape=[4, 2], dtype="float64", type="selected_rows")
    block.create_var(name="b", shape=[3], dtype="float64")
    block.append_op("gradient_clip_by_global_norm", {"X": ["a", "b"]}, {"Out": ["oa", "ob"]}, {"clip_norm": 1.0})
    a = SelectedRows([1, 1, 2], np.array([[1.0, 2.0], [1.0, 0.0], [0.0, 3.0]]), 4)
    b = np.array([1.0, -1.0, 2.0])
    scope.set("a", a), scope.set("b", b)
    oa, ob = fk.Executor().run(prog, scope=scope, fetch_list=["oa", "ob"])
    scale = 1.0 / np.sqrt(np.sum(a.to_dense() ** 2) + np.sum(b ** 2))  # merged rows: [2, 2], [0, 3]
    np.testing.assert_allclose(oa, a.to_dense() * scale, **TOL)
    np.testing.assert_allclose(ob, b * scale, **TOL)


def _embedding_model(is_sparse):
    ids = layers.data("ids", [1], dtype="int64")
    y = layers.data("y", [1], dtype="float64")
    emb = layers.embedding(ids, size=[10, 3], is_sparse=is_sparse, dtype="float64",
                           param_attr=fk.ParamAttr(name="emb", initializer=fk.initializer.Uniform(-1, 1, seed=3)))
    pred = layers.fc(emb, 1, param_attr=fk.ParamAttr(initializer=fk.initializer.Constant(0.5)))
    return layers.mean(layers.square(pred - y))


@pytest.mark.parametrize("make", [lambda: optimizer.SGD(0.1), lambda: optimizer.Momentum(0.1, 0.9),
                                  lambda: optimizer.Adagrad(0.1), lambda: optimizer.Adam(0.05)],
                         ids=["sgd", "momentum", "adagrad", "adam"])
def test_sparse_embedding_trains_like_dense(make):
    rng = np.random.default_rng(4)
    feeds = [{"ids": rng.choice([1, 2, 2, 5], size=(6, 1)), "y": rng.normal(size=(6, 1))} for _ in range(4)]
    result = {}
    for is_sparse in (False, True):
        main, startup = fk.Program(), fk.Program()
        with fk.program_guard(main, startup), fk.unique_name.guard():
            loss = _embedding_model(is_sparse)
            make().minimize(loss)
        scope, exe = fk.Scope(), fk.Executor()
        exe.run(startup, scope=scope)
        for f in feeds:
            exe.run(main, feed=f, scope=scope)
        result[is_sparse] = scope.numpy("emb").copy()
    np.testing.assert_allclose(result[True], result[False], **TOL)


# ------------------------------------------------------ what minimize builds
def test_minimize_returns_ops_and_params_grads():
    loss = _regression()
    ops, pgs = optimizer.Adam(0.01).minimize(loss)
    main, startup = fk.default_main_program(), fk.default_startup_program()
    assert [(p.name, g.name) for p, g in pgs] == [
        ("fc_0.w_0", "fc_0.w_0@GRAD"), ("fc_0.b_0", "fc_0.b_0@GRAD"),
        ("fc_1.w_0", "fc_1.w_0@GRAD"), ("fc_1.b_0", "fc_1.b_0@GRAD")]
    assert all(isinstance(p, fk.Parameter) for p, _ in pgs)
    assert [op.type for op in ops] == ["adam"] * 4
    assert ops == main.global_block().ops[-4:]
    for op in ops:
        assert op.role == ROLE_OPTIMIZE
        p, g = op.attr("op_role_var")
        assert op.input("Param") == op.output("ParamOut") == [p] and op.input("Grad") == [g]
        assert op.input("Moment1") == op.output("Moment1Out") == [p + "_moment1_0"]
    lr = main.global_block().var("learning_rate_0")
    assert lr.persistable and lr.shape == (1,) and lr.dtype == "float32"
    acc = main.global_block().var("fc_0.w_0_moment2_0")
    assert acc.persistable and acc.shape == (4, 3)
    inits = {op.output("Out")[0]: op.attr("value") for op in startup.global_block().ops if op.type == "fill_constant"}
    assert inits["learning_rate_0"] == 0.01 and inits["fc_0.w_0_moment1_0"] == 0.0
    assert inits["fc_0.w_0_beta1_pow_acc_0"] == 0.9 and inits["fc_0.w_0_beta2_pow_acc_0"] == 0.999
    # the test clone keeps none of it
    test_prog = main.clone(for_test=True)
    assert not [op for op in test_prog.global_block().ops if op.type in ("adam", "fill_any_like")]


def test_non_trainable_parameter_is_not_updated():
    loss = _regression(param_attr=fk.ParamAttr(trainable=False))
    ops, pgs = optimizer.SGD(0.1).minimize(loss)
    assert "fc_0.w_0" not in [p.name for p, _ in pgs]
    assert "fc_0.w_0" not in [op.input("Param")[0] for op in ops]


def test_minimize_with_explicit_programs_and_parameter_list():
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        loss = _regression()
    ops, pgs = optimizer.Momentum(0.1, 0.9).minimize(loss, startup_program=startup, parameter_list=["fc_1.w_0"])
    assert [p.name for p, _ in pgs] == ["fc_1.w_0"] and [op.type for op in ops] == ["momentum"]
    assert startup.global_block().has_var("fc_1.w_0_velocity_0")
    assert not fk.default_startup_program().global_block().ops
    scope, exe = fk.Scope(), fk.Executor()
    exe.run(startup, scope=scope)
    exe.run(main, feed=_batches(1)[0], scope=scope)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("make, match", [
    (lambda: optimizer.SGD(-0.1), r"SGDOptimizer: learning_rate must be in \[0.0, inf\], got -0.1"),
    (lambda: optimizer.SGD("0.1"), "learning_rate must be a number"),
    (lambda: optimizer.Momentum(0.1, momentum=None), "momentum must be a number"),
    (lambda: optimizer.Adam(0.1, beta1=1.0), r"beta1 must be in \[0.0, 1.0\)"),
    (lambda: optimizer.SGD(0.1, regularization="l2"), "regularization must be an L1Decay/L2Decay"),
    (lambda: regularizer.L2Decay(-1.0), "regularization_coeff must be >= 0"),
    (lambda: clip.GradientClipByValue(0.1, min=0.5), r"min \(0.5\) must be less than max \(0.1\)"),
    (lambda: clip.GradientClipByGlobalNorm(0.0), "clip_norm must be a positive number"),
    (lambda: clip.set_gradient_clip("norm"), "clip must be a GradientClip"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make()


def test_minimize_on_non_variable():
    with pytest.raises(InvalidArgumentError, match="loss must be a Variable.*got str"):
        optimizer.Adam().minimize("loss")


def test_global_norm_group_needs_one_clip_norm():
    x = layers.data("x", [2])
    h = layers.fc(x, 2, param_attr=fk.ParamAttr(gradient_clip=clip.GradientClipByGlobalNorm(1.0)), bias_attr=False)
    out = layers.fc(h, 1, param_attr=fk.ParamAttr(gradient_clip=clip.GradientClipByGlobalNorm(2.0)),
                    bias_attr=False)
    with pytest.raises(InvalidArgumentError, match="group 'default_group' have different clip_norm"):
        optimizer.SGD(0.1).minimize(layers.mean(out))


def test_learning_rate_variable_from_another_program():
    other = fk.Program()
    with fk.program_guard(other, fk.Program()):
        lr = layers.exponential_decay(0.1, 10, 0.5)
    loss = _regression()
    with pytest.raises(InvalidArgumentError, match="belongs to another program"):
        optimizer.SGD(lr).minimize(loss)
