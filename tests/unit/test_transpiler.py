"""DistributeTranspiler: slicing and dispatch rules, the rewritten trainer / pserver
programs, and the pserver optimize blocks replaying one step of local training."""
import json

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers, optimizer
from fleetkit.core.framework import ROLE_LRSCHED, ROLE_OPTIMIZE
from fleetkit.errors import InvalidArgumentError, NotFoundError
from fleetkit.fleet.transpiler import (DistributeTranspiler, DistributeTranspilerConfig, HashName, RoundRobin,
                                       slice_variable, stable_hash)

EPS2 = "127.0.0.1:7001,127.0.0.1:7002"


def build(opt=None, distributed=False, sparse=True, hidden=128, vocab=50):
    """ids -> embedding -> pool -> fc(hidden) -> fc(hidden, 128x128 gets split) -> fc(2)."""
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 7
    with fk.program_guard(main, startup):
        ids = layers.data("ids", shape=[1], dtype="int64", lod_level=1)
        x = layers.data("x", shape=[4], dtype="float32")
        label = layers.data("label", shape=[1], dtype="int64")
        emb = layers.embedding(ids, size=[vocab, 8], is_sparse=sparse, is_distributed=distributed,
                               param_attr=fk.ParamAttr(name="emb"))
        pooled = layers.sequence_pool(emb, "sum")
        h = layers.fc(layers.concat([pooled, x], axis=1), hidden, act="relu")
        h = layers.fc(h, hidden, act="relu", param_attr=fk.ParamAttr(learning_rate=2.0))
        predict = layers.fc(h, 2, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        opt = opt() if callable(opt) else opt
        (opt or optimizer.SGD(0.1)).minimize(loss)
    return main, startup, loss


def transpile(main, startup, pservers=EPS2, trainers=2, sync=True, trainer_id=0, **cfg):
    t = DistributeTranspiler(DistributeTranspilerConfig(**cfg))
    t.transpile(trainer_id, program=main, pservers=pservers, trainers=trainers, sync_mode=sync,
                startup_program=startup)
    return t


# ------------------------------------------------------------------ slicing rules
def test_slice_variable_follows_paddle_rule():
    p = fk.Program()
    v = p.global_block().create_var(name="w", shape=[128, 128])
    blocks = slice_variable(v, 2, 8192)
    assert [(b.block_name, b.rows, b.row_offset) for b in blocks] == [("w.block0", 64, 0), ("w.block1", 64, 64)]
    assert str(blocks[1]) == "w:1:8192"
    # too small to split: one block keeps the var's own name
    small = p.global_block().create_var(name="b", shape=[128])
    assert [b.block_name for b in slice_variable(small, 4, 8192)] == ["b"]
    # whole rows: 3 pservers, 100 rows of 300 -> ceil(30000/3)=10000 -> 34 rows
    odd = p.global_block().create_var(name="o", shape=[100, 300])
    assert [b.rows for b in slice_variable(odd, 3, 8192)] == [34, 34, 32]


def test_dispatchers_roundrobin_and_stable_hash():
    eps = ["a:1", "b:2", "c:3"]
    rr = RoundRobin(eps)
    assert rr.dispatch(["x", "y", "z", "w"]) == ["a:1", "b:2", "c:3", "a:1"]
    rr.reset()
    assert rr.dispatch(["x"]) == ["a:1"]
    hn = HashName(eps)
    assert hn.dispatch(["fc_0.w_0"]) == [eps[stable_hash("fc_0.w_0") % 3]]
    assert stable_hash("fc_0.w_0") == stable_hash("fc_0.w_0")  # no per-process salt (crc32)


def test_config_validation():
    with pytest.raises(InvalidArgumentError, match="min_block_size"):
        transpile(*build()[:2], min_block_size=100)
    with pytest.raises(InvalidArgumentError, match="unknown setting 'slice_up'"):
        DistributeTranspilerConfig(slice_up=False)
    with pytest.raises(InvalidArgumentError, match="'nohost'"):
        transpile(*build()[:2], pservers="nohost")
    with pytest.raises(InvalidArgumentError, match="trainer_id"):
        transpile(*build()[:2], trainer_id=2)


# ------------------------------------------------------------------ trainer program
def test_trainer_program_sync_shape():
    main, startup, _ = build()
    t = transpile(main, startup)
    prog = t.get_trainer_program()
    types = [op.type for op in prog.global_block().ops]
    assert not [op for op in prog.global_block().ops if op.role in (ROLE_OPTIMIZE, ROLE_LRSCHED)]
    assert types[-4:] == ["send", "send_barrier", "recv", "fetch_barrier"]
    send = prog.global_block().ops[-4]
    i = send.input("X").index("fc_1.w_0@GRAD")  # the 128x128 weight: two blocks, one per pserver
    assert send.attr("send_varnames")[i] == ["fc_1.w_0@GRAD.block0", "fc_1.w_0@GRAD.block1"]
    assert sorted(send.attr("epmap")[i]) == sorted(EPS2.split(","))
    assert send.attr("sections")[i] == [64, 64]
    recv = prog.global_block().ops[-2]
    j = recv.output("Out").index("fc_1.w_0")
    assert recv.attr("recv_varnames")[j] == ["fc_1.w_0.block0", "fc_1.w_0.block1"]
    # the original program is untouched
    assert any(op.type == "sgd" for op in main.global_block().ops)


def test_trainer_program_async_has_no_barriers():
    main, startup, _ = build()
    prog = transpile(main, startup, sync=False).get_trainer_program()
    types = [op.type for op in prog.global_block().ops]
    assert "send_barrier" not in types and "fetch_barrier" not in types
    assert types[-2:] == ["send", "recv"]


@pytest.mark.parametrize("in_place", [False, True], ids=["get_trainer_startup_program", "caller-startup"])
def test_trainer_startup_pulls_params_and_drops_server_state(in_place):
    main, startup, _ = build(opt=optimizer.Adam(0.01), distributed=True)
    t = transpile(main, startup)
    st = startup if in_place else t.get_trainer_startup_program()
    outs = {n for op in st.global_block().ops for n in op.output_arg_names}
    assert "emb" not in outs  # the distributed table is never materialized on a trainer
    assert not [n for n in outs if "moment" in n]  # optimizer state lives on the pservers
    recv = st.global_block().ops[-1]
    assert recv.type == "recv" and recv.attr("with_barrier") is False
    assert "fc_1.w_0" in recv.output("Out") and "emb" not in recv.output("Out")


def test_distributed_table_becomes_prefetch():
    main, startup, _ = build(distributed=True)
    t = transpile(main, startup)
    prog = t.get_trainer_program()
    types = [op.type for op in prog.global_block().ops]
    assert "lookup_table" not in types and "lookup_table_grad" not in types
    assert "distributed_lookup_table" in types and "distributed_lookup_table_grad" in types
    send = [op for op in prog.global_block().ops if op.type == "send"][0]
    i = send.input("X").index("emb@GRAD")
    assert send.attr("sections")[i] == [] and send.attr("epmap")[i] == EPS2.split(",")
    for ep in EPS2.split(","):
        ls = t.get_pserver_program(ep).global_block().ops[-1]
        (cfg,) = [json.loads(s) for s in ls.attr("sparse_tables")]
        assert cfg["name"] == "emb" and cfg["shard_num"] == 2 and cfg["optimizer"] == "sgd"
        assert cfg["dim"] == 8 and cfg["init"]["type"] in ("uniform_random", "gaussian_random")
        assert cfg["lr_var"] in t.get_pserver_program(ep).global_block().vars


def test_global_norm_clip_is_rejected_with_a_clear_error():
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[4])
        loss = layers.mean(layers.fc(x, 3))
        fk.clip.set_gradient_clip(fk.clip.GradientClipByGlobalNorm(1.0))
        optimizer.SGD(0.1).minimize(loss)
    with pytest.raises(InvalidArgumentError, match="several parameters"):
        transpile(main, startup)


