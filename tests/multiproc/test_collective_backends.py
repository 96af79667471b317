"""The tcp backend in real processes on 127.0.0.1, against the local oracle; failure paths;
and the run_workers helper itself."""
from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from fleetkit.collective import (CollectiveError, CollectiveMismatchError, CollectiveTimeoutError,
                                 FileStore, PeerFailedError, TCPStore, TCPStoreServer, get_backend)
from fleetkit.testing import WorkerFailure, run_workers
from fleetkit.testing.collective_oracle import check_against_oracle, check_large_all_reduce

# Multi-MiB buffers are 2-4x faster with these (see DESIGN.md); children only.
FAST_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


@pytest.fixture
def store_port():
    server = TCPStoreServer("127.0.0.1", 0)
    yield server.port
    server.close()


def _tcp(rank: int, world_size: int, port: int, timeout: float = 20.0, **kwargs):
    store = TCPStore("127.0.0.1", port, timeout=timeout)
    return get_backend("tcp", rank=rank, world_size=world_size, store=store, timeout=timeout, **kwargs)


# ---- correctness against the oracle --------------------------------------------------------------


def _battery(rank, world_size, port, chunk_bytes):
    with _tcp(rank, world_size, port, chunk_bytes=chunk_bytes) as backend:
        return check_against_oracle(backend)


@pytest.mark.parametrize("world_size", [2, 3])
def test_tcp_equals_local_oracle(store_port, world_size):
    counts = run_workers(_battery, world_size, (store_port, 1 << 20), timeout=120)
    assert len(set(counts)) == 1 and counts[0] > 100


def test_tcp_tiny_chunks_pipeline_correctly(store_port):
    # 24-byte chunks: hundreds of gated pieces per step exercise the pipelining.
    counts = run_workers(_battery, 3, (store_port, 24), timeout=120)
    assert counts[0] > 100


def _large(rank, world_size, port, dtype_names):
    with _tcp(rank, world_size, port, timeout=60) as backend:
        return sum(check_large_all_reduce(backend, 64 << 20, np.dtype(d)) for d in dtype_names)


@pytest.mark.parametrize("world_size", [2, 3])
def test_tcp_64mib_every_dtype(store_port, world_size):
    # One group per world size runs all three dtypes: spawning and rendezvous once.
    dtypes = ("float32", "float64", "int64")
    assert run_workers(_large, world_size, (store_port, dtypes), timeout=240, env=FAST_MALLOC) == [3] * world_size


# ---- rendezvous variants ---------------------------------------------------------------------------


def _env_rendezvous(rank, world_size, port):
    # Each rank binds port 0 itself and shares the real port (no guessed free ports),
    # then the backend is built from Paddle's launcher variables alone.
    listener = socket.create_server(("127.0.0.1", 0))
    store = TCPStore("127.0.0.1", port, timeout=20)
    store.set(f"ep/{rank}", f"127.0.0.1:{listener.getsockname()[1]}".encode())
    endpoints = [store.get(f"ep/{r}").decode() for r in range(world_size)]
    os.environ.update(PADDLE_TRAINER_ENDPOINTS=",".join(endpoints), PADDLE_TRAINER_ID=str(rank),
                      PADDLE_TRAINERS_NUM=str(world_size))
    with get_backend("tcp", listener=listener, timeout=20) as backend:
        assert (backend.rank, backend.world_size) == (rank, world_size)
        return backend.all_reduce(np.array([rank + 1.0])).tolist()


def test_tcp_rendezvous_from_paddle_env(store_port):
    assert run_workers(_env_rendezvous, 2, (store_port,), timeout=60) == [[3.0], [3.0]]


def _file_rendezvous(rank, world_size, path):
    store = FileStore(path, timeout=20)
    with get_backend("tcp", rank=rank, world_size=world_size, store=store, timeout=20) as backend:
        return [a.tolist() for a in backend.all_gather(np.arange(rank + 1))]


