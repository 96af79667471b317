"""Check any collective backend against the ``local`` reference backend.

Run ``check_against_oracle(backend)`` on every rank of a group (SPMD).  Each
rank builds every rank's inputs from a seed, runs the collective under test on
its own input, runs the same call through a ``LocalGroup`` of threads on all
inputs, and asserts equality.  Values are chosen so that results are exact
whatever the reduction order (small integers; powers of two for ``prod``),
plus one case of random floats compared with a tolerance.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..collective.api import Backend
from ..collective.backends.local import LocalGroup
from ..collective.constants import REDUCE_OPS

__all__ = ["check_against_oracle", "check_large_all_reduce", "make_input", "oracle"]

DTYPES = (np.float32, np.float64, np.int64)
SIZES = (0, 1, 1001)


def make_input(rank: int, shape: tuple[int, ...], dtype: Any, op: str = "sum", seed: int = 0) -> np.ndarray:
    """Rank ``rank``'s input: same on every process, different per rank."""
    rng = np.random.default_rng([seed, rank, int(np.prod(shape, dtype=np.int64)), REDUCE_OPS.index(op) if op else 9])
    n = int(np.prod(shape, dtype=np.int64))
    if op == "prod":
        # Powers of two (and -1): exact products in any order, no overflow for a few ranks.
        values = rng.choice(np.array([1, 2, -1, -2]), size=n)
        if np.dtype(dtype).kind == "f":
            values = values * rng.choice(np.array([1.0, 0.5]), size=n)
    else:
        values = rng.integers(-1000, 1000, size=n, dtype=np.int32)
    return values.astype(dtype).reshape(shape)


def oracle(world_size: int, coll: str, inputs: Sequence[np.ndarray], **kwargs: Any) -> list[Any]:
    """Every rank's result of ``coll`` computed by the local reference backend."""
    group = LocalGroup(world_size, timeout=60)
    try:
        return group.run(lambda b: getattr(b, coll)(np.array(inputs[b.rank]), **kwargs))
    finally:
        group.close()


def check_against_oracle(backend: Backend, sizes: Sequence[int] = SIZES, dtypes: Sequence[Any] = DTYPES,
                         seed: int = 0) -> int:
    """Run every collective for every size/dtype/op; assert equality with ``local``.

    Returns:
        The number of results checked (for the caller to assert > 0).
    """
    checks = 0
    for dtype in dtypes:
        for size in sizes:
            checks += _check_reductions(backend, (size,), dtype, seed)
            checks += _check_gather_broadcast(backend, (size,), dtype, seed)
        # A 2-D case: rows are what reduce_scatter splits and all_gather concatenates.
        checks += _check_reductions(backend, (7, 3), dtype, seed)
        checks += _check_gather_broadcast(backend, (5, 2), dtype, seed)
    checks += _check_random_floats(backend, seed)
    checks += _check_layouts(backend, seed)
    checks += _check_async(backend, seed)
    backend.barrier()
    return checks + 1


