"""The all-to-all of global_shuffle (dataset/_mesh.py): ranks are threads with real sockets
on 127.0.0.1; each receives only its share, and nothing a stranger or a bad frame sends is kept."""
from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from fleetkit.collective.backends.local import LocalGroup
from fleetkit.dataset import _mesh
from fleetkit.dataset.instances import InstanceStore
from fleetkit.dataset.multislot import Slot
from fleetkit.dataset.shuffle import ShuffleStats, global_shuffle
from fleetkit.errors import DataFormatError

SLOTS = [Slot("id", "uint64"), Slot("x", "float", True, True, (-1, 2)), Slot("s", "uint64")]


def _store(rank, n):
    rng = np.random.default_rng(rank)
    lens = rng.integers(0, 4, n)
    off = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    return InstanceStore(SLOTS, [rank * 10 ** 6 + np.arange(n), rng.random(2 * n).astype(np.float32),
                                 rng.integers(0, 99, int(off[-1]))],
                         [np.arange(n + 1), np.arange(n + 1) * 2, off])


def _key(store, i):
    s = store.values[2][store.offsets[2][i]:store.offsets[2][i + 1]]
    return int(store.values[0][i]), tuple(store.values[1][2 * i:2 * i + 2].tolist()), tuple(s.tolist())


def test_each_rank_receives_only_its_share_and_nothing_is_lost():
    world, n = 3, 3000
    group = LocalGroup(world, timeout=60)
    stores = [_store(r, n + 500 * r) for r in range(world)]
    stats = [ShuffleStats() for _ in range(world)]
    out = group.run(lambda b: global_shuffle(stores[b.rank], b, seed=3, send_batch_size=700, stats=stats[b.rank]))
    before = sorted(_key(s, i) for s in stores for i in range(len(s)))
    after = sorted(_key(s, i) for s in out for i in range(len(s)))
    assert after == before  # every instance once, with its values
    total = sum(s.nbytes - 8 * len(s.offsets) for s in stores)  # values + one length per instance and slot
    for st, mine in zip(stats, out):
        assert st.instances_received + st.instances_kept == len(mine)
        assert 0 < st.bytes_received <= 1.1 * total / world
    assert sum(st.bytes_sent for st in stats) == sum(st.bytes_received for st in stats)


def _bare_mesh(rank, world):
    m = _mesh.Mesh.__new__(_mesh.Mesh)
    m.rank, m.world, m.deadline, m.socks, m.hosts = rank, world, time.monotonic() + 10, {}, ["127.0.0.1"] * world
    m._lock = threading.Lock()
    return m


def test_a_connection_without_the_token_is_closed_and_ignored():
    token = b"t" * 16
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    m = _bare_mesh(0, 2)

    def peers():
        bad = socket.create_connection(("127.0.0.1", port))
        bad.sendall(_mesh._HELLO.pack(b"x" * 16, 1))  # wrong token, a rank that is expected
        good = socket.create_connection(("127.0.0.1", port))
        good.sendall(_mesh._HELLO.pack(token, 1))
        assert bad.recv(1) == b""  # closed by rank 0
        good.close()
        bad.close()

    t = threading.Thread(target=peers)
    t.start()
    m._accept(listener, token)
    t.join(10)
    listener.close()
    assert list(m.socks) == [1]
    m.close()


@pytest.mark.parametrize("frame", [
    struct.pack("<qq", 5, 1 << 40),          # more bytes than any frame may hold: refused before allocating
    struct.pack("<qq", 2, 8),                # fewer bytes than the lengths need
    struct.pack("<qq", -1, 3),               # announces 3 instances, sent none
])
def test_bad_frame_headers_are_refused(frame):
    a, b = socket.socketpair()
    m = _bare_mesh(0, 2)
    m.socks = {1: b}
    a.sendall(frame)
    with pytest.raises(DataFormatError, match="rank 1"):
        m._recv(1, SLOTS, [], ShuffleStats())
    a.close()
    b.close()


def test_payloads_must_decode_exactly():
    good = _store(0, 4)
    buf = np.concatenate([np.asarray(p).view(np.uint8) for p in _mesh._encode(good)])
    assert _key(_mesh._decode(buf, 4, SLOTS, "peer"), 3) == _key(good, 3)
    with pytest.raises(DataFormatError, match="bytes more"):
        _mesh._decode(np.concatenate([buf, np.zeros(3, np.uint8)]), 4, SLOTS, "peer")
    bad = buf.copy()
    bad[:8] = np.array([-1], np.int64).view(np.uint8)  # a negative length
    with pytest.raises(DataFormatError, match="bad lengths"):
        _mesh._decode(bad, 4, SLOTS, "peer")
    with pytest.raises(DataFormatError, match="bad lengths"):  # a dense slot with the wrong width
        wide = [Slot("id", "uint64"), Slot("x", "float", True, True, (-1, 3)), Slot("s", "uint64")]
        _mesh._decode(buf, 4, wide, "peer")
