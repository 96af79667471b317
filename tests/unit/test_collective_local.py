"""Collective API without sockets: the local reference backend, headers, ring schedules,
registry, stores on files, configuration."""
from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

from fleetkit import errors
from fleetkit.collective import (Backend, CollectiveMismatchError, CollectiveTimeoutError, FileStore,
                                 LocalGroup, PeerFailedError, available_backends, get_backend,
                                 register_backend)
from fleetkit.collective import _ring, api, constants
from fleetkit.collective.backends.tcp import endpoints_from_role
from fleetkit.collective.header import HEADER_BYTES, Header, check_headers, make_header
from fleetkit.testing.collective_oracle import check_against_oracle

OPS = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}


def _inputs(n, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(-5, 6, size=shape).astype(dtype) for _ in range(n)]


# ---- local backend semantics, against plain numpy ----------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("size", [0, 1, 1001])
def test_local_all_reduce_and_reduce_scatter_match_numpy(n, op, size):
    xs = _inputs(n, (size,), np.int64)
    want = functools.reduce(OPS[op], xs)
    group = LocalGroup(n, timeout=10)
    got = group.run(lambda b: b.all_reduce(xs[b.rank].copy(), op=op))
    scattered = group.run(lambda b: b.reduce_scatter(xs[b.rank], op=op))
    for r in range(n):
        np.testing.assert_array_equal(got[r], want)
        np.testing.assert_array_equal(scattered[r], np.array_split(want, n)[r])


def test_local_gather_broadcast_barrier_and_in_place():
    group = LocalGroup(3, timeout=10)
    xs = [np.arange(r + 1, dtype=np.float32) for r in range(3)]
    gathered = group.run(lambda b: b.all_gather(xs[b.rank]))
    assert all([g.tolist() for g in result] == [[0.0], [0.0, 1.0], [0.0, 1.0, 2.0]] for result in gathered)
    arrays = [np.full(4, r) for r in range(3)]
    out = group.run(lambda b: b.broadcast(arrays[b.rank], root=2))
    assert all(o is a and o.tolist() == [2] * 4 for o, a in zip(out, arrays))
    assert group.run(lambda b: b.barrier()) == [None] * 3


def test_local_passes_the_shared_oracle_battery():
    group = LocalGroup(3, timeout=30)
    assert min(group.run(check_against_oracle)) > 100


def test_reduce_scatter_splits_rows_like_array_split():
    x = np.arange(14.0).reshape(7, 2)
    group = LocalGroup(3, timeout=10)
    parts = group.run(lambda b: b.reduce_scatter(x))
    for got, want in zip(parts, np.array_split(3 * x, 3)):
        np.testing.assert_array_equal(got, want)


def test_mismatch_raises_on_every_rank_and_group_stays_usable():
    group = LocalGroup(2, timeout=10)

    def body(b):
        with pytest.raises(CollectiveMismatchError) as info:
            b.all_reduce(np.ones(3 + b.rank))
        return str(info.value), b.all_reduce(np.ones(2)).tolist()

    results = group.run(body)
    assert results[0] == results[1]
    assert "rank 0 called all_reduce(sum) float64[3], rank 1 called all_reduce(sum) float64[4]" in results[0][0]
    assert results[0][1] == [2.0, 2.0]


def test_missing_rank_times_out_naming_it():
    group = LocalGroup(3)
    other = group[1].all_reduce_async(np.ones(1), timeout=5)
    with pytest.raises(CollectiveTimeoutError, match=r"ranks \[2\] did not enter all_reduce #1"):
        group[0].all_reduce(np.ones(1), timeout=0.3)
    with pytest.raises(CollectiveTimeoutError):  # the broken barrier releases rank 1 too
        other.wait(5)


def test_closed_rank_is_reported_to_the_others():
    group = LocalGroup(2, timeout=10)
    work = group[0].all_reduce_async(np.ones(2))
    group[1].close()
    with pytest.raises(PeerFailedError, match="rank 1 closed") as info:
        work.wait(5)
    assert info.value.rank == 1


def test_async_wait_timeout_leaves_the_op_running():
    group = LocalGroup(2, timeout=10)
    work = group[0].all_reduce_async(np.ones(2))
    with pytest.raises(CollectiveTimeoutError, match="still running"):
        work.wait(0.05)
    group[1].all_reduce(np.ones(2))
    assert work.wait(5).tolist() == [2.0, 2.0]


