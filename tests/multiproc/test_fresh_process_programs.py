"""Op types resolve without import order (issue 14): a saved parameter-server job (trainer
and pserver programs holding send/recv/listen_and_serv) and a saved collective program
(c_* ops) load and run in fresh processes that imported only ``fleetkit``: core's
registry imports the module defining an op family on the first lookup of one of its ops."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import fleetkit as fk
from fleetkit import layers, optimizer
from fleetkit.core.program_desc import serialize_program
from fleetkit.fleet.transpiler import DistributeTranspiler
from fleetkit.testing import free_ports

# Every child checks first that importing fleetkit loaded none of the op families its program
# needs, so the test fails if the ops resolve only because an import happened to load them.
PRELUDE = """
import sys
from pathlib import Path
import numpy as np
import fleetkit as fk
assert "fleetkit.pserver.ops" not in sys.modules and "fleetkit.fleet" not in sys.modules, sorted(sys.modules)
d = Path(sys.argv[1])
load = lambda name: fk.Program.parse_from_string((d / name).read_bytes())
"""

PSERVER = PRELUDE + """
main, startup = load("pserver_main"), load("pserver_startup")
exe = fk.Executor(fk.CPUPlace())
exe.run(startup)
exe.run(main)  # listen_and_serv: serves until the trainer completes
print("pserver done")
"""

TRAINER = PRELUDE + """
main, startup = load("trainer_main"), load("trainer_startup")
exe = fk.Executor(fk.CPUPlace())
exe.run(startup)
x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
y = x.sum(axis=1, keepdims=True)
losses = [float(exe.run(main, feed={"x": x, "y": y}, fetch_list=[(d / "loss").read_text()])[0]) for _ in range(5)]
exe.close()
print("losses", *losses)
"""

COLLECTIVE = PRELUDE + """
from fleetkit.collective import LocalBackend, set_group
main = load("collective_main")
set_group(LocalBackend())  # a group of one: the ops run for real, the sum is the input
out, = fk.Executor(fk.CPUPlace()).run(main, feed={"x": np.arange(6, dtype=np.float32).reshape(2, 3)},
                                       fetch_list=["out"])
print("out", *np.asarray(out).ravel())
"""


def _ps_programs(endpoint: str) -> dict[str, bytes]:
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 3
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[4], dtype="float32")
        y = layers.data("y", shape=[1], dtype="float32")
        pred = layers.fc(x, 1)
        loss = layers.mean(layers.square(pred - y))
        optimizer.SGD(0.1).minimize(loss)
    t = DistributeTranspiler()
    t.transpile(0, program=main, pservers=endpoint, trainers=1, sync_mode=True, startup_program=startup)
    ps_main, ps_startup = t.get_pserver_programs(endpoint)
    return {"loss": loss.name.encode(), "trainer_main": serialize_program(t.get_trainer_program(), with_meta=True),
            "trainer_startup": serialize_program(t.get_trainer_startup_program(), with_meta=True),
            "pserver_main": serialize_program(ps_main, with_meta=True),
            "pserver_startup": serialize_program(ps_startup, with_meta=True)}


def _spawn(script: str, d: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(d)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_saved_ps_job_runs_in_fresh_processes(tmp_path):
    endpoint = f"127.0.0.1:{free_ports(1)[0]}"
    for name, data in _ps_programs(endpoint).items():
        (tmp_path / name).write_bytes(data)
    server = _spawn(PSERVER, tmp_path)
    trainer = _spawn(TRAINER, tmp_path)
    try:
        t_out, _ = trainer.communicate(timeout=90)
        s_out, _ = server.communicate(timeout=30)
    finally:
        for p in (trainer, server):
            p.kill()
            p.wait()
    assert trainer.returncode == 0, t_out
    assert server.returncode == 0 and "pserver done" in s_out, s_out
    losses = [float(v) for v in t_out.split("losses", 1)[1].split()]
    assert len(losses) == 5 and losses[-1] < losses[0], losses  # the pserver applied the updates


def test_saved_collective_program_runs_in_a_fresh_process(tmp_path):
    main = fk.Program()
    with fk.program_guard(main, fk.Program()):
        x = layers.data("x", shape=[3], dtype="float32")
        y = layers.scale(x, 2.0)
        block = main.global_block()
        out = block.create_var(name="out", shape=y.shape, dtype="float32")
        block.append_op("c_allreduce_sum", {"X": [y]}, {"Out": [y]}, {"ring_id": 0})
        block.append_op("c_broadcast", {"X": [y]}, {"Out": [out]}, {"ring_id": 0, "root": 0})
        block.append_op("c_sync_comm_stream", {"X": [out]}, {"Out": [out]}, {"ring_id": 0})
    (tmp_path / "collective_main").write_bytes(serialize_program(main))
    p = _spawn(COLLECTIVE, tmp_path)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    values = [float(v) for v in out.split("out", 1)[1].split()]
    np.testing.assert_allclose(values, 2.0 * np.arange(6))