def test_tcp_rendezvous_through_file_store(tmp_path):
    results = run_workers(_file_rendezvous, 3, (str(tmp_path),), timeout=60)
    assert results == [[[0], [0, 1], [0, 1, 2]]] * 3


# ---- failures --------------------------------------------------------------------------------------


def _killed(rank, world_size, port):
    backend = _tcp(rank, world_size, port, timeout=10)
    backend.all_reduce(np.ones(4))
    backend.barrier()
    if rank == 1:
        os._exit(17)  # dies without closing anything, like a crash
    start = time.monotonic()
    with pytest.raises(PeerFailedError) as info:
        backend.all_reduce(np.ones(1000))
    return info.value.rank, info.value.endpoint, str(info.value), time.monotonic() - start, backend.endpoints[1]


def test_killed_rank_is_named_by_every_other_rank(store_port):
    results = run_workers(_killed, 3, (store_port,), timeout=60, expect_exit={1: 17})
    assert results[1] is None
    for failed_rank, endpoint, message, elapsed, real_endpoint in (results[0], results[2]):
        assert failed_rank == 1 and endpoint == real_endpoint
        assert "rank 1" in message and real_endpoint in message
        assert elapsed < 5.0, f"took {elapsed:.1f} s to notice (timeout was 10 s)"


def _killed_mid_transfer(rank, world_size, port):
    backend = _tcp(rank, world_size, port, timeout=10, chunk_bytes=1 << 16)
    backend.barrier()
    big = np.ones(8 << 20, dtype=np.float32)
    if rank == 1:
        backend.all_reduce_async(big)
        time.sleep(0.005)
        os._exit(17)
    start = time.monotonic()
    with pytest.raises(PeerFailedError) as info:
        for _ in range(3):  # in case rank 1 finished the first one before dying
            backend.all_reduce(big)
    return info.value.rank, time.monotonic() - start


def test_rank_killed_during_a_transfer(store_port):
    results = run_workers(_killed_mid_transfer, 2, (store_port,), timeout=60, expect_exit={1: 17})
    failed_rank, elapsed = results[0]
    assert failed_rank == 1 and elapsed < 5.0


def _stalled(rank, world_size, port):
    backend = _tcp(rank, world_size, port, timeout=30)
    backend.barrier()
    if rank == 2:
        time.sleep(4.0)  # alive but not participating
        with pytest.raises(CollectiveError):
            backend.all_reduce(np.ones(3), timeout=5)
        return None
    start = time.monotonic()
    with pytest.raises(CollectiveTimeoutError) as info:
        backend.all_reduce(np.ones(3), timeout=1.0)
    return str(info.value), time.monotonic() - start, backend.endpoints[2]


def test_stalled_rank_times_out_on_every_rank_naming_it(store_port):
    results = run_workers(_stalled, 3, (store_port,), timeout=60)
    for message, elapsed, endpoint in results[:2]:
        assert "rank 2" in message and endpoint in message, message
        assert elapsed < 3.0


def _closed_peer(rank, world_size, port):
    backend = _tcp(rank, world_size, port, timeout=10)
    backend.barrier()
    if rank == 1:
        backend.close()
        return None
    with pytest.raises(PeerFailedError) as info:
        backend.all_reduce(np.ones(5))
    return info.value.rank, str(info.value)


def test_peer_that_closed_its_backend_is_named(store_port):
    failed_rank, message = run_workers(_closed_peer, 2, (store_port,), timeout=60)[0]
    assert failed_rank == 1 and "rank 1" in message