# ------------------------------------------------------------------ pserver programs
def test_pserver_programs_split_work_and_empty_pserver():
    main, startup, _ = build(opt=optimizer.Adam(0.01))
    eps = ",".join(f"127.0.0.1:{7000 + i}" for i in range(20))  # many more pservers than blocks
    t = transpile(main, startup, pservers=eps)
    hosted = []
    empty = 0
    for ep in eps.split(","):
        prog, st = t.get_pserver_programs(ep)
        ls = prog.global_block().ops[-1]
        assert ls.type == "listen_and_serv" and ls.attr("endpoint") == ep and ls.attr("Fanin") == 2
        hosted += ls.attr("param_blocks")
        if not ls.attr("param_blocks"):
            empty += 1
            assert prog.num_blocks == 1 and ls.attr("grad_to_block_id") == []
        for entry in ls.attr("grad_to_block_id"):
            g, b = entry.rsplit(":", 1)
            upd = [op for op in prog.block(int(b)).ops if op.type == "adam"][0]
            assert upd.input("Grad") == [g]
        with pytest.raises(NotFoundError):
            t.get_pserver_program("1.2.3.4:5")
    assert empty > 0
    params = {p.name for p in main.all_parameters()}
    blocks = {h.split(".block")[0] for h in hosted}
    assert blocks == params and len(hosted) == len(set(hosted))