def check_large_all_reduce(backend: Backend, nbytes: int = 64 << 20, dtype: Any = np.float32,
                           seed: int = 0) -> int:
    """all_reduce(sum) of an ``nbytes`` array, compared with the local oracle."""
    shape = (nbytes // np.dtype(dtype).itemsize,)
    inputs = [make_input(r, shape, dtype, "sum", seed) for r in range(backend.world_size)]
    mine = inputs[backend.rank].copy()
    got = backend.all_reduce(mine)
    assert got is mine, "all_reduce of a contiguous writable array must work in place"
    _equal(got, oracle(backend.world_size, "all_reduce", inputs)[backend.rank], f"all_reduce {nbytes} bytes")
    return 1


def _check_reductions(backend: Backend, shape: tuple[int, ...], dtype: Any, seed: int) -> int:
    n, rank = backend.world_size, backend.rank
    checks = 0
    for op in REDUCE_OPS:
        inputs = [make_input(r, shape, dtype, op, seed) for r in range(n)]
        mine = inputs[rank].copy()
        got = backend.all_reduce(mine, op=op)
        assert got is mine, f"all_reduce({op}) should write in place"
        _equal(got, oracle(n, "all_reduce", inputs, op=op)[rank], f"all_reduce({op}) {dtype.__name__}{shape}")
        got = backend.reduce_scatter(inputs[rank].copy(), op=op)
        _equal(got, oracle(n, "reduce_scatter", inputs, op=op)[rank],
               f"reduce_scatter({op}) {dtype.__name__}{shape}")
        checks += 2
    return checks


def _check_gather_broadcast(backend: Backend, shape: tuple[int, ...], dtype: Any, seed: int) -> int:
    n, rank = backend.world_size, backend.rank
    inputs = [make_input(r, shape, dtype, "sum", seed) for r in range(n)]
    got = backend.all_gather(inputs[rank])
    want = oracle(n, "all_gather", inputs)[rank]
    assert len(got) == n
    for r in range(n):
        _equal(got[r], want[r], f"all_gather rank {r} {dtype.__name__}{shape}")
    # Unequal first dims: rank r contributes r + first-dim rows (first dim 0 allowed).
    uneven = [make_input(r, (shape[0] + r,) + shape[1:], dtype, "sum", seed) for r in range(n)]
    got = backend.all_gather(uneven[rank])
    want = oracle(n, "all_gather", uneven)[rank]
    assert len(got) == n
    for r in range(n):
        _equal(got[r], want[r], f"all_gather (unequal) rank {r} {dtype.__name__}")
    for root in range(n):
        mine = inputs[rank].copy()
        got_b = backend.broadcast(mine, root=root)
        _equal(got_b, oracle(n, "broadcast", inputs, root=root)[rank], f"broadcast(root={root})")
    return 2 + n


def _check_random_floats(backend: Backend, seed: int) -> int:
    n, rank = backend.world_size, backend.rank
    inputs = [np.random.default_rng([seed, r, 77]).standard_normal(4099) for r in range(n)]
    got = backend.all_reduce(inputs[rank].copy())
    # Ring order differs from rank order: equal up to rounding.
    np.testing.assert_allclose(got, oracle(n, "all_reduce", inputs)[rank], rtol=1e-12, atol=1e-12)
    return 1


def _check_layouts(backend: Backend, seed: int) -> int:
    """Strided and read-only inputs: correct results in a new array, input untouched."""
    n, rank = backend.world_size, backend.rank
    inputs = [make_input(r, (40, 6), np.int64, "sum", seed) for r in range(n)]
    strided = inputs[rank].copy()[::2, ::3]
    before = strided.copy()
    got = backend.all_reduce(strided)
    _equal(got, oracle(n, "all_reduce", [x[::2, ::3] for x in inputs])[rank], "all_reduce strided")
    _equal(strided, before, "strided input must stay unchanged")
    frozen = inputs[rank].copy()
    frozen.flags.writeable = False
    got = backend.broadcast(frozen, root=0)
    _equal(got, inputs[0], "broadcast into a read-only array")
    _equal(frozen, inputs[rank], "read-only input must stay unchanged")
    got = backend.reduce_scatter(frozen.T, op="min")
    _equal(got, oracle(n, "reduce_scatter", [x.T for x in inputs], op="min")[rank], "reduce_scatter transposed")
    return 3


def _check_async(backend: Backend, seed: int) -> int:
    """Several async calls in flight at once complete in issue order, correctly."""
    n, rank = backend.world_size, backend.rank
    inputs = [make_input(r, (333,), np.float32, "sum", seed) for r in range(n)]
    handles = [backend.all_reduce_async(inputs[rank].copy()),
               backend.all_gather_async(inputs[rank]),
               backend.broadcast_async(inputs[rank].copy(), root=n - 1),
               backend.reduce_scatter_async(inputs[rank].copy(), op="max"),
               backend.barrier_async()]
    results = [h.wait(timeout=60) for h in reversed(handles)][::-1]
    assert all(h.is_completed() for h in handles)
    _equal(results[0], oracle(n, "all_reduce", inputs)[rank], "async all_reduce")
    for g, w in zip(results[1], oracle(n, "all_gather", inputs)[rank]):
        _equal(g, w, "async all_gather")
    _equal(results[2], inputs[n - 1], "async broadcast")
    _equal(results[3], oracle(n, "reduce_scatter", inputs, op="max")[rank], "async reduce_scatter")
    assert results[4] is None
    return 5


def _equal(got: Any, want: np.ndarray, what: str) -> None:
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{what}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}")
    if not np.array_equal(got, want):  # fast path first: the assert helper is slow on 64 MiB
        np.testing.assert_array_equal(got, want, err_msg=what)
