"""Shared fixtures: fresh default programs, scope and names per test; GPU tests skip without a GPU;
the digits example module; a self-signed TLS certificate."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

import fleetkit as fk
from fleetkit.core import framework, scope, unique_name
from fleetkit.core.backend import gpu_count


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cupy + driver)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_defaults():
    """Each test builds into new default programs, a new global scope and fresh names."""
    main, startup = fk.Program(), fk.Program()
    old_main = framework.switch_main_program(main)
    old_start = framework.switch_startup_program(startup)
    old_names = unique_name.switch()
    with scope.scope_guard(scope.Scope()):
        yield
    framework.switch_main_program(old_main)
    framework.switch_startup_program(old_start)
    unique_name.switch(old_names)


@pytest.fixture(scope="module")
def digits():
    """examples/digits/train.py as a module (its ``train`` runs the example)."""
    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parents[1] / "examples" / "digits" / "train.py"
    spec = importlib.util.spec_from_file_location("digits_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def self_signed_cert(tmp_path) -> tuple[str, str]:
    """(key path, certificate path) of a fresh self-signed certificate for 127.0.0.1."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return key, cert
