"""All-reduce bus bandwidth: fleetkit's tcp backend vs MPICH and Gloo, on the same links.

    sudo python benchmarks/allreduce.py            # needs root for the shaped links

Bus bandwidth = 2 (n-1)/n * bytes / time per all-reduce (n ranks), i.e. what
each rank's link carried; the ring optimum equals the link rate.  Measured for
256 KiB, 4 MiB and 64 MiB float32 arrays, 2 ranks, on:

* loopback (127.0.0.1, one namespace);
* two network namespaces joined by a veth pair, unshaped and shaped with
  ``tc ... tbf`` to 1 and 10 Gbit/s in each direction (burst = 2 ms of the
  rate, the smallest that delivers the full rate here).  The namespaces get
  unique names and are always deleted again.

Each implementation runs in fresh processes with ``OMP_NUM_THREADS=1`` and
the malloc settings from DESIGN.md: fleetkit ``tcp``; MPICH through mpi4py
(``Allreduce``) under ``mpiexec``, forced onto TCP (``UCX_TLS=tcp,self``) with
one "host" per rank so that it cannot use shared memory across the link (on
loopback its default shared-memory path is shown too); PyTorch's Gloo when
``torch`` is importable.  Timing: back-to-back all-reduces after warm-up,
median of 3 repeats, rank 0's clock.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time

SIZES = (256 << 10, 4 << 20, 64 << 20)
ITERS = {256 << 10: 40, 4 << 20: 10, 64 << 20: 3}
ADDRS = ("10.99.0.1", "10.99.0.2")
PORT = 29400  # fixed ports are safe only inside the fresh namespaces
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "268435456",
             "MALLOC_TRIM_THRESHOLD_": "1073741824"}


# ---- network namespaces ------------------------------------------------------------------------------


class VethPair:
    """Two namespaces joined by a veth pair; ``rate`` (bit/s) shapes both directions."""

    def __init__(self) -> None:
        tag = f"fkb{os.getpid() % 100000}"
        self.ns = (f"{tag}a", f"{tag}b")
        self.dev = (f"{tag}va", f"{tag}vb")

    def __enter__(self) -> "VethPair":
        try:
            for ns in self.ns:
                _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", self.dev[0], "type", "veth", "peer", "name", self.dev[1])
            for ns, dev, addr in zip(self.ns, self.dev, ADDRS):
                _sh("ip", "link", "set", dev, "netns", ns)
                _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _sh("ip", "-n", ns, "link", "set", dev, "up")
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def shape(self, rate: float | None) -> None:
        """Limit each direction to ``rate`` bit/s (None: remove the limit)."""
        for ns, dev in zip(self.ns, self.dev):
            if rate is None:
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                               capture_output=True)
                continue
            burst = int(rate / 8 * 0.002)  # 2 ms of the rate: smaller bursts under-deliver
            _sh("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{int(rate)}bit",
                "burst", str(burst), "latency", "50ms")

    def __exit__(self, *exc: object) -> None:
        for ns in self.ns:  # deleting a namespace deletes its veth end (and so the pair)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _sh(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


# ---- launching ranks -------------------------------------------------------------------------------


def _worker_cmd(impl: str, rank: int, extra: list[str]) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", impl, "--rank", str(rank), *extra]


def _run(cmds: list[list[str]], env: dict, timeout: float) -> dict:
    """Start one process per command, wait for all; return rank 0's RESULT line."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True) for c in cmds]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = "\n".join(outputs)
    for line in text.splitlines():
        if "RESULT " in line:
            return {int(k): v for k, v in json.loads(line.split("RESULT ", 1)[1]).items()}
    raise RuntimeError(f"no result from {cmds[0][:6]}...:\n{text[-3000:]}")