def _pserver_replay(main, startup, t, feed, scope_init):
    """Run each pserver's startup, load the initial param blocks and the local grads,
    run its optimize blocks; return the params reassembled from the blocks."""
    exe = fk.Executor()
    blocks = {}
    for ep in t.pserver_endpoints:
        prog, st = t.get_pserver_programs(ep)
        scope = fk.Scope()
        exe.run(st, scope=scope)
        origin_of = prog.meta.origin_of
        for new, (orig, off, rows, _) in origin_of.items():
            if orig in scope_init:
                v = scope_init[orig]
                scope.set(new, v[off:off + rows] if rows >= 0 else v)
        ls = prog.global_block().ops[-1]
        if ls.attr("lr_block_id") >= 0:  # what the pserver handler runs once per round
            exe.run_block(prog, ls.attr("lr_block_id"), scope)
        for entry in ls.attr("grad_to_block_id"):
            g, b = entry.rsplit(":", 1)
            base = g.split(".block")[0]
            gv = feed[base]
            if ".block" in g:  # the grad block covers the rows of its param block
                _, off, rows, _ = origin_of[base.replace("@GRAD", "") + g[g.index(".block"):]]
                gv = gv[off:off + rows]
            scope.set(g, gv)
            exe.run_block(prog, int(b), scope)
        for n in ls.attr("param_blocks"):
            blocks[n] = (origin_of[n], scope.numpy(n))
    out = {}
    for n, ((orig, off, rows, _), val) in blocks.items():
        out.setdefault(orig, []).append((off, val))
    return {k: np.concatenate([v for _, v in sorted(parts, key=lambda x: x[0])]) for k, parts in out.items()}


def _fancy_sgd():
    """LR schedule + per-parameter LR + L2 decay + value clipping: every kind of optimize op."""
    fk.clip.set_gradient_clip(fk.clip.GradientClipByValue(0.05))
    return optimizer.SGD(layers.exponential_decay(0.1, 2, 0.5), regularization=fk.regularizer.L2Decay(0.01))


@pytest.mark.parametrize("opt", [lambda: optimizer.SGD(0.1), lambda: optimizer.Adam(0.01), _fancy_sgd],
                         ids=["sgd", "adam", "schedule-decay-clip"])