@pytest.mark.parametrize("call,error", [
    (lambda b: b.all_reduce(np.ones(2), op="mean"), errors.InvalidArgumentError),
    (lambda b: b.all_reduce(np.array(["a"], dtype=object)), errors.DTypeError),
    (lambda b: b.broadcast(np.ones(2), root=5), errors.InvalidArgumentError),
    (lambda b: b.all_reduce(np.ones(2), timeout=0), errors.InvalidArgumentError),
    (lambda b: b.all_gather(np.ones((1,) * 17)), errors.InvalidArgumentError),
])
def test_bad_arguments_are_rejected_at_call_time(call, error):
    backend = get_backend("local")
    with pytest.raises(error):
        call(backend)
    assert backend.all_reduce(np.ones(1)).tolist() == [1.0]  # still usable
    backend.close()
    with pytest.raises(errors.CollectiveError, match="closed"):
        backend.barrier()


# ---- registry and errors ---------------------------------------------------------------------------


def test_registry_rejects_duplicates_and_unknown_names():
    assert {"local", "tcp", "mpi", "nccl"} <= set(available_backends())
    with pytest.raises(errors.InvalidArgumentError, match="already registered"):
        register_backend("tcp", lambda **kw: None)
    register_backend("unit-test-local", lambda **kw: get_backend("local", **kw))
    with pytest.raises(errors.InvalidArgumentError):
        register_backend("unit-test-local", lambda **kw: None)
    assert isinstance(get_backend("unit-test-local"), Backend)
    with pytest.raises(errors.NotFoundError, match="unknown collective backend 'nope'"):
        get_backend("nope")
    api._REGISTRY.pop("unit-test-local")


def test_error_families():
    assert issubclass(errors.PeerFailedError, errors.RetryableError)
    assert issubclass(errors.PeerFailedError, ConnectionError)
    assert issubclass(errors.CollectiveTimeoutError, errors.RetryableError)
    assert issubclass(errors.CollectiveTimeoutError, TimeoutError)
    assert issubclass(errors.CollectiveMismatchError, errors.PermanentError)
    assert issubclass(errors.CollectiveMismatchError, ValueError)
    err = errors.PeerFailedError("rank 3 died", rank=3, endpoint="h:1")
    assert (err.rank, err.endpoint, str(err)) == (3, "h:1", "rank 3 died")


# ---- headers ---------------------------------------------------------------------------------------


def test_header_roundtrip_and_corruption():
    h = make_header(7, "all_gather", np.ones((3, 4), np.int64))
    raw = h.pack()
    assert len(raw) == HEADER_BYTES and Header.unpack(raw) == h
    assert Header(1, "broadcast", root=2, dtype="<f4", shape=(5,)).describe() == "broadcast(root=2) float32[5]"
    with pytest.raises(CollectiveMismatchError, match="bad collective header"):
        Header.unpack(b"\x00" * HEADER_BYTES)


def test_check_headers_names_both_sides():
    a = make_header(4, "all_reduce", np.ones(3, np.float32), op="sum")
    check_headers([a, a, a])
    gathered = [make_header(1, "all_gather", np.ones((r, 2))) for r in range(3)]
    check_headers(gathered)  # first dims may differ for all_gather
    with pytest.raises(CollectiveMismatchError, match=r"rank 0 called .*float32\[3\], rank 2 called .*float32\[4\]"):
        check_headers([a, a, make_header(4, "all_reduce", np.ones(4, np.float32), op="sum")])
    with pytest.raises(CollectiveMismatchError, match="skipped or repeated"):
        check_headers([a, make_header(5, "all_reduce", np.ones(3, np.float32), op="sum")])


# ---- ring schedules, simulated -------------------------------------------------------------------