def measure(impl: str, pair: VethPair | None, sizes: list[int], timeout: float) -> dict:
    env = dict(os.environ, **CHILD_ENV)
    sz = ["--sizes", ",".join(map(str, sizes))]
    if impl.startswith("mpich"):
        return _run([_mpiexec_cmd(impl, pair, sz)], env, timeout)
    if pair is None:
        from fleetkit.collective import TCPStoreServer  # rendezvous on port 0, no guessed ports
        server = TCPStoreServer("127.0.0.1", 0)
        try:
            where = ["--store", f"127.0.0.1:{server.port}", "--ifname", "lo"]
            return _run([_worker_cmd(impl, r, where + sz) for r in range(2)], env, timeout)
        finally:
            server.close()
    cmds = []
    for rank in range(2):
        where = ["--endpoints", ",".join(f"{a}:{PORT}" for a in ADDRS), "--ifname", pair.dev[rank]]
        cmds.append(["ip", "netns", "exec", pair.ns[rank], *_worker_cmd(impl, rank, where + sz)])
    return _run(cmds, env, timeout)


def _mpiexec_cmd(impl: str, pair: VethPair | None, sz: list[str]) -> list[str]:
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else "mpiexec"
    cmd = [mpiexec]
    if impl == "mpich-tcp" or pair is not None:
        # One fake host per rank (proxies forked locally) and UCX on TCP only: no
        # shared memory between the ranks, every byte crosses the socket/link.
        cmd += ["-launcher", "fork", "-hosts", "fkh0,fkh1", "-ppn", "1", "-genv", "UCX_TLS", "tcp,self"]
    else:
        return cmd + ["-n", "2", *_worker_cmd("mpi", 0, sz)]
    for rank in range(2):
        prefix = [] if pair is None else ["ip", "netns", "exec", pair.ns[rank]]
        cmd += (["-n", "1"] + prefix + _worker_cmd("mpi", 0, sz) + ([":"] if rank == 0 else []))
    return cmd


# ---- the measured processes ---------------------------------------------------------------------------


