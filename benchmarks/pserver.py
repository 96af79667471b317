"""Parameter-server RPC throughput next to raw loopback sockets, measured in one run.

    python benchmarks/pserver.py [--iters 30] [--json out.json] [--grpc-only] [--apply numpy]
                                 [--small-msgs 2000] [--small-only]

* small messages: CPU microseconds of the pserver process per 64x1 float32 SendVariable or
  GetVariableNoBarrier, 1/2/4/8 trainers at once (from /proc/PID/stat), on the bulk channel
  and on gRPC, beside a no-op Python gRPC servicer and a Python socket echo measured the
  same way (the floors; ``_pserver_small.py``)
* push+pull: each trainer, per iteration, sends one 4 MiB float32 gradient block to
  every pserver (SendVariable, async mode: the pserver applies SGD to its block on
  arrival, in place with one BLAS axpy; ``--apply numpy``: numpy with a temporary) and
  pulls the 4 MiB parameter block back (GetVariable), all pservers concurrently.
  MB/s counts bytes in both directions (8 MiB per trainer per pserver per iteration);
  "per pserver" divides the aggregate by the number of pservers.  1 and 2 trainers x 1
  and 2 pservers, every process separate (spawned).
  Path of the tensors: they travel on the pservers' bulk channel
  (raw TCP beside the gRPC port, ``fleetkit/pserver/bulk.py``; the column "path" counts
  the calls each transport carried); barriers, COMPLETE and the bulk-port query use
  gRPC.  ``--grpc-only`` (FLEETKIT_PS_BULK=0) keeps everything on gRPC.
* raw socket: the same 4 MiB-out / 4 MiB-back exchange over one plain TCP loopback
  connection between two processes (sendall / recv_into a preallocated buffer): the
  ceiling for one trainer-pserver pair.  Ratio = pserver MB/s per pserver / raw MB/s.
  "raw same topology": plain sockets doing the whole configuration's exchange in the
  same number of processes (aggregate MB/s; ratio = pserver aggregate / it).  With 3-4
  processes on 2 cores it is well below 2x or 4x one pair: the kernel copies alone
  need more CPU than the cores have, so "per pserver >= 50% of one raw pair" is out of
  reach there for any transport.
* bare gRPC echo: 4 MiB bytes in and out of a Python gRPC server with no codec, no
  handler and no copies of ours: the ceiling of the gRPC path (why the bulk channel).
* sparse prefetch: rows/s of PrefetchVariable for 16-float rows of a table over a
  10^9-id space, batches of 10 000 random ids, first touch (rows created) and warm.

Children run with OMP_NUM_THREADS=1 and the malloc settings from DESIGN.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from typing import Any

import numpy as np

import _pserver_small  # benchmarks/: the small-message figure

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "268435456",
             "MALLOC_TRIM_THRESHOLD_": "1073741824"}
BLOCK = 4 << 20   # bytes
REPEATS = 3
MB = 1e6


# ---------------------------------------------------------------- raw socket
def _recv_block(sock: socket.socket, view: memoryview) -> None:
    """Receive exactly BLOCK bytes into ``view``."""
    got = 0
    while got < BLOCK:
        got += sock.recv_into(view[got:], BLOCK - got)


def raw_socket_mb_s(iters: int) -> float:
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_raw_topo_server, args=(writer, 1, REPEATS * iters + 3))
    proc.start()
    port = reader.recv()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = np.random.rand(BLOCK // 8).view(np.uint8)
    back = bytearray(BLOCK)
    view = memoryview(back)

    def once() -> None:
        sock.sendall(out)
        _recv_block(sock, view)
    for _ in range(3):
        once()
    dt = _best_of(REPEATS, iters, once)
    sock.close()
    proc.join(30)
    return 2 * BLOCK * iters / dt / MB


def _raw_topo_server(port_conn: Any, n_conns: int, iters: int) -> None:
    import threading
    srv = socket.create_server(("127.0.0.1", 0))
    port_conn.send(srv.getsockname()[1])
    conns = [srv.accept()[0] for _ in range(n_conns)]
    threads = [threading.Thread(target=_echo_loop, args=(c, iters)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _echo_loop(conn: socket.socket, iters: int) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    view = memoryview(bytearray(BLOCK))
    for _ in range(iters):
        _recv_block(conn, view)
        conn.sendall(view)
    conn.close()


def _raw_topo_client(ports: list[int], iters: int, start: Any, out: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor
    socks = [socket.create_connection(("127.0.0.1", p)) for p in ports]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = np.random.rand(BLOCK // 8).view(np.uint8)
    backs = [memoryview(bytearray(BLOCK)) for _ in socks]

    def one(i: int) -> None:
        socks[i].sendall(data)
        _recv_block(socks[i], backs[i])
    pool = ThreadPoolExecutor(len(socks))

    def once() -> None:
        list(pool.map(one, range(len(socks))))
    for _ in range(3):
        once()
    start.wait()
    out.put(_best_of(REPEATS, iters, once))


def raw_topology_mb_s(n_trainers: int, n_pservers: int, iters: int) -> float:
    """Aggregate MB/s of the same push+pull pattern over plain sockets, in the same
    processes (n_trainers clients, each talking to n_pservers echo servers at once): what
    the cores allow for that topology."""
    ctx = mp.get_context("spawn")
    servers, ports = [], []
    for _ in range(n_pservers):
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_raw_topo_server, args=(writer, n_trainers, REPEATS * iters + 3))
        p.start()
        servers.append(p)
        ports.append(reader.recv())
    start, out = ctx.Barrier(n_trainers + 1), ctx.Queue()
    clients = [ctx.Process(target=_raw_topo_client, args=(ports, iters, start, out)) for _ in range(n_trainers)]
    for c in clients:
        c.start()
    start.wait(120)
    times = [out.get(timeout=600) for _ in clients]
    for p in clients + servers:
        p.join(60)
    return n_trainers * n_pservers * 2 * BLOCK * iters / max(times) / MB


def _best_of(repeats: int, iters: int, once: Any) -> float:
    """Shortest time of ``repeats`` runs of ``iters`` calls (the machine is shared: the
    best run is the one least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            once()
        best = min(best, time.perf_counter() - t0)
    return best


# ------------------------------------------------- bare gRPC (the transport's ceiling)
def _echo_server(port_conn: Any) -> None:
    import grpc
    from concurrent.futures import ThreadPoolExecutor

    from fleetkit.pserver import rpc

    blob = os.urandom(BLOCK)
    server = grpc.server(ThreadPoolExecutor(8), options=rpc.server_options(64 << 20))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: blob, request_deserializer=lambda b: b,
                                                  response_serializer=lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    port_conn.send(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination(600)


def grpc_echo_mb_s(iters: int) -> float:
    """4 MiB request, 4 MiB response, bytes in and out untouched by Python: what Python
    gRPC itself moves over one channel, with the same channel options as the client."""
    import grpc

    from fleetkit.pserver import rpc

    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_echo_server, args=(writer,), daemon=True)
    proc.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{reader.recv()}", options=rpc.channel_options(64 << 20))
    stub = ch.unary_unary("/bench.Echo/Echo", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    data = os.urandom(BLOCK)
    for _ in range(3):
        stub(data)
    dt = _best_of(REPEATS, iters, lambda: stub(data))
    ch.close()
    proc.kill()
    proc.join(10)
    return 2 * BLOCK * iters / dt / MB


# ------------------------------------------------------------------ pservers
def _sgd(kind: str) -> Any:
    """``p -= 0.01 * g`` in place: one BLAS axpy pass (``axpy``), or numpy with a 4 MiB
    temporary per gradient (``numpy``: what this benchmark did before; on the 2-core test
    machine that costs ~0.5-1 ms of the ~4 ms a 1x1 iteration takes)."""
    if kind == "axpy":
        try:
            from scipy.linalg.blas import saxpy
        except ImportError:   # no scipy: numpy, in place but in two passes
            kind = "numpy"
        else:
            return lambda p, g: saxpy(g, p, a=-0.01)
    return lambda p, g: np.subtract(p, np.float32(0.01) * g, out=p)


def _serve(conn: Any, n_trainers: int, apply_kind: str = "axpy") -> None:
    from fleetkit.errors import NotFoundError
    from fleetkit.pserver.server import ParameterServer, ServerHandler, ServerOptions
    from fleetkit.pserver.tables import SparseTable

    sgd = _sgd(apply_kind)

    class Handler(ServerHandler):
        def __init__(self) -> None:
            self.p = {f"w.block{i}": np.zeros(BLOCK // 4, np.float32) for i in range(n_trainers)}
            self.table = SparseTable("emb", 16)
            self.p["small"] = np.zeros(_pserver_small.SHAPE, np.float32)   # the small-message figure's

        def apply(self, grads: dict) -> None:
            for name, g in grads.items():
                sgd(self.p[name.removesuffix("@GRAD")], g)

        def get(self, name: str) -> Any:
            if name not in self.p:
                raise NotFoundError(name)
            return self.p[name]

        def prefetch(self, table: str, ids: np.ndarray) -> np.ndarray:
            return self.table.lookup(ids)

        def state(self) -> dict:
            return dict(self.p)

        def load_state(self, d: dict) -> None:
            self.p.update(d)

    server = ParameterServer("127.0.0.1:0", Handler(), n_trainers, sync_mode=False,
                             options=ServerOptions(exit_when_complete=True))
    conn.send(server.start())
    conn.close()
    server.wait()


def _trainer(rank: int, endpoints: list[str], iters: int, start: Any, out: Any) -> None:
    from fleetkit.pserver.client import RPCClient

    c = RPCClient(rank)
    g = np.random.RandomState(rank).rand(BLOCK // 4).astype(np.float32)
    name = f"w.block{rank}"   # each trainer its own block: no contention on one param

    def once() -> None:
        c.send_vars([(ep, name + "@GRAD", g) for ep in endpoints])
        c.get_vars([(ep, name) for ep in endpoints], barrier=False)
    for _ in range(3):
        once()
    start.wait()
    out.put((rank, _best_of(REPEATS, iters, once), dict(c.transport)))
    c.send_complete(endpoints)
    c.close()


def _start_servers(n: int, n_trainers: int, apply_kind: str = "axpy") -> tuple[list, list[str]]:
    ctx = mp.get_context("spawn")
    procs, eps = [], []
    for _ in range(n):
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_serve, args=(writer, n_trainers, apply_kind))
        p.start()
        procs.append(p)
        eps.append(f"127.0.0.1:{reader.recv()}")
    return procs, eps


def pserver_mb_s(n_trainers: int, n_pservers: int, iters: int, apply_kind: str = "axpy") -> tuple[float, str]:
    """(aggregate push+pull MB/s of ``n_trainers`` against ``n_pservers``, which transport
    carried the sends and gets: "bulk N" / "grpc N" calls)."""
    ctx = mp.get_context("spawn")
    procs, eps = _start_servers(n_pservers, n_trainers, apply_kind)
    start, out = ctx.Barrier(n_trainers + 1), ctx.Queue()
    trainers = [ctx.Process(target=_trainer, args=(r, eps, iters, start, out)) for r in range(n_trainers)]
    for t in trainers:
        t.start()
    start.wait(120)
    got = [out.get(timeout=600) for _ in trainers]
    for p in trainers + procs:
        p.join(60)
    calls: dict[str, int] = {}
    for _, _, transport in got:
        for (path, method), n in transport.items():
            if method in ("SendVariable", "GetVariableNoBarrier"):
                calls[path] = calls.get(path, 0) + n
    path = "+".join(f"{k} {v}" for k, v in sorted(calls.items()))
    return n_trainers * n_pservers * 2 * BLOCK * iters / max(t for _, t, _ in got) / MB, path


def prefetch_rows_s(batches: int, batch: int = 10_000) -> tuple[float, float]:
    """(first-touch rows/s, warm rows/s) of 16-float rows from one pserver."""
    from fleetkit.pserver.client import RPCClient

    procs, eps = _start_servers(1, 1)
    c = RPCClient(0)
    rng = np.random.RandomState(0)
    id_batches = [rng.randint(0, 10**9, size=batch) for _ in range(batches)]
    rates = []
    for _ in range(2):   # first pass creates the rows, second finds them
        t0 = time.perf_counter()
        for ids in id_batches:
            rows = c.prefetch([(eps[0], "emb", ids)])[0]
        rates.append(batches * batch / (time.perf_counter() - t0))
        assert rows.shape == (batch, 16)
    c.send_complete(eps)
    c.close()
    procs[0].join(60)
    return rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=30, help="timed push+pull iterations per config")
    ap.add_argument("--prefetch-batches", type=int, default=30)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--ctr-steps", type=int, default=300, help="CTR steps per trainer (0: skip the CTR run)")
    ap.add_argument("--apply", choices=("axpy", "numpy"), default="axpy",
                    help="the pservers' SGD update: in-place BLAS axpy, or numpy with a temporary")
    ap.add_argument("--grpc-only", action="store_true", help="no bulk channel (FLEETKIT_PS_BULK=0)")
    ap.add_argument("--small-msgs", type=int, default=2000,
                    help="small messages per trainer for the pserver CPU us/message figure (0: skip)")
    ap.add_argument("--small-only", action="store_true", help="only the small-message CPU figure")
    args = ap.parse_args()
    if args.grpc_only:
        os.environ["FLEETKIT_PS_BULK"] = "0"   # spawned pservers and trainers inherit it
    if any(os.environ.get(k) != v for k, v in CHILD_ENV.items()):
        # glibc reads the malloc settings at start-up: re-run this process with them, so
        # the clients measured here get them too (spawned children inherit them)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **CHILD_ENV})

    small = {}
    if args.small_msgs > 0:
        small = _pserver_small.small_message_table(_start_servers, args.small_msgs,
                                                   bulk=not args.grpc_only)
    if args.small_only:
        return
    raw = raw_socket_mb_s(args.iters)
    echo = grpc_echo_mb_s(args.iters)
    print(f"raw loopback socket, 4 MiB out + 4 MiB back: {raw:8.0f} MB/s (one connection)")
    print(f"bare Python gRPC echo, same exchange:        {echo:8.0f} MB/s ({echo / raw:.0%} of raw: "
          f"the gRPC path's ceiling)")
    # the machine is shared: the socket is measured again just before each configuration
    # and each row's ratio uses that figure (same background load)
    print(f"{'trainers':>8} {'pservers':>8} {'aggregate MB/s':>15} {'per pserver MB/s':>17} "
          f"{'raw MB/s':>9} {'vs raw':>7} {'raw same topology':>18} {'vs it':>6}  path (calls)")
    rows = []
    for n_t in (1, 2):
        for n_p in (1, 2):
            raw_now = raw_socket_mb_s(args.iters)
            topo = raw_topology_mb_s(n_t, n_p, args.iters)
            agg, path = pserver_mb_s(n_t, n_p, args.iters, args.apply)
            per = agg / n_p
            rows.append({"trainers": n_t, "pservers": n_p, "aggregate_mb_s": agg, "per_pserver_mb_s": per,
                         "raw_socket_mb_s": raw_now, "ratio_vs_raw": per / raw_now, "path": path,
                         "raw_same_topology_mb_s": topo, "ratio_vs_raw_same_topology": agg / topo})
            print(f"{n_t:>8} {n_p:>8} {agg:>15.0f} {per:>17.0f} {raw_now:>9.0f} {per / raw_now:>6.0%} "
                  f"{topo:>18.0f} {agg / topo:>6.0%}  {path}", flush=True)
    cold, warm = prefetch_rows_s(args.prefetch_batches)
    print(f"sparse prefetch, 16-float rows, batches of 10000 ids in a 1e9-id space: "
          f"{cold:,.0f} rows/s first touch, {warm:,.0f} rows/s warm")
    print(f"(cores: {os.cpu_count()}, python {sys.version.split()[0]}, goal: per pserver >= 50% of raw)")
    ctr = {}
    if args.ctr_steps > 0:  # end-to-end CTR training (benchmarks/ps_ctr.py, examples/ctr)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import ps_ctr  # noqa: PLC0415
        local_eps, local_auc = ps_ctr.single_process(2 * args.ctr_steps, 128)
        ps_eps, ps_auc = ps_ctr.ps_async(args.ctr_steps, 128, distributed=True)
        ctr = {"ctr_single_process_examples_s": local_eps, "ctr_async_2x2_examples_s": ps_eps}
        print(f"CTR end to end (batch 128, Adam, is_distributed table): single process {local_eps:,.0f} "
              f"examples/s (AUC {local_auc:.3f}), async 2 pservers x 2 trainers {ps_eps:,.0f} examples/s "
              f"(AUC {ps_auc:.3f}), ratio {ps_eps / local_eps:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"raw_socket_mb_s": raw, "grpc_echo_mb_s": echo, "push_pull": rows, "prefetch_rows_s_first_touch": cold,
                       "prefetch_rows_s_warm": warm,
                       "pserver_cpu_us_per_small_message": small, **ctr}, f, indent=1)


if __name__ == "__main__":
    main()
