"""fluid.io on transpiled programs without servers: a pserver program's load_persistables takes its
rows of saved full parameters and points listen_and_serv at the pserver's own state file."""
import numpy as np
import pytest

import fleetkit as fluid
from fleetkit.errors import NotFoundError


def _transpiled():
    main, start = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, start):
        x = fluid.layers.data("x", [64])
        y = fluid.layers.data("y", [1], dtype="int64")
        pred = fluid.layers.fc(fluid.layers.fc(x, 256, act="relu"), 4, act="softmax")
        loss = fluid.layers.mean(fluid.layers.cross_entropy(pred, y))
        fluid.optimizer.Adam(0.01).minimize(loss)
    t = fluid.DistributeTranspiler()
    eps = "127.0.0.1:1,127.0.0.1:2"
    t.transpile(0, program=main, pservers=eps, trainers=2, startup_program=start)
    return main, start, t, eps.split(",")


def test_pserver_load_persistables_takes_its_rows(tmp_path):
    main, _, t, eps = _transpiled()
    rng = np.random.default_rng(0)
    full = {p.name: rng.standard_normal(p.shape).astype("float32") for p in main.all_parameters()}
    local = fluid.Scope()
    for n, v in full.items():
        local.set(n, v)
    fluid.io.save_vars(fluid.Executor(), str(tmp_path), main, vars=list(full), scope=local)
    hosted = {}
    for ep in eps:
        prog, startup = t.get_pserver_programs(ep)
        scope = fluid.Scope()
        exe = fluid.Executor()
        exe.run(startup, scope=scope)
        fluid.io.load_persistables(exe, str(tmp_path), prog, scope=scope)
        for new, (orig, off, rows, _) in prog.meta.origin_of.items():
            if orig in full:
                want = full[orig] if rows < 0 else full[orig][off:off + rows]
                np.testing.assert_array_equal(scope.numpy(new), want)
                hosted.setdefault(orig, 0)
                hosted[orig] += want.shape[0]
        ls = [op for op in prog.global_block().ops if op.type == "listen_and_serv"][0]
        assert ls.attr("load_dir") == str(tmp_path)
    w = "fc_0.w_0"
    assert hosted[w] == 64, "the big weight is sliced over both pservers and every row lands once"
    with pytest.raises(NotFoundError, match="holds none of the variables"):
        fluid.io.load_persistables(fluid.Executor(), str(tmp_path / "nothing"), t.get_pserver_program(eps[0]),
                                   scope=fluid.Scope())