def test_pserver_blocks_replay_local_step(opt):
    main, startup, loss = build(opt=opt, sparse=False)
    local_startup = startup.clone()  # transpile turns `startup` into the trainer's (pulls params)
    t = transpile(main, startup, trainers=1)
    exe = fk.Executor()
    scope = fk.Scope()
    exe.run(local_startup, scope=scope)
    params = [p.name for p in main.all_parameters()]
    init = {n: scope.numpy(n).copy() for n in params}
    rng = np.random.default_rng(0)
    feed = {"ids": fk.create_lod_tensor(rng.integers(0, 50, (10, 1)), [[3, 3, 4]]),
            "x": rng.normal(size=(3, 4)).astype("float32"), "label": rng.integers(0, 2, (3, 1))}
    grads = exe.run(main, feed=feed, fetch_list=[n + "@GRAD" for n in params], scope=scope)
    local = {n: scope.numpy(n) for n in params}
    replay = _pserver_replay(main, startup, t, {n + "@GRAD": g for n, g in zip(params, grads)}, init)
    assert set(replay) == set(params)
    for n in params:
        np.testing.assert_allclose(replay[n], local[n], rtol=1e-6, atol=1e-7, err_msg=n)


# ------------------------------------------------------------------ fleet (PS mode)
def _fleet_minimize(role, current_id):
    from fleetkit import fleet
    from fleetkit.fleet import UserDefinedRoleMaker
    fleet.init(UserDefinedRoleMaker(current_id=current_id, role=role, worker_num=2,
                                    server_endpoints=EPS2.split(",")))
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[4])
        loss = layers.mean(layers.fc(x, 3))
        fleet.distributed_optimizer(optimizer.SGD(0.1)).minimize(loss)
    return fleet, main


def test_fleet_ps_mode_worker_and_server_programs():
    from fleetkit.fleet import Role
    fleet, main = _fleet_minimize(Role.WORKER, 1)
    assert type(fleet.current()).__name__ == "PSFleet"
    types = [op.type for op in fleet.main_program.global_block().ops]
    assert "send" in types and "sgd" not in types
    assert fleet.startup_program.global_block().ops[-1].type == "recv"
    assert fleet.main_program.global_block().ops[-1].attr("trainer_id") == 1
    fleet, _ = _fleet_minimize(Role.SERVER, 1)
    ls = fleet.main_program.global_block().ops[-1]
    assert ls.type == "listen_and_serv" and ls.attr("endpoint") == EPS2.split(",")[1]
    with pytest.raises(InvalidArgumentError, match="on a server"):
        fleet.init_worker()


def test_transpiler_optimizer_minimize_takes_fluid_14_arguments():
    """minimize(loss, scope=None, startup_program=None, ...): scope is accepted, and a
    startup program given by keyword or second (DistributedOptimizer's order) is used."""
    from fleetkit import fleet
    from fleetkit.fleet import Role, UserDefinedRoleMaker
    for how in ("keyword", "positional"):
        fleet.init(UserDefinedRoleMaker(current_id=0, role=Role.WORKER, worker_num=2,
                                        server_endpoints=EPS2.split(",")))
        main, startup, other_startup = fk.Program(), fk.Program(), fk.Program()
        with fk.program_guard(main, other_startup):  # the default startup is NOT ``startup``
            x = layers.data("x", shape=[4])
            loss = layers.mean(layers.fc(x, 3))
            opt = fleet.distributed_optimizer(optimizer.SGD(0.1))
            if how == "keyword":
                opt.minimize(loss, scope=fk.global_scope(), startup_program=startup)
            else:
                opt.minimize(loss, startup)
        # the transpiler rewrote the startup program it was given (and no other)
        assert [op.type for op in startup.global_block().ops][-1] == "recv", how
        assert "recv" not in [op.type for op in other_startup.global_block().ops], how
    with pytest.raises(InvalidArgumentError, match="two startup programs"):
        opt.minimize(loss, startup, startup)


def test_fleet_rejects_a_collective_strategy():
    from fleetkit import fleet
    from fleetkit.fleet import Role, UserDefinedRoleMaker
    fleet.init(UserDefinedRoleMaker(current_id=0, role=Role.WORKER, worker_num=1, server_endpoints=["a:1"]))
    with pytest.raises(InvalidArgumentError, match="DistributeTranspilerConfig"):
        fleet.distributed_optimizer(optimizer.SGD(0.1), strategy=object())


