"""The parameter-server plan: one sharding module, the PSPlan the transpiler builds once,
and the listen_and_serv attribute codec (ServerPlan.to_attrs / from_attrs)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers, optimizer
from fleetkit.errors import InvalidArgumentError
from fleetkit.fleet import transpiler
from fleetkit.pserver import api, sharding
from fleetkit.pserver.plan import ServerPlan, TableConfig, make_plan


def _program(distributed=True):
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        ids = layers.data("ids", shape=[1], dtype="int64", lod_level=1)
        emb = layers.embedding(ids, size=[50, 8], is_sparse=True, is_distributed=distributed,
                               param_attr=fk.ParamAttr(name="emb"))
        h = layers.fc(layers.sequence_pool(emb, "sum"), 128)
        loss = layers.mean(layers.fc(h, 128))
        optimizer.Adam(0.01).minimize(loss)
    return main, startup


def test_the_transpiler_uses_the_sharding_module_itself():
    # one implementation: the transpiler's names are the sharding module's objects
    for name in ("stable_hash", "slice_variable", "RoundRobin", "HashName", "VarBlock"):
        assert getattr(transpiler, name) is getattr(sharding, name)
    from fleetkit.pserver import ops
    assert ops.split_rows is sharding.split_rows and ops.shard_by_id is sharding.shard_by_id


def test_slice_variable_and_block_row_sections_are_one_rule():
    var = fk.Program().global_block().create_var(name="w", shape=[1000, 100])
    blocks = sharding.slice_variable(var, 3)
    assert [b.rows for b in blocks] == sharding.block_row_sections([1000, 100], 3) == [334, 334, 332]
    assert [b.row_offset for b in blocks] == [0, 334, 668]
    with pytest.raises(InvalidArgumentError, match=r"\[0, 4\]"):
        sharding.block_row_sections([0, 4], 2)


def test_make_plan_places_every_block_once_and_keeps_tables_apart():
    main, _ = _program()
    plan = make_plan(main, ["a:1", "b:2"], trainer_id=0, trainers=2, sync_mode=True)
    assert sorted(plan.tables) == ["emb"] and plan.tables["emb"].update_op.type == "adam"
    hosted = plan.hosted("a:1") + plan.hosted("b:2")
    assert sorted(b.block_name for _, b in hosted) == sorted(b.block_name for p in plan.params for b in p.blocks)
    assert all(len(p.blocks) == len(p.endpoints) for p in plan.params)
    with pytest.raises(AttributeError):
        plan.sync_mode = False  # frozen: built once
    # dc_asgd only where the plan is async
    assert not make_plan(main, ["a:1"], 0, 1, True, dc_asgd=True).dc_asgd
    assert make_plan(main, ["a:1"], 0, 1, False, dc_asgd=True).dc_asgd


def test_server_plan_round_trips_through_the_op_attributes():
    main, startup = _program()
    t = fk.DistributeTranspiler()
    t.transpile(0, program=main, pservers="127.0.0.1:7001,127.0.0.1:7002", trainers=2, startup_program=startup)
    for ep in t.pserver_endpoints:
        attrs = t.get_pserver_program(ep).global_block().ops[-1].attrs
        plan = ServerPlan.from_attrs(attrs)
        assert plan.endpoint == ep and plan.fanin == 2 and plan.pserver_num == 2
        assert [t.name for t in plan.sparse_tables] == ["emb"]
        assert {k: attrs[k] for k in plan.to_attrs()} == plan.to_attrs()
        assert ServerPlan.from_attrs(plan.to_attrs()) == plan


def test_server_plan_reads_the_saved_attribute_format():
    """Attributes as programs saved before the plan existed hold them (strings, JSON)."""
    table = {"name": "emb", "grad": "emb@GRAD", "height": 50, "dim": 8, "dtype": "float32", "shard_index": 1,
             "shard_num": 2, "optimizer": "sgd", "optimizer_attrs": {}, "lr_var": "learning_rate_0",
             "init": {"type": "uniform_random", "min": -0.1, "max": 0.1, "seed": 0}}
    saved = {"endpoint": "h:2", "Fanin": 3, "sync_mode": False, "grad_to_block_id": ["fc_0.w_0@GRAD.block1:2"],
             "param_blocks": ["fc_0.w_0.block1"], "sparse_tables": [json.dumps(table, sort_keys=True)],
             "lr_block_id": 1, "checkpoint_dir": "/elsewhere"}
    plan = ServerPlan.from_attrs(saved)
    assert plan.grad_to_block == (("fc_0.w_0@GRAD.block1", 2),) and plan.fanin == 3 and not plan.sync_mode
    assert plan.sparse_tables == (TableConfig(**table),)
    assert plan.to_attrs()["sparse_tables"] == saved["sparse_tables"]  # byte-identical JSON
    with pytest.raises(InvalidArgumentError, match="'no-block'"):
        ServerPlan.from_attrs({"grad_to_block_id": ["no-block"]})
    with pytest.raises(InvalidArgumentError, match="sparse_tables entry"):
        ServerPlan.from_attrs({"sparse_tables": ["{not json"]})


def test_split_ids_drives_the_id_sharding():
    parts = sharding.split_ids(np.array([5, 2, 7, 4]), 2)
    assert [ids.tolist() for _, ids in parts] == [[2, 4], [5, 7]]
    assert [pos.tolist() for pos, _ in parts] == [[1, 3], [0, 2]]


def test_api_names_load_grpc_only_on_first_use():
    code = ("import sys; from fleetkit.pserver import api; api.make_plan; print('grpc' in sys.modules); "
            "api.ServerOptions; print('grpc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr
    with pytest.raises(AttributeError, match="'nothing'"):
        api.nothing  # noqa: B018
