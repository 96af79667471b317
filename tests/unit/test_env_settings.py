"""The settings env.py reads besides the role contract: defaults, parsing, and the errors
that name the variable and its value."""
import os

import pytest

from fleetkit import env
from fleetkit.errors import ConfigError


def test_defaults_when_nothing_is_set():
    assert env.ps_bulk_enabled({}) is True
    assert env.auth_token({}) == ""
    assert env.ps_notify_dirs({}) == ()
    assert env.trainers_num({}) == 1
    assert env.paddle_port({}) == ""
    assert env.this_host({}) == "127.0.0.1"
    assert env.selected_gpu({}) is None
    assert env.cpu_num({}) == 1
    assert env.omp_threads_set({}) is False
    assert env.log_level({}) == ""
    assert env.launch_option("ips", {}) is None
    assert env.restarts({}) == 0
    assert env.cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "fleetkit")
    assert env.c_compiler({}) == "cc"
    assert env.numpy_parser_only({}) is False
    assert env.kubeconfig({}) == ""
    assert env.aws_region({}) == "us-east-1"


def test_values_are_parsed():
    assert env.ps_bulk_enabled({env.FLEETKIT_PS_BULK: " Off "}) is False
    assert env.ps_bulk_enabled({env.FLEETKIT_PS_BULK: "1"}) is True
    assert env.ps_notify_dirs({env.FLEETKIT_PS_NOTIFY_DIRS: f"/a{os.pathsep}{os.pathsep}/b"}) == ("/a", "/b")
    assert env.trainers_num({env.PADDLE_TRAINERS_NUM: "4"}) == 4
    assert env.paddle_port({env.PADDLE_PORT: " 6170 "}) == "6170"
    assert env.this_host({env.PADDLE_CURRENT_ENDPOINT: "10.0.0.2:6170"}) == "10.0.0.2"
    assert env.this_host({env.POD_IP: "10.0.0.3", env.PADDLE_CURRENT_ENDPOINT: "10.0.0.2:6170"}) == "10.0.0.3"
    assert env.selected_gpu({env.FLAGS_SELECTED_GPUS: "3,1"}) == 3
    assert env.selected_gpu({env.FLAGS_SELECTED_GPUS: "gpu0"}) is None
    assert env.cpu_num({env.CPU_NUM: "4"}) == 4
    assert env.omp_threads_set({env.OMP_NUM_THREADS: "2"}) is True
    assert env.log_level({env.FLEETKIT_LOG_LEVEL: " debug "}) == "DEBUG"
    assert env.launch_option("node_ip", {"FLEETKIT_LAUNCH_NODE_IP": "10.0.0.1"}) == "10.0.0.1"
    assert env.launch_option("node_ip", {"FLEETKIT_LAUNCH_NODE_IP": ""}) is None
    assert env.restarts({env.FLEETKIT_RESTARTS: "2"}) == 2
    assert env.cache_dir({env.FLEETKIT_CACHE_DIR: "/tmp/fk"}) == "/tmp/fk"
    assert env.c_compiler({env.CC: "clang"}) == "clang"
    assert env.numpy_parser_only({env.FLEETKIT_PARSER: "NumPy"}) is True


def test_the_live_environment_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv(env.FLEETKIT_AUTH_TOKEN, "s3cret")
    assert env.auth_token() == "s3cret"
    monkeypatch.setenv(env.FLEETKIT_AUTH_TOKEN, "other")
    assert env.auth_token() == "other"


@pytest.mark.parametrize("read, name, raw", [
    (env.trainers_num, env.PADDLE_TRAINERS_NUM, "0"),
    (env.cpu_num, env.CPU_NUM, "many"),
    (env.restarts, env.FLEETKIT_RESTARTS, "once"),
])
def test_bad_values_name_the_variable_and_value(read, name, raw):
    with pytest.raises(ConfigError, match=f"{name}={raw!r}"):
        read({name: raw})


def test_collective_role_checks_the_trainer_count():
    eps = "127.0.0.1:1,127.0.0.1:2"
    assert env.load_role({env.PADDLE_TRAINER_ENDPOINTS: eps, env.PADDLE_TRAINERS_NUM: "2"},
                         is_collective=True).trainers_num == 2
    with pytest.raises(ConfigError, match="PADDLE_TRAINERS_NUM='3' but PADDLE_TRAINER_ENDPOINTS has 2"):
        env.load_role({env.PADDLE_TRAINER_ENDPOINTS: eps, env.PADDLE_TRAINERS_NUM: "3"}, is_collective=True)


def test_shuffle_timeout_default_value_and_bad_values():
    assert env.shuffle_timeout_s({}) == 300.0
    assert env.shuffle_timeout_s({"FLEETKIT_SHUFFLE_TIMEOUT": ""}) == 300.0
    assert env.shuffle_timeout_s({"FLEETKIT_SHUFFLE_TIMEOUT": "42.5"}) == 42.5
    for bad in ("0", "-3", "soon"):
        with pytest.raises(ConfigError, match=rf"FLEETKIT_SHUFFLE_TIMEOUT='{bad}' is not a positive number"):
            env.shuffle_timeout_s({"FLEETKIT_SHUFFLE_TIMEOUT": bad})