def test_lookups_of_one_distributed_table_are_fused_into_one_prefetch():
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        slots = [layers.data(f"s{i}", shape=[1], dtype="int64", lod_level=1) for i in range(3)]
        embs = [layers.sequence_pool(layers.embedding(s, size=[100, 4], is_sparse=True, is_distributed=True,
                                                      param_attr=fk.ParamAttr(name="tbl")), "sum") for s in slots]
        loss = layers.mean(layers.fc(layers.concat(embs, axis=1), 1))
        optimizer.SGD(0.1).minimize(loss)
    t = transpile(main, startup, sync=False)
    prog = t.get_trainer_program()
    fwd = [op for op in prog.global_block().ops if op.type == "distributed_lookup_table"]
    assert len(fwd) == 1 and fwd[0].input("Ids") == ["s0", "s1", "s2"] and len(fwd[0].output("Out")) == 3
    assert len([op for op in prog.global_block().ops if op.type == "distributed_lookup_table_grad"]) == 3
    recv = [op for op in prog.global_block().ops if op.type == "recv"][0]
    assert recv.attr("background") is True  # async: pulls overlap the next step
    test = t.get_trainer_test_program(main.clone(for_test=True))
    assert test.global_block().ops[0].type == "recv" and test.global_block().ops[0].attr("background") is False


# ------------------------------------------------------------------ kernels and handler (no sockets)
def test_split_rows_and_shard_by_id():
    from fleetkit.core.scope import SelectedRows
    from fleetkit.pserver.ops import shard_by_id, split_rows
    dense = np.arange(20, dtype="float32").reshape(10, 2)
    a, b = split_rows(dense, [6, 4], "g")
    np.testing.assert_array_equal(np.concatenate([a, b]), dense)
    sr = SelectedRows([1, 7, 7, 9], np.ones((4, 2), "float32"), 10)
    lo, hi = split_rows(sr, [6, 4], "g")
    assert lo.rows.tolist() == [1] and lo.height == 6 and hi.rows.tolist() == [1, 1, 3] and hi.height == 4
    shards = shard_by_id(SelectedRows([4, 3, 4, 8], np.ones((4, 2), "float32"), 10), 2, "g")
    assert shards[0].rows.tolist() == [4, 8] and shards[0].values[0, 0] == 2  # duplicates merged
    assert shards[1].rows.tolist() == [3] and shards[1].height == 10
    with pytest.raises(InvalidArgumentError, match="'g'"):
        split_rows(np.zeros((3, 2)), [6, 4], "g")


def test_executor_handler_applies_checks_and_checkpoints():
    from fleetkit.core.scope import SelectedRows
    from fleetkit.errors import ShapeError
    from fleetkit.pserver.exec_handler import ExecutorHandler
    main, startup, _ = build(opt=optimizer.Adam(0.01), distributed=True)
    t = transpile(main, startup, pservers="127.0.0.1:7001", trainers=1)
    prog, st = t.get_pserver_programs("127.0.0.1:7001")
    scope = fk.Scope()
    fk.Executor().run(st, scope=scope)
    h = ExecutorHandler(prog, scope, fk.CPUPlace(), prog.global_block().ops[-1].attrs)
    w0 = h.get("fc_2.w_0").copy()  # get returns the live array (the server encodes it under its lock)
    g = np.ones_like(w0)
    h.check_grad("fc_2.w_0@GRAD", g)
    h.apply({"fc_2.w_0@GRAD": g})
    np.testing.assert_allclose(h.get("fc_2.w_0"), w0 - 0.01, rtol=1e-4)  # Adam's first step: lr * sign
    with pytest.raises(NotFoundError, match="'nope@GRAD'"):
        h.check_grad("nope@GRAD", g)
    with pytest.raises(ShapeError, match="fc_2.w_0@GRAD"):
        h.check_grad("fc_2.w_0@GRAD", np.ones((3, 3), "float32"))
    rows = h.prefetch("emb", np.array([3, 40]))
    h.apply({"emb@GRAD": SelectedRows([3], np.ones((1, 8), "float32"), 50)})
    assert not np.allclose(h.prefetch("emb", np.array([3])), rows[:1])
    assert h.sparse_memory("emb")[0] == 2
    state = h.state()
    h.apply({"fc_2.w_0@GRAD": g})
    h.load_state(state)
    np.testing.assert_array_equal(h.get("fc_2.w_0"), state["fc_2.w_0"])


