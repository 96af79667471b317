"""The trainer side of the bulk channel (``client_bulk.py``) against pservers in real
processes: the AF_UNIX socket of a pserver on this host, and grouped calls (a trainer's
values to or from one pserver on one bulk connection, ``BulkPool.call_many``).

Covers: a local trainer reaches the pserver through its AF_UNIX socket, in a 0700
directory removed when the pserver stops (and, after a kill -9, by the next pserver of
the same user); without it (off, or the socket gone) the trainer uses TCP; a group's
pushes and pulls are whole, in order, and one connection each; large values pushed in
a group (megabytes, both directions in flight) do not wedge either side; a value the
pserver refuses in a group gets the single call's error and the group's other values
still land; a connection lost after the pserver applied the group's pushes is redone by
single calls with the same send numbers, so each push is applied once.  (Sync rounds
with grouped pushes and pulls: test_pserver_rpc's
``test_sync_two_trainers_average_once_per_round``, whose trainers push and pull w and b
in one call each, on the bulk transport.)
"""
from __future__ import annotations

import os
import stat
from typing import Any

import numpy as np
import pytest
from test_pserver_rpc import LR, _client

from fleetkit.core.scope import SelectedRows
from fleetkit.errors import RPCRequestError
from fleetkit.pserver import bulk

pytestmark = pytest.mark.timeout(120)


def _count_groups(c: Any) -> list[int]:
    """Wrap the client's ``call_many``: the number of calls of each connection's turn
    (a single call is a group of one)."""
    sizes: list[int] = []
    real = c._bulk.call_many

    def counted(host: str, port: int, calls: Any, *a: Any) -> Any:
        sizes.append(len(calls))
        return real(host, port, calls, *a)
    c._bulk.call_many = counted
    return sizes


def test_a_group_pushes_and_pulls_every_value_on_one_connection(servers):
    a, b = servers(), servers()
    c = _client(0)
    sizes = _count_groups(c)
    rng = np.random.RandomState(0)
    values = {f"echo/{i}": rng.rand(50 + i, 3).astype(np.float32) for i in range(5)}
    values["echo/rows"] = SelectedRows(np.array([4, 1, 9]), rng.rand(3, 2).astype(np.float32), 10)
    # five values for pserver a (one group), one for b (a single call)
    items = [(a.endpoint, k, v) for k, v in values.items() if k != "echo/0"] + [(b.endpoint, "echo/0", values["echo/0"])]
    c.send_vars(items)
    assert sorted(sizes) == [1, 5] and c.transport["bulk", "SendVariable"] == 6
    got = c.get_vars([(ep, k) for ep, k, _ in items], barrier=False)
    assert sorted(sizes[2:]) == [1, 5]
    for (_, k, v), g in zip(items, got):
        if isinstance(v, SelectedRows):
            assert g.rows.tolist() == v.rows.tolist() and np.array_equal(g.values, v.values)
        else:
            assert np.array_equal(g, v) and g.flags.writeable, k
    c.close()