def _timed(allreduce, barrier, size: int) -> float:
    import numpy as np
    x = (np.random.default_rng(0).random(size // 4, dtype=np.float32) + 1) * np.float32(1e-30)
    for _ in range(2):
        allreduce(x)
    runs = []
    for _ in range(3):
        barrier()
        start = time.perf_counter()
        for _ in range(ITERS[size]):
            allreduce(x)  # in place: values double each time, far from overflow
        runs.append((time.perf_counter() - start) / ITERS[size])
    return sorted(runs)[1]


def worker(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker == "mpi":
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank = comm.rank
        result = {s: _timed(lambda x: comm.Allreduce(MPI.IN_PLACE, x), comm.Barrier, s) for s in sizes}
    elif args.worker == "fleetkit":
        from fleetkit.collective import TCPStore, get_backend
        rank = args.rank
        if args.store:
            store = TCPStore.from_address(args.store, timeout=60)
            backend = get_backend("tcp", rank=rank, world_size=2, store=store, timeout=120)
        else:
            backend = get_backend("tcp", rank=rank, endpoints=args.endpoints.split(","), timeout=120)
        result = {s: _timed(backend.all_reduce, backend.barrier, s) for s in sizes}
        backend.close()
    else:
        result = _gloo(args, sizes)
        rank = args.rank
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _gloo(args: argparse.Namespace, sizes: list[int]) -> dict:
    import torch
    import torch.distributed as dist
    os.environ["GLOO_SOCKET_IFNAME"] = args.ifname
    if args.store:  # loopback: rank 0's torch store takes a free port and shares it through ours
        from fleetkit.collective import TCPStore
        ours = TCPStore.from_address(args.store, timeout=60)
        if args.rank == 0:
            # wait_for_workers=False: rank 1 can only connect after it read the port from our store
            tstore = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=datetime.timedelta(seconds=60),
                                   wait_for_workers=False)
            ours.set("gloo_port", str(tstore.port).encode())
        else:
            port = int(ours.get("gloo_port"))
            tstore = dist.TCPStore("127.0.0.1", port, 2, False)
    else:
        host = args.endpoints.split(",")[0].rpartition(":")[0]
        tstore = dist.TCPStore(host, PORT + 1, 2, args.rank == 0)
    dist.init_process_group("gloo", store=tstore, rank=args.rank, world_size=2)

    def allreduce(x):
        dist.all_reduce(torch.from_numpy(x))

    result = {s: _timed(allreduce, dist.barrier, s) for s in sizes}
    dist.destroy_process_group()
    return result


# ---- report ----------------------------------------------------------------------------------------------


def busbw_gbit(size: int, seconds: float, n: int = 2) -> float:
    """Bus bandwidth in Gbit/s: 2 (n-1)/n * bytes / time."""
    return 2 * (n - 1) / n * size * 8 / seconds / 1e9


def _fmt_size(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--endpoints", help=argparse.SUPPRESS)
    parser.add_argument("--ifname", default="lo", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="bytes, comma-separated")
    parser.add_argument("--links", default="loopback,veth,1gbit,10gbit")
    parser.add_argument("--impls", default="fleetkit,mpich,gloo")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    # SIGTERM must still run the namespace teardown in ``finally``.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sizes = [int(s) for s in args.sizes.split(",")]
    impls = _available(args.impls.split(","))
    links = args.links.split(",")
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        print("# not root or no iproute2: only loopback is measured")
        links = [link for link in links if link == "loopback"]
    rates = {"loopback": None, "veth": None, "1gbit": 1e9, "10gbit": 10e9}
    rows = []
    pair = VethPair().__enter__() if any(link != "loopback" for link in links) else None
    try:
        for link in links:
            if link != "loopback":
                pair.shape(rates[link])
            for impl in impls + (["mpich-tcp"] if link == "loopback" and "mpich" in impls else []):
                try:
                    res = measure(impl, pair if link != "loopback" else None, sizes, args.timeout)
                except Exception as exc:  # noqa: BLE001 - report and go on with the others
                    print(f"# {link} {impl}: failed: {str(exc)[-500:]}", flush=True)
                    continue
                rows.append((link, impl, res))
                _print_row(link, rates[link], impl, res, sizes)
    finally:
        if pair is not None:
            pair.__exit__()
    _print_summary(rows, rates, sizes)


def _available(impls: list[str]) -> list[str]:
    import importlib.util
    out = []
    for impl in impls:
        if impl == "gloo" and importlib.util.find_spec("torch") is None:
            print("gloo: not installed (pip install torch for the Gloo comparison)")
        elif impl == "mpich" and importlib.util.find_spec("mpi4py") is None:
            print("# mpi4py not importable: MPICH skipped")
        else:
            out.append(impl)
    return out


def _print_row(link: str, rate: float | None, impl: str, res: dict, sizes: list[int]) -> None:
    if not hasattr(_print_row, "done"):
        _print_row.done = True  # type: ignore[attr-defined]
        head = "".join(f"{_fmt_size(s):>22}" for s in sizes)
        print(f"{'link':<9}{'link rate':>11}  {'impl':<10}{head}   (bus bandwidth, Gbit/s)")
    cells = ""
    for s in sizes:
        bw = busbw_gbit(s, res[s])
        pct = f" {100 * bw * 1e9 / rate:3.0f}%" if rate else ""
        cells += f"{bw:>9.2f}{pct:>5} {res[s] * 1e3:6.1f}ms"
    link_rate = f"{rate / 1e9:.0f} Gbit/s" if rate else "-"
    print(f"{link:<9}{link_rate:>11}  {impl:<10}{cells}", flush=True)


def _print_summary(rows: list, rates: dict, sizes: list[int]) -> None:
    big = max(sizes)
    print("\n64 MiB summary (fleetkit bus bandwidth / others'):" if big == 64 << 20 else "\nsummary:")
    by = {(link, impl): res for link, impl, res in rows}
    for link in dict.fromkeys(link for link, _, _ in rows):
        ours = by.get((link, "fleetkit"))
        if ours is None:
            continue
        parts = [f"fleetkit {busbw_gbit(big, ours[big]):.2f} Gbit/s"]
        if rates[link]:
            parts.append(f"{100 * busbw_gbit(big, ours[big]) * 1e9 / rates[link]:.0f}% of link")
        for impl in ("gloo", "mpich", "mpich-tcp"):
            if (link, impl) in by:
                parts.append(f"x{by[(link, impl)][big] / ours[big]:.2f} vs {impl}")
        print(f"  {link:<9} " + ", ".join(parts))


if __name__ == "__main__":
    main()