@pytest.mark.parametrize("dc_asgd", [False, True])
def test_dc_asgd_compensates_each_trainers_gradient_for_its_stale_pull(dc_asgd):
    """Async, 2 trainers, SGD: both pull w0; trainer 0's gradient is applied as sent (nothing
    changed since its pull); trainer 1's becomes g + g*g*(w1 - w0) with DC-ASGD."""
    from fleetkit.pserver.exec_handler import ExecutorHandler
    lr = 0.5
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[4])
        loss = layers.mean(layers.fc(x, 3, bias_attr=False))
        optimizer.SGD(lr).minimize(loss)
    t = transpile(main, startup, pservers="127.0.0.1:7001", trainers=2, sync=False, enable_dc_asgd=dc_asgd)
    prog, st = t.get_pserver_programs("127.0.0.1:7001")
    assert prog.global_block().ops[-1].attr("dc_asgd") is dc_asgd
    scope = fk.Scope()
    fk.Executor().run(st, scope=scope)
    h = ExecutorHandler(prog, scope, fk.CPUPlace(), prog.global_block().ops[-1].attrs)
    w0 = np.array(h.get_for(0, "fc_0.w_0"))
    np.testing.assert_array_equal(h.get_for(1, "fc_0.w_0"), w0)
    rng = np.random.default_rng(0)
    g0, g1 = (rng.normal(size=w0.shape).astype("float32") for _ in range(2))
    h.apply_from(0, {"fc_0.w_0@GRAD": g0.copy()})
    w1 = w0 - lr * g0
    np.testing.assert_allclose(h.get("fc_0.w_0"), w1, rtol=1e-6)
    h.apply_from(1, {"fc_0.w_0@GRAD": g1.copy()})
    want = w1 - lr * (g1 + g1 * g1 * (w1 - w0)) if dc_asgd else w1 - lr * g1
    np.testing.assert_allclose(h.get("fc_0.w_0"), want, rtol=1e-5, atol=1e-7)


def test_dc_asgd_needs_async_mode():
    main, startup, _ = build()
    with pytest.raises(InvalidArgumentError, match="enable_dc_asgd.*sync_mode=False"):
        transpile(main, startup, sync=True, enable_dc_asgd=True)


# ------------------------------------------------------------------ remote prefetch (sliced sparse table)
def test_sliced_sparse_table_is_prefetched_not_received():
    """A 4000x8 is_sparse table is sliced over both pservers: its lookups prefetch rows by
    row range (fluid 1.4's remote prefetch); neither the trainer program nor the trainer
    startup receives (or initializes) the table; its gradient is still sent by row blocks."""
    main, startup, _ = build(opt=optimizer.Adam(0.01), vocab=4000)
    t = transpile(main, startup)
    assert t.prefetch_tables == ["emb"]
    (plan,) = [p for p in t.params if p.param.name == "emb"]
    prog = t.get_trainer_program()
    ops = prog.global_block().ops
    (fwd,) = [op for op in ops if op.type == "distributed_lookup_table"]
    assert fwd.attr("height_sections") == [2000, 2000] and fwd.attr("table_height") == 4000
    assert fwd.attr("table_names") == ["emb.block0", "emb.block1"] and fwd.attr("epmap") == plan.endpoints
    assert [op.type for op in ops if op.type.startswith("lookup_table")] == []
    (recv,) = [op for op in ops if op.type == "recv"]
    assert "emb" not in recv.output("Out") and "fc_1.w_0" in recv.output("Out")
    assert not [n for names in recv.attr("recv_varnames") for n in names if n.startswith("emb")]
    (send,) = [op for op in ops if op.type == "send"]
    i = send.input("X").index("emb@GRAD")
    assert send.attr("sections")[i] == [2000, 2000]
    assert send.attr("send_varnames")[i] == ["emb@GRAD.block0", "emb@GRAD.block1"]
    st = t.get_trainer_startup_program()
    assert "emb" not in {n for op in st.global_block().ops for n in op.output_arg_names}
    test = t.get_trainer_test_program(main.clone(for_test=True))
    assert "emb" not in test.global_block().ops[0].output("Out")
    assert [op.type for op in test.global_block().ops].count("distributed_lookup_table") == 1
    # each pserver still hosts and updates its block with the dense-param, sparse-grad Adam
    for ep, blk in zip(plan.endpoints, plan.blocks):
        ls = t.get_pserver_program(ep).global_block().ops[-1]
        assert blk.block_name in ls.attr("param_blocks")


