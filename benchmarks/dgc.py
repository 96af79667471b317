"""Per-step gradient communication: dense all-reduce vs DGC at 99.9% sparsity.

    sudo python benchmarks/dgc.py                  # needs root for the shaped links

Two ranks in two network namespaces joined by a veth pair shaped with
``tc ... tbf`` to 1 Gbit/s and to 10 Gbit/s (set up and always torn down by
``allreduce.VethPair``).  Each rank holds a 25M-parameter float32 gradient
(100 MB) and measures, per step:

* dense: ``all_reduce`` of the gradient (fleetkit ``tcp`` ring);
* DGC sparse: the whole exchange of ``fleetkit.collective.dgc.sparse_exchange``:
  top-k selection (sampled threshold), encoding, ``all_gather`` of indices and
  values, decode-sum into a dense gradient, momentum-factor masking;
* (gather): the all_gather of k indices + k values alone, i.e. the bytes on the wire;
* DGC auto: what ``exchange="auto"`` keeps, i.e. the faster of sparse and a
  dense all-reduce of the accumulated update.

The momentum correction (``u = m*u + g; v += u``) is printed separately: it
replaces the optimizer's own momentum update, so it is not communication.
Medians of several steps, rank 0's clock, ratio = dense / DGC.  The machine's
other load (2 shared cores) inflates the selection time; the figures say so.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from allreduce import ADDRS, CHILD_ENV, PORT, VethPair  # noqa: E402

NUMEL = 25_000_000
SPARSITY = 0.999
RATES = {"1gbit": 1e9, "10gbit": 10e9, "veth": None}


def worker(args: argparse.Namespace) -> None:
    import numpy as np

    from fleetkit.collective import get_backend
    from fleetkit.collective.dgc import _ParamState, select_top_k, sparse_exchange

    backend = get_backend("tcp", rank=args.rank, endpoints=args.endpoints.split(","), timeout=300)
    n, k = args.numel, max(1, int(args.numel * (1 - SPARSITY)))
    rng = np.random.default_rng(args.rank)
    g = (rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3))
    buf = np.empty_like(g)

    def timed(fn, reps: int) -> float:
        fn()  # warm-up (first touch of buffers, connections)
        runs = []
        for _ in range(reps):
            backend.barrier()
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        return float(np.median(runs))

    def dense() -> None:
        np.copyto(buf, g)
        backend.all_reduce(buf)

    u, v = np.zeros_like(g), np.zeros_like(g)
    state = _ParamState()
    step = [0]

    def correction() -> None:
        np.multiply(u, np.float32(0.9), out=u)
        np.add(u, g, out=u)
        np.add(v, u, out=v)

    def sparse() -> None:
        step[0] += 1
        sparse_exchange(backend, u, v, k, state, offset=step[0])

    def dense_v() -> None:  # the "dense" choice of exchange="auto": all-reduce of v
        np.copyto(buf, v)
        backend.all_reduce(buf)
        v.fill(0)

    scratch = np.empty_like(g)
    result = {"dense": timed(dense, args.reps),
              "correction": timed(correction, 5),
              "select": timed(lambda: select_top_k(v, k, scratch), 5)}
    sparse_runs = []
    for _ in range(args.reps + 4):
        correction()
        backend.barrier()
        start = time.perf_counter()
        sparse()
        sparse_runs.append(time.perf_counter() - start)
    result["sparse"] = float(np.median(sparse_runs[1:]))
    result["dense_v"] = timed(dense_v, max(2, args.reps // 2))
    message = np.zeros(2 * k, dtype=np.int32)
    result["gather"] = timed(lambda: backend.all_gather(message), args.reps)
    result["sent_bytes"] = 8 * k
    backend.close()
    if args.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def run_link(pair: VethPair, numel: int, reps: int, timeout: float) -> dict:
    env = dict(os.environ, **CHILD_ENV)
    eps = ",".join(f"{a}:{PORT}" for a in ADDRS)
    procs = [subprocess.Popen(["ip", "netns", "exec", pair.ns[r], sys.executable, os.path.abspath(__file__),
                               "--worker", "--rank", str(r), "--endpoints", eps, "--numel", str(numel),
                               "--reps", str(reps)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL) for r in range(2)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for line in "\n".join(outs).splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError("no result:\n" + "\n".join(outs)[-3000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--endpoints", help=argparse.SUPPRESS)
    ap.add_argument("--numel", type=int, default=NUMEL)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--links", default="1gbit,10gbit")
    ap.add_argument("--timeout", type=float, default=400)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if os.geteuid() != 0:
        sys.exit("needs root (ip netns, tc)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the teardown still runs
    print(f"# {args.numel / 1e6:.0f}M float32 parameters, DGC sparsity {SPARSITY}, 2 ranks; "
          f"load average before: {os.getloadavg()[0]:.2f} (2 shared cores)")
    print(f"{'link':<8}{'dense':>10}{'dgc sparse':>12}{'(select)':>10}{'dgc auto':>10}"
          f"{'(gather)':>10}{'ratio sparse':>14}{'ratio auto':>12}{'momentum corr.':>16}")
    with VethPair() as pair:
        for link in args.links.split(","):
            pair.shape(RATES[link])
            r = run_link(pair, args.numel, args.reps, args.timeout)
            auto = min(r["sparse"], r["dense_v"])
            print(f"{link:<8}{r['dense'] * 1e3:>8.1f}ms{r['sparse'] * 1e3:>10.1f}ms{r['select'] * 1e3:>8.1f}ms"
                  f"{auto * 1e3:>8.1f}ms{r['gather'] * 1e3:>8.1f}ms{r['dense'] / r['sparse']:>13.1f}x{r['dense'] / auto:>11.1f}x"
                  f"{r['correction'] * 1e3:>14.1f}ms", flush=True)
    print(f"# goals: ratio >= 10x at 1 Gbit/s, >= 1x at 10 Gbit/s; load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
