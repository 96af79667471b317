"""Long collective waits say what they wait for (fleetkit.waits): the rendezvous with a rank
that has not joined yet, and an all_reduce that a peer has not entered (e.g. it is still
loading its data before a global shuffle).  Two tcp ranks as threads of this process."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from fleetkit import waits
from fleetkit.collective import TCPStore, TCPStoreServer, get_backend


@pytest.fixture
def quick_notes(monkeypatch):
    monkeypatch.setattr(waits, "NOTE_AFTER_S", 0.2)
    monkeypatch.setattr(waits, "NOTE_EVERY_S", 0.3)


def _rank(rank: int, port: int, late_s: float, results: dict) -> None:
    try:
        time.sleep(late_s)
        with TCPStore("127.0.0.1", port, timeout=20) as store, \
                get_backend("tcp", rank=rank, world_size=2, store=store, timeout=20) as backend:
            time.sleep(late_s)             # the late rank also enters the all_reduce late
            results[rank] = float(np.asarray(backend.all_reduce(np.ones(3, np.float32)))[0])
    except BaseException as e:  # noqa: BLE001 - reported by the test
        results[rank] = e


def test_a_rank_waiting_for_a_late_peer_says_for_whom(quick_notes, caplog):
    server = TCPStoreServer("127.0.0.1", 0)
    results: dict = {}
    try:
        with caplog.at_level(logging.WARNING):
            threads = [threading.Thread(target=_rank, args=(r, server.port, 1.2 * r, results)) for r in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
    finally:
        server.close()
    assert results == {0: 2.0, 1: 2.0}
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(n.startswith("rank 0: waiting for rank 1 to join") and "s left (waited" in n for n in notes), notes
    assert any(n.startswith("rank 0: waiting for all_reduce #") and "to be entered by rank 1 (127.0.0.1:" in n
               for n in notes), notes
    assert not any(n.startswith("rank 1:") for n in notes), notes   # the late rank waited for nobody


def test_a_prompt_collective_says_nothing(quick_notes, caplog):
    server = TCPStoreServer("127.0.0.1", 0)
    results: dict = {}
    try:
        with caplog.at_level(logging.WARNING):
            threads = [threading.Thread(target=_rank, args=(r, server.port, 0.0, results)) for r in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
    finally:
        server.close()
    assert results == {0: 2.0, 1: 2.0}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