def test_remote_prefetch_only_where_it_applies():
    # off by config: the table is received whole, as before
    main, startup, _ = build(vocab=4000)
    t = transpile(main, startup, remote_prefetch=False)
    assert t.prefetch_tables == []
    recv = next(op for op in t.get_trainer_program().global_block().ops if op.type == "recv")
    assert "emb" in recv.output("Out")
    # dense gradient (is_sparse=False) or a table in one block: plain lookup_table
    for kw in ({"sparse": False, "vocab": 4000}, {"vocab": 50}):
        main, startup, _ = build(**kw)
        t = transpile(main, startup)
        assert t.prefetch_tables == []
        assert "lookup_table" in [op.type for op in t.get_trainer_program().global_block().ops]


def test_prefetch_kernel_buckets_ids_by_row_range_and_handler_serves_block_rows(monkeypatch):
    """The trainer kernel sends local row offsets to the block owning each id; the
    pserver handler answers from its dense block; the result equals a local lookup."""
    from fleetkit.pserver import ops as ps_ops
    from fleetkit.pserver.exec_handler import ExecutorHandler
    main, startup, _ = build(opt=optimizer.Adam(0.01), vocab=4000)
    t = transpile(main, startup, pservers="127.0.0.1:7001,127.0.0.1:7002", trainers=1)
    handlers = {}
    for ep in t.pserver_endpoints:
        prog, st = t.get_pserver_programs(ep)
        scope = fk.Scope()
        fk.Executor().run(st, scope=scope)
        handlers[ep] = ExecutorHandler(prog, scope, fk.CPUPlace(), prog.global_block().ops[-1].attrs)
    (plan,) = [p for p in t.params if p.param.name == "emb"]
    full = np.concatenate([handlers[ep].get(b.block_name) for ep, b in zip(plan.endpoints, plan.blocks)])
    asked = []

    class FakeClient:
        def prefetch(self, items):
            items = list(items)
            asked.extend((ep, name, ids.tolist()) for ep, name, ids in items)
            return [handlers[ep].prefetch(name, ids) for ep, name, ids in items]

    monkeypatch.setattr(ps_ops, "_client", lambda ctx: FakeClient())
    prog = t.get_trainer_test_program(main.clone(for_test=True))
    ids = np.array([[3], [2500], [3], [1999], [2000]], dtype="int64")
    feed = {"ids": fk.create_lod_tensor(ids, [[2, 3]]), "x": np.zeros((2, 4), "float32"),
            "label": np.zeros((2, 1), "int64")}
    fwd = next(op for op in prog.global_block().ops if op.type == "distributed_lookup_table")
    fwd_out = fwd.output("Out")[0]
    prog.global_block().ops = [fwd]  # just the lookup (no pserver for the dense params here)
    (out,) = fk.Executor().run(prog, feed=feed, fetch_list=[fwd_out], scope=fk.Scope())
    np.testing.assert_array_equal(np.asarray(out), full[ids.reshape(-1)])
    by_block = {name: got for _, name, got in asked}
    assert by_block == {"emb.block0": [3, 1999], "emb.block1": [0, 500]}  # unique, local offsets
    with pytest.raises(InvalidArgumentError, match="emb.block1"):
        handlers[plan.endpoints[1]].prefetch("emb.block1", np.array([2000]))
    with pytest.raises(NotFoundError, match="'nope'"):
        handlers[plan.endpoints[0]].prefetch("nope", np.array([0]))
