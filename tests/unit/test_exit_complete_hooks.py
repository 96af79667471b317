"""pserver/exit_complete.py without processes: the excepthooks chain to the hooks that were
there and note a crash (not a thread's SystemExit); the exit handler sends COMPLETE one
endpoint at a time with bounded calls, skipping a pserver that lost its parameters, and
sends nothing after a crash or in a forked child."""
from __future__ import annotations

import os
import sys
import threading
from types import SimpleNamespace

import pytest

from fleetkit.pserver import client as client_mod
from fleetkit.pserver import exit_complete
from fleetkit.pserver.client import ClientOptions


@pytest.fixture
def hooks(monkeypatch):
    """install() on a clean slate; the process's real hooks and atexit are restored after."""
    seen: list[str] = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append("sys"))
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append("thread"))
    monkeypatch.setattr(exit_complete.atexit, "register", lambda fn: seen.append("atexit"))
    monkeypatch.setattr(exit_complete, "_installed_pid", None)
    monkeypatch.setattr(exit_complete, "_crash", None)
    exit_complete.install()
    exit_complete.install()   # idempotent: one atexit handler, hooks wrapped once
    return seen


class FakeClient:
    def __init__(self, contacted: list[str], lost: tuple[str, ...] = ()) -> None:
        self.options, self.contacted, self.completed = ClientOptions(), list(dict.fromkeys(contacted)), False
        self.restarts = SimpleNamespace(lost_endpoints=lambda: list(lost))
        self.sent: list[tuple[list[str], float, float]] = []

    def send_complete(self, endpoints: list[str]) -> None:
        self.sent.append((endpoints, self.options.deadline_s, self.options.retry_window_s))
        self.completed = True


def test_hooks_chain_and_note_a_crash(hooks):
    assert hooks == ["atexit"]
    t = threading.Thread(target=lambda: (_ for _ in ()).throw(SystemExit(3)))
    t.start()
    t.join()
    assert hooks == ["atexit", "thread"] and exit_complete._crash is None   # SystemExit: no crash
    sys.excepthook(KeyError, KeyError("x"), None)
    assert hooks[-1] == "sys" and exit_complete._crash == "uncaught KeyError in the main thread"


def test_exit_sends_complete_per_endpoint_bounded_and_skips_lost_state(hooks, monkeypatch):
    a, b = FakeClient(["ps0", "ps1", "ps0"], lost=("ps1",)), FakeClient(["ps2"])
    done = FakeClient(["ps3"])
    done.completed = True
    monkeypatch.setattr(client_mod, "live_clients", lambda: [a, b, done, FakeClient([])])
    exit_complete.complete_at_exit()
    bounds = (exit_complete.EXIT_DEADLINE_S, exit_complete.EXIT_RETRY_WINDOW_S)
    assert a.sent == [(["ps0"], *bounds)] and b.sent == [(["ps2"], *bounds)] and done.sent == []


def test_nothing_is_sent_after_a_crash_or_in_a_forked_child(hooks, monkeypatch):
    c = FakeClient(["ps0"])
    monkeypatch.setattr(client_mod, "live_clients", lambda: [c])
    monkeypatch.setattr(exit_complete, "_installed_pid", os.getpid() + 1)   # as in a forked child
    exit_complete.complete_at_exit()
    monkeypatch.setattr(exit_complete, "_installed_pid", os.getpid())
    threading.excepthook(SimpleNamespace(exc_type=ValueError, thread=None))
    exit_complete.complete_at_exit()
    assert c.sent == [] and exit_complete._crash == "uncaught ValueError in thread '?'"
