"""Environment contract and role makers."""
import pytest

from fleetkit import env
from fleetkit.errors import ConfigError, InvalidArgumentError
from fleetkit.fleet import PaddleCloudRoleMaker, Role, UserDefinedRoleMaker, split_files
from fleetkit.fleet.base import FleetBase

PS = {"PADDLE_PSERVERS_IP_PORT_LIST": "127.0.0.1:6170,127.0.0.1:6171", "PADDLE_TRAINERS_NUM": "2"}


def test_trainer_and_pserver_roles_from_env():
    t = env.load_role({**PS, "TRAINING_ROLE": "TRAINER", "PADDLE_TRAINER_ID": "1"})
    assert (t.role, t.trainer_id, t.trainers_num) == ("TRAINER", 1, 2)
    s = env.load_role({**PS, "TRAINING_ROLE": "PSERVER", "POD_IP": "127.0.0.1", "PADDLE_PORT": "6171"})
    assert (s.role, s.server_index, s.current_endpoint) == ("PSERVER", 1, "127.0.0.1:6171")


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as e:
        env.load_role({"TRAINING_ROLE": "BOSS", "PADDLE_TRAINERS_NUM": "x",
                       "PADDLE_PSERVERS_IP_PORT_LIST": "nohost"})
    msg = str(e.value)
    assert "TRAINING_ROLE='BOSS'" in msg and "PADDLE_TRAINERS_NUM='x'" in msg and "['nohost']" in msg


def test_pserver_not_in_list_is_named():
    with pytest.raises(ConfigError, match="127.0.0.1:7000 is not in PADDLE_PSERVERS_IP_PORT_LIST"):
        env.load_role({**PS, "TRAINING_ROLE": "PSERVER", "POD_IP": "127.0.0.1", "PADDLE_PORT": "7000"})


def test_collective_env():
    info = env.load_role({"PADDLE_TRAINER_ENDPOINTS": "127.0.0.1:1,127.0.0.1:2", "PADDLE_TRAINER_ID": "1"},
                         is_collective=True)
    assert info.trainers_num == 2 and info.current_endpoint == "127.0.0.1:2"
    with pytest.raises(ConfigError, match="PADDLE_TRAINER_ID=5"):
        env.load_role({"PADDLE_TRAINER_ENDPOINTS": "127.0.0.1:1", "PADDLE_TRAINER_ID": "5"}, is_collective=True)


def test_paddle_cloud_role_maker(monkeypatch):
    for k, v in {**PS, "TRAINING_ROLE": "TRAINER", "PADDLE_TRAINER_ID": "0"}.items():
        monkeypatch.setenv(k, v)
    f = FleetBase()
    f.init(PaddleCloudRoleMaker())
    assert f.is_worker() and f.is_first_worker() and f.worker_num() == 2 and f.server_num() == 2
    assert f.server_endpoints(to_string=True) == PS["PADDLE_PSERVERS_IP_PORT_LIST"]


def test_user_defined_role_maker():
    rm = UserDefinedRoleMaker(current_id=1, role=Role.SERVER, server_endpoints=["a:1", "b:2"],
                              worker_num=3)
    f = FleetBase()
    f.init(rm)
    assert f.is_server() and f.server_index() == 1 and f.worker_num() == 3
    with pytest.raises(InvalidArgumentError):
        f.worker_index()
    with pytest.raises(InvalidArgumentError, match="current_id 5"):
        UserDefinedRoleMaker(current_id=5, role=Role.SERVER, server_endpoints=["a:1"])


def test_split_files_contiguous():
    files = list("abcde")
    assert split_files(files, 0, 2) == ["a", "b", "c"] and split_files(files, 1, 2) == ["d", "e"]
    assert sum((split_files(files, i, 3) for i in range(3)), []) == files
    with pytest.raises(InvalidArgumentError, match="3 workers but only 2 files"):
        split_files(["a", "b"], 0, 3)


def test_mpi_symetric_ports(monkeypatch):
    """MPISymetricRoleMaker's endpoint ports: PADDLE_PORT + rank, else a free port."""
    import socket

    from fleetkit.fleet.role_maker import _mpi_rank_port
    monkeypatch.setenv("PADDLE_PORT", "7000")
    assert [_mpi_rank_port(r) for r in range(4)] == [7000, 7001, 7002, 7003]
    monkeypatch.setenv("PADDLE_PORT", "65535")
    with pytest.raises(ConfigError, match="PADDLE_PORT"):
        _mpi_rank_port(1)
    monkeypatch.delenv("PADDLE_PORT")
    port = _mpi_rank_port(0)
    with socket.socket() as s:  # it was free: it can be bound
        s.bind(("", port))
