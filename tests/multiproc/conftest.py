"""Fixtures shared by the pserver tests."""
from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def servers():
    """Start pservers (``test_pserver_rpc.Server``, each in a spawned process) with the
    arguments given; kill them after the test."""
    from test_pserver_rpc import Server

    started: list[Server] = []

    def make(*args: Any, **kw: Any) -> Server:
        started.append(Server(*args, **kw))
        return started[-1]
    yield make
    for s in started:
        s.kill()