def _mismatch(rank, world_size, port):
    messages = []
    with _tcp(rank, world_size, port) as backend:
        bad_calls = [
            lambda: backend.all_reduce(np.ones(5 if rank == 2 else 4, np.float32)),
            lambda: backend.all_reduce(np.ones(4, np.float64 if rank == 1 else np.float32)),
            lambda: backend.all_reduce(np.ones(4), op="max" if rank == 0 else "sum"),
            lambda: backend.broadcast(np.ones(4), root=rank),
            lambda: (backend.barrier() if rank == 2 else backend.all_reduce(np.ones(4))),
            lambda: backend.all_gather(np.ones((2, 3 + (rank == 1)))),
        ]
        for call in bad_calls:
            with pytest.raises(CollectiveMismatchError) as info:
                call()
            messages.append(str(info.value))
        # Nothing moved, so the group is still usable.
        ok = backend.all_reduce(np.full(3, rank, dtype=np.int64)).tolist()
    return messages, ok


def test_mismatched_calls_raise_on_every_rank(store_port):
    results = run_workers(_mismatch, 3, (store_port,), timeout=60)
    assert all(r == results[0] for r in results), "every rank must report the same mismatch"
    messages, ok = results[0]
    assert ok == [3, 3, 3]
    assert "rank 0 called all_reduce(sum) float32[4], rank 2 called all_reduce(sum) float32[5]" in messages[0]
    assert "dtype" in messages[1] and "float64" in messages[1]
    assert "max" in messages[2] and "sum" in messages[2]
    assert "root" in messages[3]
    assert "barrier" in messages[4]
    assert "[2, 3]" in messages[5] and "[2, 4]" in messages[5]


# ---- the rendezvous store ----------------------------------------------------------------------------


def test_tcp_store_set_get_add_and_wait():
    with TCPStore("127.0.0.1", 0, is_server=True, timeout=5) as host:
        other = TCPStore("127.0.0.1", host.port, timeout=5)
        host.set("a", b"\x00\x01")
        assert other.get("a") == b"\x00\x01"
        assert [other.add("n", 2), host.add("n", -5)] == [2, -3]
        threading.Timer(0.2, lambda: host.set("late", b"x")).start()
        assert other.get("late", timeout=5) == b"x"
        with pytest.raises(CollectiveTimeoutError, match="'never'"):
            other.get("never", timeout=0.2)
        other.close()


# ---- run_workers ----------------------------------------------------------------------------------------


def _echo_env(rank, world_size):
    return rank, world_size, os.environ.get("FK_TEST_VAR"), os.environ.get("OMP_NUM_THREADS")


def test_run_workers_returns_results_with_per_rank_env():
    results = run_workers(_echo_env, 3, env=lambda r: {"FK_TEST_VAR": f"v{r}", "OMP_NUM_THREADS": "1"})
    assert results == [(r, 3, f"v{r}", "1") for r in range(3)]
    assert "FK_TEST_VAR" not in os.environ


def _one_fails(rank, world_size, tmp):
    if rank == 1:
        # Fail only once the others are inside this function, so that their stack dumps
        # show it even when a busy machine makes spawning slow.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(os.listdir(tmp)) < world_size - 1:
            time.sleep(0.05)
        raise ValueError("boom from rank 1")
    open(os.path.join(tmp, f"in_{rank}"), "w").close()
    time.sleep(60)


def test_run_workers_kills_all_on_first_failure_and_reports_every_rank(tmp_path):
    start = time.monotonic()
    with pytest.raises(WorkerFailure) as info:
        run_workers(_one_fails, 3, (str(tmp_path),), timeout=60)
    assert time.monotonic() - start < 40
    assert "boom from rank 1" in info.value.reports[1]
    for rank in (0, 2):  # killed while sleeping: their stacks show where
        assert "_one_fails" in info.value.reports[rank]


def _sleepy(rank, world_size):
    time.sleep(60 if rank == 0 else 0)
    return rank


def test_run_workers_deadline():
    # 10 s: rank 1 must have started and returned by then, even on busy cores
    with pytest.raises(WorkerFailure, match="deadline") as info:
        run_workers(_sleepy, 2, timeout=10)
    assert info.value.results == {1: 1}


def _exits(rank, world_size):
    os._exit(3)


def test_run_workers_unexpected_exit_is_a_failure():
    with pytest.raises(WorkerFailure, match="exited with code 3"):
        run_workers(_exits, 1, timeout=30)
