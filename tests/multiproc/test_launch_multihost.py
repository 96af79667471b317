"""Multi-host ``fleetkit launch``: two network namespaces act as two hosts (a veth pair,
one address inside each); each runs the same command with its own ``--node_ip``, and a
PS job and a collective job both complete.  Needs root (CI is root); skipped otherwise."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces (CI runs as root)")
    tag = f"fk{os.getpid() % 100000}"
    net = f"10.213.{os.getpid() % 250}"
    names, ips = [f"{tag}a", f"{tag}b"], [f"{net}.1", f"{net}.2"]
    try:
        for ns in names:
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "link", "add", f"{tag}va", "netns", names[0], "type", "veth", "peer", "name", f"{tag}vb",
            "netns", names[1])
        for ns, ip, dev in zip(names, ips, (f"{tag}va", f"{tag}vb")):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
    except subprocess.CalledProcessError as e:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {e.stderr.decode(errors='replace').strip()}")
    yield list(zip(names, ips))
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _run_on_both(hosts, tmp_path, script: str, args: list[str]) -> list[subprocess.CompletedProcess]:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    ips = ",".join(ip for _, ip in hosts)
    env = {**os.environ, "FLEETKIT_AUTH_TOKEN": "multi-host-test-token"}
    procs = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "fleetkit.cli", "launch", "--ips", ips,
                               "--node_ip", ip, "--timeout", "90", *args, str(path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ns, ip in hosts]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


PS_SCRIPT = """
    import numpy as np
    import fleetkit as fk
    from fleetkit import fleet, layers
    fleet.init(fleet.PaddleCloudRoleMaker())
    x = layers.data("x", shape=[4], dtype="float32")
    y = layers.data("y", shape=[1], dtype="float32")
    loss = layers.mean(layers.square_error_cost(layers.fc(x, 1), y))
    fleet.distributed_optimizer(fk.optimizer.SGD(0.1), fleet.DistributeTranspilerConfig(sync_mode=True)).minimize(loss)
    if fleet.is_server():
        fleet.init_server()
        fleet.run_server()
    else:
        exe = fk.Executor(fk.CPUPlace())
        fleet.init_worker()
        exe.run(fleet.startup_program)
        rng = np.random.default_rng(fleet.worker_index())
        for _ in range(5):
            x_ = rng.random((8, 4), dtype=np.float32)
            exe.run(fleet.main_program, feed={"x": x_, "y": x_.sum(1, keepdims=True)}, fetch_list=[loss])
        print(f"trainer {fleet.worker_index()} of {fleet.worker_num()} done with {len(fleet.server_endpoints())} pservers")
        fleet.stop_worker()
"""

COLLECTIVE_SCRIPT = """
    import numpy as np
    from fleetkit import collective, fleet
    from fleetkit.fleet import role_maker
    fleet.init(role_maker.PaddleCloudRoleMaker(is_collective=True))
    collective.init_parallel_env()
    total = collective.all_reduce(np.array([fleet.worker_index() + 1.0]))
    print(f"rank {fleet.worker_index()} of {fleet.worker_num()} sum {total[0]:g}")
"""


def test_ps_job_across_two_hosts(hosts, tmp_path):
    a, b = _run_on_both(hosts, tmp_path, PS_SCRIPT, ["--server_num", "1", "--worker_num", "1"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-3000:] + b.stderr[-3000:]
    assert "[worker.0] trainer 0 of 2 done with 2 pservers" in a.stdout, a.stdout + a.stderr
    assert "[worker.1] trainer 1 of 2 done with 2 pservers" in b.stdout, b.stdout + b.stderr
    assert f"server.1   PSERVER  {hosts[1][1]}:6170" in b.stderr and "on 2 hosts" in b.stderr


def test_collective_job_across_two_hosts(hosts, tmp_path):
    a, b = _run_on_both(hosts, tmp_path, COLLECTIVE_SCRIPT, ["--worker_num", "2"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-3000:] + b.stderr[-3000:]
    for res, ranks in ((a, (0, 1)), (b, (2, 3))):
        for r in ranks:
            assert f"[worker.{r}] rank {r} of 4 sum 10" in res.stdout, res.stdout + res.stderr


def test_several_hosts_without_a_shared_token_are_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLEETKIT_AUTH_TOKEN"}
    res = subprocess.run([sys.executable, "-m", "fleetkit.cli", "launch", "--ips", "10.9.9.1,10.9.9.2",
                          "--node_ip", "10.9.9.1", "x.py"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0 and "needs one FLEETKIT_AUTH_TOKEN shared by every host" in res.stderr
