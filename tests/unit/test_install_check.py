"""`fleetkit check` / install_check.run_check: succeeds on a good install, says what broke otherwise."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import cli, install_check
from fleetkit.core.registry import get_op_def


def _fleetkit_command() -> list[str]:
    script = Path(sys.executable).parent / "fleetkit"
    if script.exists():
        return [str(script)]
    found = shutil.which("fleetkit")
    return [found] if found else [sys.executable, "-m", "fleetkit.cli"]


def test_fleetkit_check_command_succeeds():
    r = subprocess.run(_fleetkit_command() + ["check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Running Verify Fleetkit Program ...")
    assert lines[-1].startswith("Your fleetkit is installed successfully!")


def test_run_check_in_process(capsys):
    install_check.run_check()
    assert "Your fleetkit is installed successfully!" in capsys.readouterr().out


def test_broken_kernel_is_reported_and_exit_code_is_1(monkeypatch, capsys):
    opdef = get_op_def("mean")
    good = opdef.forward

    def wrong_mean(ctx):
        good(ctx)
        name = ctx.outs["Out"][0]
        ctx.env[name] = ctx.env[name] + np.float32(1.0)

    monkeypatch.setattr(opdef, "forward", wrong_mean)
    with pytest.raises(install_check.InstallCheckError, match="mean loss"):
        install_check.run_check(fk.CPUPlace())  # the default is CUDAPlace(0) on a GPU machine
    assert "FAILED on CPUPlace" in capsys.readouterr().err
    assert cli.main(["check"]) == 1
    out = capsys.readouterr()
    assert "mean loss" in out.err and "installed successfully" not in out.out


def test_bare_cli_prints_the_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "usage: fleetkit" in out and "launch" in out and "demo" in out


def test_cli_refuses_an_unknown_subcommand():
    with pytest.raises(SystemExit) as e:
        cli.main(["no-such-command"])
    assert e.value.code == 2


@pytest.mark.gpu
def test_run_check_on_gpu(capsys):
    install_check.run_check(fk.CUDAPlace(0))
    assert "on CUDAPlace(0)" in capsys.readouterr().out
