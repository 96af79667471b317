"""Pserver CPU per small message, for ``benchmarks/pserver.py``: CPU microseconds the
pserver process spends per 64x1 float32 SendVariable or GetVariableNoBarrier, with 1, 2,
4, 8 trainers calling at once, on each channel (the bulk channel, which small values take
by default, and gRPC, which they take under TLS), next to two floors measured the same
way: a no-op Python gRPC servicer (the least a unary gRPC call costs a Python server) and a
thread-per-connection Python socket echo of the same frame sizes (the least any Python
socket server costs).  CPU time (utime + stime from /proc/PID/stat), not wall time: the
figure does not depend on the machine's other load, as far as caches allow.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import threading
from typing import Any, Callable

import numpy as np

SHAPE = (64, 1)            #: the small dense block pushed and pulled
TRAINERS = (1, 2, 4, 8)
#: bytes of a floor's request and reply: about those of a small push on the bulk channel
REQUEST_BYTES, REPLY_BYTES = 360, 60


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_message(server_pid: int, n_trainers: int, calls: int, target: Callable, args: tuple) -> float:
    """Start ``n_trainers`` processes running ``target(rank, *args, start, done, out)``; the
    server's CPU microseconds per call between the start barrier and the last one's end."""
    ctx = mp.get_context("spawn")
    start, done, out = ctx.Barrier(n_trainers + 1), ctx.Barrier(n_trainers + 1), ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, *args, start, done, out)) for r in range(n_trainers)]
    for p in procs:
        p.start()
    start.wait(120)
    cpu0 = cpu_seconds(server_pid)
    for _ in procs:
        out.get(timeout=600)
    cpu1 = cpu_seconds(server_pid)
    done.wait(60)   # the trainers end (COMPLETE, close) only after the server's CPU is read
    for p in procs:
        p.join(60)
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{target.__name__}: {len(failed)} of {n_trainers} trainer processes failed "
                           f"(exit codes {failed}); the figure would not mean what it says")
    return (cpu1 - cpu0) / (n_trainers * calls) * 1e6


# ----------------------------------------------------------------- the pserver
def _pserver_trainer(rank: int, endpoint: str, msgs: int, bulk: bool, start: Any, done: Any, out: Any) -> None:
    from fleetkit.pserver.client import ClientOptions, RPCClient

    c = RPCClient(rank, ClientOptions(bulk=bulk))
    g = np.ones(SHAPE, np.float32)
    for _ in range(20):   # warm-up: channels, bulk port, heartbeat stream, first-call caches
        c.send_vars([(endpoint, "small@GRAD", g)])
        c.get_vars([(endpoint, "small")], barrier=False)
    start.wait()
    for _ in range(msgs // 2):   # one message each: a 64x1 push, a 64x1 pull
        c.send_vars([(endpoint, "small@GRAD", g)])
        c.get_vars([(endpoint, "small")], barrier=False)
    on = "bulk" if bulk else "grpc"
    wrong = sum(n for (path, _), n in c.transport.items() if path != on)
    out.put(rank)
    done.wait()
    c.send_complete([endpoint])
    c.close()
    if wrong:
        raise SystemExit(f"trainer {rank}: {wrong} calls went over the other channel than {on}")


def pserver_cpu_us(start_servers: Callable, n_trainers: int, msgs: int, bulk: bool) -> float:
    """The pserver's CPU us per small message (``msgs`` per trainer) on one channel."""
    procs, eps = start_servers(1, n_trainers)
    us = _per_message(procs[0].pid, n_trainers, (msgs // 2) * 2, _pserver_trainer, (eps[0], msgs, bulk))
    procs[0].join(60)
    return us


# ------------------------------------------------------------ floor: no-op gRPC
def _noop_grpc_server(port_conn: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(64))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"", request_deserializer=lambda b: b,
                                                  response_serializer=lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Noop", {"Noop": handler}),))
    port_conn.send(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination(3600)


def _noop_grpc_client(rank: int, port: int, calls: int, start: Any, done: Any, out: Any) -> None:
    import grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = ch.unary_unary("/bench.Noop/Noop", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    request = os.urandom(REQUEST_BYTES)
    for _ in range(20):
        stub(request)
    start.wait()
    for _ in range(calls):
        stub(request)
    out.put(rank)
    done.wait()
    ch.close()


# ------------------------------------------------------- floor: raw socket echo
def _echo_server(port_conn: Any, n_conns: int) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port_conn.send(srv.getsockname()[1])

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        view = memoryview(bytearray(REQUEST_BYTES))
        while True:
            got = 0
            while got < REQUEST_BYTES:
                k = conn.recv_into(view[got:])
                if not k:
                    return
                got += k
            conn.sendall(view[:REPLY_BYTES])
    threads = [threading.Thread(target=serve, args=(srv.accept()[0],)) for _ in range(n_conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _echo_client(rank: int, port: int, calls: int, start: Any, done: Any, out: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request, back = os.urandom(REQUEST_BYTES), memoryview(bytearray(REPLY_BYTES))
    start.wait()
    for _ in range(calls):
        sock.sendall(request)
        got = 0
        while got < REPLY_BYTES:
            got += sock.recv_into(back[got:])
    out.put(rank)
    done.wait()
    sock.close()


def floor_cpu_us(kind: str, n_trainers: int, calls: int) -> float:
    """Server CPU us per call of the no-op gRPC servicer (``grpc``) or the socket echo."""
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    args = (writer,) if kind == "grpc" else (writer, n_trainers)
    server = ctx.Process(target=_noop_grpc_server if kind == "grpc" else _echo_server, args=args, daemon=True)
    server.start()
    port = reader.recv()
    client = _noop_grpc_client if kind == "grpc" else _echo_client
    us = _per_message(server.pid, n_trainers, calls, client, (port, calls))
    server.kill()
    server.join(10)
    return us


def small_message_table(start_servers: Callable, msgs: int, bulk: bool = True) -> dict[str, dict[int, float]]:
    """Print and return the pserver's CPU us per small message for each channel (``bulk``
    False: gRPC only) and trainer count, with the two floors."""
    cols = {"bulk": "bulk channel", "grpc": "gRPC", "floor_grpc_noop": "no-op gRPC servicer",
            "floor_socket_echo": "Python socket echo"}
    print(f"pserver CPU us per small message ({SHAPE[0]}x{SHAPE[1]} float32 SendVariable or "
          f"GetVariableNoBarrier, {msgs} per trainer; CPU time of the server process; goal <= 50 us)")
    print(f"{'trainers':>8} {cols['bulk']:>13} {cols['grpc']:>8}   floors: {cols['floor_grpc_noop']:>19} "
          f"{cols['floor_socket_echo']:>18}")
    table: dict[str, dict[int, float]] = {k: {} for k in cols}
    for n in TRAINERS:
        table["bulk"][n] = pserver_cpu_us(start_servers, n, msgs, bulk=True) if bulk else float("nan")
        table["grpc"][n] = pserver_cpu_us(start_servers, n, msgs, bulk=False)
        table["floor_grpc_noop"][n] = floor_cpu_us("grpc", n, msgs)
        table["floor_socket_echo"][n] = floor_cpu_us("socket", n, msgs)
        print(f"{n:>8} {table['bulk'][n]:>13.1f} {table['grpc'][n]:>8.1f}   floors: "
              f"{table['floor_grpc_noop'][n]:>19.1f} {table['floor_socket_echo'][n]:>18.1f}", flush=True)
    print("(small values take the bulk channel unless TLS is on; gRPC carries them under TLS)")
    return table