def _simulate(n, plans, srcs, dsts, reduce):
    """Run every rank's (sends, recvs) over FIFO links r -> r+1; fail on deadlock."""
    links = [[] for _ in range(n)]  # links[r]: pieces in flight from r to r+1
    sent, recvd = [0] * n, [0] * n
    while any(sent[r] < len(plans[r][0]) or recvd[r] < len(plans[r][1]) for r in range(n)):
        progressed = False
        for r in range(n):
            sends, recvs = plans[r]
            if sent[r] < len(sends) and sends[sent[r]].gate <= recvd[r]:
                item = sends[sent[r]]
                buf = dsts[r] if item.gate else srcs[r]
                links[r].append(buf[item.start:item.end].copy())
                sent[r] += 1
                progressed = True
            left = (r - 1) % n
            if recvd[r] < len(recvs) and links[left]:
                item, data = recvs[recvd[r]], links[left].pop(0)
                assert len(data) == item.end - item.start
                if item.reduce:
                    dsts[r][item.start:item.end] = reduce(srcs[r][item.start:item.end], data)
                else:
                    dsts[r][item.start:item.end] = data
                recvd[r] += 1
                progressed = True
        assert progressed, "ring schedule deadlocked"
    assert not any(links), "pieces left unreceived"


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("size", [0, 1, 7, 100])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_ring_all_reduce_and_reduce_scatter_schedules(n, size, chunk):
    xs = [np.arange(size) * (r + 1) + r for r in range(n)]
    starts = np.cumsum([0] + [len(p) for p in np.array_split(np.arange(size), n)])
    bounds = [(int(starts[i]), int(starts[i + 1])) for i in range(n)]
    total = sum(xs)
    srcs = [x.copy() for x in xs]
    dsts = [x.copy() for x in xs]
    plans = [_ring.schedule(_ring.all_reduce_steps(r, n), bounds, chunk) for r in range(n)]
    _simulate(n, plans, srcs, dsts, np.add)
    for r in range(n):
        np.testing.assert_array_equal(dsts[r], total)
    if n == 1:
        return  # nothing to scatter: the backends copy the input
    dsts = [np.zeros_like(x) for x in xs]
    plans = [_ring.schedule(_ring.reduce_scatter_steps(r, n), bounds, chunk) for r in range(n)]
    _simulate(n, plans, [x.copy() for x in xs], dsts, np.add)
    for r in range(n):
        a, b = bounds[r]
        np.testing.assert_array_equal(dsts[r][a:b], total[a:b])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_ring_all_gather_unequal_and_broadcast_schedules(n):
    sizes = [r * 3 for r in range(n)]
    offsets = np.cumsum([0] + sizes)
    bounds = [(int(offsets[r]), int(offsets[r + 1])) for r in range(n)]
    full = np.arange(offsets[-1])
    bufs = [np.where((full >= bounds[r][0]) & (full < bounds[r][1]), full, -1) for r in range(n)]
    plans = [_ring.schedule(_ring.all_gather_steps(r, n), bounds, 2) for r in range(n)]
    _simulate(n, plans, bufs, bufs, None)
    assert all((b == full).all() for b in bufs)
    for root in range(n):
        bufs = [full.copy() if r == root else np.zeros_like(full) for r in range(n)]
        plans = [_ring.broadcast_schedule(r, root, n, full.size, 4) for r in range(n)]
        _simulate(n, plans, bufs, bufs, None)
        assert all((b == full).all() for b in bufs)


# ---- configuration and the file store ---------------------------------------------------------------


def test_default_timeout_from_environment(monkeypatch):
    monkeypatch.delenv(constants.TIMEOUT_ENV, raising=False)
    assert constants.default_timeout() == constants.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(constants.TIMEOUT_ENV, "2.5")
    assert constants.default_timeout() == 2.5
    assert get_backend("local").timeout == 2.5
    monkeypatch.setenv(constants.TIMEOUT_ENV, "soon")
    with pytest.raises(errors.ConfigError, match="FLEETKIT_COLLECTIVE_TIMEOUT='soon'"):
        constants.default_timeout()


def test_tcp_rendezvous_from_the_role_reports_every_problem(monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINER_ENDPOINTS", "127.0.0.1:6170,127.0.0.1:6171")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    assert endpoints_from_role() == (["127.0.0.1:6170", "127.0.0.1:6171"], 1)
    monkeypatch.setenv("PADDLE_TRAINER_ENDPOINTS", "hostonly,127.0.0.1:1")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "x")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "3")
    with pytest.raises(errors.ConfigError) as info:
        endpoints_from_role()
    for name in ("hostonly", "PADDLE_TRAINER_ID='x'", "PADDLE_TRAINERS_NUM='3'"):
        assert name in str(info.value)


def test_file_store(tmp_path):
    store = FileStore(tmp_path / "store", timeout=1)
    store.set("a/b c", b"\x00value")
    assert store.get("a/b c") == b"\x00value"
    assert [store.add("n"), store.add("n", 5), FileStore(tmp_path / "store").add("n", -1)] == [1, 6, 5]
    threading.Timer(0.1, lambda: store.set("late", b"x")).start()
    assert store.get("late", timeout=5) == b"x"
    with pytest.raises(CollectiveTimeoutError, match="'never'"):
        store.get("never", timeout=0.05)