def test_large_values_in_one_group_do_not_wedge_either_side(servers):
    """Several megabytes each way: the pushes fill the socket buffers while the pserver
    answers; the pulls' replies fill them while the client still reads."""
    s = servers()
    c = _client(0)
    sizes = _count_groups(c)
    big = {f"echo/big{i}": np.full((1 << 20) // 4 * (i + 1), float(i), np.float32) for i in range(4)}  # 10 MiB
    c.send_vars([(s.endpoint, k, v) for k, v in big.items()])
    got = c.get_vars([(s.endpoint, k) for k in big], barrier=False)
    assert sizes == [4, 4]
    for (k, v), g in zip(big.items(), got):
        assert np.array_equal(g, v), k
    c.close()


def test_a_refused_value_in_a_group_gets_its_error_and_the_others_land(servers):
    s = servers()
    c = _client(0)
    g = np.ones((4, 3), np.float32)
    with pytest.raises(RPCRequestError, match="SendVariable for 'nope@GRAD'.*NOT_FOUND") as e:
        c.send_vars([(s.endpoint, "w@GRAD", g), (s.endpoint, "nope@GRAD", g), (s.endpoint, "b@GRAD", np.ones(3))])
    assert e.value.endpoint == s.endpoint
    w, b, n = c.get_vars([(s.endpoint, "w"), (s.endpoint, "b"), (s.endpoint, "applies")], barrier=False)
    np.testing.assert_allclose(w, -LR)
    np.testing.assert_allclose(b, -LR)
    assert n[0] == 2
    with pytest.raises(RPCRequestError, match="'missing'.*NOT_FOUND"):
        c.get_vars([(s.endpoint, "w"), (s.endpoint, "missing")], barrier=False)
    c.close()


def test_a_group_lost_after_it_was_applied_is_redone_once(servers):
    """The connection fails after the pserver applied the group (the replies are lost):
    the single calls that redo the pushes carry the same send numbers, so the pserver
    drops them as repeats."""
    s = servers()
    c = _client(0)
    real = c._bulk.call_many
    lost = []

    def applied_then_lost(host: str, port: int, calls: Any, *a: Any) -> Any:
        got = real(host, port, calls, *a)
        if len(calls) > 1:   # the group; the single calls that redo it go through
            lost.append(len(calls))
            raise bulk.BulkStatus("UNAVAILABLE", "connection reset after the frames were served")
        return got
    c._bulk.call_many = applied_then_lost
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32)), (s.endpoint, "b@GRAD", np.ones(3))])
    assert lost == [2]
    w, b, n = c.get_vars([(s.endpoint, "w"), (s.endpoint, "b"), (s.endpoint, "applies")], barrier=False)
    assert n[0] == 2      # each push applied once, not twice
    np.testing.assert_allclose(w, -LR)
    np.testing.assert_allclose(b, -LR)
    c.close()


def test_a_local_trainer_uses_the_pservers_unix_socket(servers):
    s = servers()
    c = _client(0)
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    (w,) = c.get_vars([(s.endpoint, "w")], barrier=False)
    np.testing.assert_allclose(w, -LR)
    path = c._bulk_paths[s.endpoint]
    assert path and stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700   # this user's only
    assert (path, 0) in c._bulk._idle and c.transport["bulk", "SendVariable"] == 1
    c.send_complete()
    s.proc.join(20)   # the pserver exits after COMPLETE and removes its socket's directory
    assert s.proc.exitcode == 0 and not os.path.exists(os.path.dirname(path))
    c.close()


def test_without_the_unix_socket_a_local_trainer_uses_tcp(servers):
    off = servers(bulk_unix=False)
    c = _client(0)
    c.send_vars([(off.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    assert c._bulk_paths[off.endpoint] == "" and c.transport["bulk", "SendVariable"] == 1
    on = servers()
    c.get_vars([(on.endpoint, "w")], barrier=False)
    path = c._bulk_paths[on.endpoint]
    os.unlink(path)               # the socket goes away (its connection stays open)...
    c._bulk.forget(path, 0)       # ...and is closed: the next call connects anew
    c.send_vars([(on.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    (w,) = c.get_vars([(on.endpoint, "w")], barrier=False)
    np.testing.assert_allclose(w, -LR)   # applied once, over TCP
    assert c._bulk_paths[on.endpoint] == "" and c.transport["bulk", "SendVariable"] == 2
    c.close()


def test_a_killed_pservers_socket_directory_is_removed_by_the_next_pserver(servers):
    import glob
    import tempfile
    s = servers()
    c = _client(0)
    c.get_vars([(s.endpoint, "w")], barrier=False)
    path = c._bulk_paths[s.endpoint]
    c.close()
    assert os.path.basename(os.path.dirname(path)).startswith(f"fleetkit-bulk-{s.proc.pid}-")
    s.kill()   # SIGKILL: no stop(), the directory stays behind
    assert os.path.exists(path)
    servers()  # a new pserver of this user sweeps what dead ones left
    assert not os.path.exists(os.path.dirname(path))
    live = glob.glob(os.path.join(tempfile.gettempdir(), "fleetkit-bulk-*"))
    assert live, "the new pserver has its own directory"
