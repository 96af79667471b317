"""Kernels of the parameter-server ops the DistributeTranspiler writes into programs.

Trainer side: ``send`` (split each gradient into its pserver blocks at run time,
send all blocks concurrently), ``send_barrier``, ``recv`` (pull blocks, concat
into the parameter), ``fetch_barrier``, ``distributed_lookup_table`` (prefetch
rows of an ``is_distributed`` table from the pserver owning ``id % n``, or of a
sliced ``is_sparse`` table from the pserver whose block holds the row) and its
gradient.  Pserver side: ``listen_and_serv``, which serves the program's vars
through ``ParameterServer`` with an ``ExecutorHandler`` running the program's
optimize blocks (the same optimizer kernels as single-process training).

Registered with core's registry on import; ``fleetkit.fleet.transpiler`` imports
this module (core never imports pserver).  The RPC modules are imported inside
the kernels, so building and inspecting programs needs no gRPC.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..core.backend import to_numpy
from ..core.ops.sequence import lookup_table_infer
from ..core.executor import register_close_hook
from ..core.registry import KernelContext, register_grad, register_op
from ..core.scope import LoDTensor, SelectedRows
from ..errors import InvalidArgumentError, NotFoundError
from .sharding import shard_by_id, split_ids, split_rows

_RPC_ATTRS = {"trainer_id": 0, "sync_mode": True}


def _client(ctx: KernelContext) -> Any:
    from .client import get_client  # noqa: PLC0415  (gRPC only when a program really talks)
    return get_client(int(ctx.attrs.get("trainer_id", 0)))


def _value(ctx: KernelContext, name: str) -> Any:
    if name not in ctx.env or ctx.env[name] is None:
        raise NotFoundError(f"op '{ctx.op.type}': variable '{name}' has no value to send (was the backward "
                            f"pass run? is it fed?)")
    v = ctx.env[name]
    v = v.values if v.__class__ is LoDTensor else v
    # The wire codec takes host arrays: a GPU trainer's gradients are copied down here.
    if isinstance(v, SelectedRows):
        return v if isinstance(v.values, np.ndarray) else SelectedRows(v.rows, to_numpy(v.values), v.height)
    return v if isinstance(v, np.ndarray) else to_numpy(v)


# ------------------------------------------------------------------ trainer ops
# Async training: a step's gradients are pushed in the background while the trainer
# pulls parameters and runs the next forward pass.  At most one push is in flight:
# the next send (and stop_worker, before COMPLETE) waits for it and re-raises its error.
_pending: list[Future] = []
_pending_lock = threading.Lock()
_push_pool: ThreadPoolExecutor | None = None


def flush_sends() -> None:
    """Wait for the background gradient push (async mode), re-raising its failure."""
    with _pending_lock:
        futures = list(_pending)
        _pending.clear()
    for f in futures:
        f.result()


def _push_in_background(fn: Any) -> None:
    global _push_pool
    with _pending_lock:
        if _push_pool is None:
            _push_pool = ThreadPoolExecutor(1, thread_name_prefix="fk-async-send")
        _pending.append(_push_pool.submit(fn))


@register_op("send", attrs={**_RPC_ATTRS, "epmap": [], "send_varnames": [], "sections": []})
def send(ctx: KernelContext) -> None:
    """Send every X: split into its blocks (or id shards) and pushed concurrently
    (sync mode: before returning; async mode: in the background, see flush_sends)."""
    a = ctx.attrs
    reqs = []
    for i, gname in enumerate(ctx.ins["X"]):
        value = _value(ctx, gname)
        eps, names, secs = a["epmap"][i], a["send_varnames"][i], a["sections"][i]
        parts = shard_by_id(value, len(eps), gname) if not secs else split_rows(value, secs, gname)
        reqs.extend(zip(eps, names, parts))
    client = _client(ctx)
    flush_sends()
    if a["sync_mode"]:
        client.send_vars(reqs)
    else:
        _push_in_background(lambda: client.send_vars(reqs))


@register_op("send_barrier", attrs={**_RPC_ATTRS, "endpoints": []})
def send_barrier(ctx: KernelContext) -> None:
    """Tell every pserver this trainer sent all gradients of the round."""
    _client(ctx).batch_barrier(list(ctx.attrs["endpoints"]))


@register_op("fetch_barrier", attrs={**_RPC_ATTRS, "endpoints": []})
def fetch_barrier(ctx: KernelContext) -> None:
    """Tell every pserver this trainer fetched the round's parameters."""
    _client(ctx).fetch_barrier(list(ctx.attrs["endpoints"]))


@register_op("recv", attrs={**_RPC_ATTRS, "epmap": [], "recv_varnames": [], "sections": [],
                            "with_barrier": True, "background": False})
def recv(ctx: KernelContext) -> None:
    """Pull every Out's blocks from their pservers (one concurrent call) and concat them.

    ``background`` (async training): install the values pulled since the previous run
    and start the next pull, so the round trip overlaps the next step's compute (the
    parameters are one step staler, which async training tolerates).
    """
    global _pull_pool
    a = ctx.attrs
    reqs = [(ep, name) for eps, names in zip(a["epmap"], a["recv_varnames"]) for ep, name in zip(eps, names)]
    client = _client(ctx)
    pull = lambda: client.get_vars(reqs, barrier=bool(a["with_barrier"]))  # noqa: E731
    if not a["background"]:
        values = pull()
    else:
        with _pending_lock:
            prev = _pulls.pop(id(ctx.op), None)
        values = prev.result() if prev is not None else pull()
        with _pending_lock:
            if _pull_pool is None:
                _pull_pool = ThreadPoolExecutor(1, thread_name_prefix="fk-async-recv")
            _pulls[id(ctx.op)] = _pull_pool.submit(pull)
    i = 0
    for out, names in zip(ctx.outs["Out"], a["recv_varnames"]):
        parts = [_dense(v) for v in values[i:i + len(names)]]
        i += len(names)
        value = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        ctx.env[out] = ctx.xp.asarray(value)  # onto the GPU when the trainer runs on one


_pulls: dict[int, Future] = {}
_pull_pool: ThreadPoolExecutor | None = None


def drain_background() -> None:
    """Finish the background push (re-raising its error) and drop background pulls;
    call before telling the pservers this trainer is done."""
    flush_sends()
    with _pending_lock:
        pulls = list(_pulls.values())
        _pulls.clear()
    for f in pulls:
        f.exception()  # wait; a pull's result (or failure) no longer matters


@register_close_hook
def _complete_on_close(executor: Any) -> None:
    """fluid 1.4: a trainer's ``Executor.close()`` tells its pservers it is done, so sync
    rounds stop waiting for it and the pservers can exit (unless ``fleet.stop_worker()``
    already did)."""
    from .client import live_clients  # noqa: PLC0415
    pending = [c for c in live_clients() if c.contacted and not c.completed]
    if pending:
        drain_background()
    for client in pending:
        client.send_complete()


def _dense(v: Any) -> Any:
    if isinstance(v, SelectedRows):
        return v.to_dense()
    return v.values if isinstance(v, LoDTensor) else v


@register_op("distributed_lookup_table", lookup_table_infer, no_grad_inputs=("Ids",),
             attrs={**_RPC_ATTRS, "epmap": [], "table_name": "", "table_height": 0, "table_dim": 0,
                    "height_sections": [], "table_names": [],
                    "padding_idx": -1, "is_sparse": True, "is_distributed": True},
             sparse_grad=lambda op: {"W"})
def distributed_lookup_table(ctx: KernelContext) -> None:
    """Out[k][i] = table[Ids[k][i]], rows prefetched from the pservers.

    An ``is_distributed`` table (``height_sections`` empty) is sharded by id: row ``id``
    lives on pserver ``id % n``.  A sliced dense table (remote prefetch) has one block
    per ``epmap`` entry, named ``table_names[b]`` and holding ``height_sections[b]``
    consecutive rows: ids are bucketed by those row ranges and each block is asked for
    its rows by local row offset.

    Several lookups of one table may share the op (Ids and Out lists, fused by the
    transpiler): every distinct id of the step is fetched once, in one concurrent
    round of calls, whatever the number of lookups.
    """
    a = ctx.attrs
    height, dim, table = int(a["table_height"]), int(a["table_dim"]), a["table_name"]
    ids_in = [to_numpy(x) for x in ctx.xs("Ids")]
    flat = [x.reshape(-1).astype(np.int64) for x in ids_in]
    ids = np.concatenate(flat) if len(flat) > 1 else flat[0]
    if ids.size and (ids.min() < 0 or ids.max() >= height):
        bad = int(ids.max() if ids.max() >= height else ids.min())
        raise InvalidArgumentError(f"op 'distributed_lookup_table': Ids {ctx.ins['Ids']} hold id {bad}, "
                                   f"outside the table '{table}' of {height} rows")
    uniq, inv = np.unique(ids, return_inverse=True)
    eps = list(a["epmap"])
    rows = np.zeros((len(uniq), dim), dtype=np.float32)
    if uniq.size:
        sections = [int(h) for h in a["height_sections"]]
        if sections:
            reqs, where = _by_row_range(uniq, sections, eps, list(a["table_names"]), table)
        else:
            parts = split_ids(uniq, len(eps))
            reqs = [(eps[p], table, shard_ids) for p, (_, shard_ids) in enumerate(parts) if shard_ids.size]
            where = [pos for pos, shard_ids in parts if shard_ids.size]
        got = _client(ctx).prefetch(reqs)
        for sel, vals in zip(where, got):
            vals = _dense(vals)
            if rows.dtype != vals.dtype:
                rows = rows.astype(vals.dtype)
            rows[sel] = vals
    out = rows[inv]
    pad = int(a["padding_idx"])
    if pad != -1:
        out[ids == pad] = 0
    start, values, lods = 0, [], []
    for k, (x, f) in enumerate(zip(ids_in, flat)):
        part = out[start:start + len(f)]
        start += len(f)
        lead = x.shape[:-1] if x.ndim > 1 and x.shape[-1] == 1 else x.shape
        values.append(ctx.xp.asarray(part.reshape(tuple(lead) + (dim,))))
        lods.append(ctx.lod("Ids", k))   # the ids' checked offsets, shared (not re-converted)
    ctx.outs_list("Out", values, lods)


def _by_row_range(uniq: np.ndarray, sections: list[int], eps: list[str], names: list[str],
                  table: str) -> tuple[list[tuple[str, str, np.ndarray]], list[slice]]:
    """Prefetch requests of sorted unique ids over row blocks of ``sections`` rows:
    (endpoint, block name, local row offsets) per block asked, and the slice of
    ``uniq`` each answers (ids are sorted, so a block's ids are consecutive)."""
    if len(sections) != len(eps) or len(names) != len(eps):
        raise InvalidArgumentError(f"op 'distributed_lookup_table' of table '{table}': height_sections "
                                   f"{sections}, table_names {names} and epmap {eps} must have equal lengths")
    bounds = np.cumsum([0] + sections)
    cut = np.searchsorted(uniq, bounds)
    reqs, where = [], []
    for b in range(len(sections)):
        lo, hi = int(cut[b]), int(cut[b + 1])
        if hi > lo:
            reqs.append((eps[b], names[b], uniq[lo:hi] - bounds[b]))
            where.append(slice(lo, hi))
    return reqs, where


@register_grad("distributed_lookup_table")
def distributed_lookup_table_grad(ctx: KernelContext) -> None:
    """W@GRAD = SelectedRows(ids, dOut) over the whole table (the table is not local)."""
    if not ctx.wants("W@GRAD"):
        return
    ids = to_numpy(ctx.x("Ids")).reshape(-1).astype(np.int64)
    g = ctx.x("Out@GRAD").reshape(ids.shape[0], -1)
    pad = int(ctx.attrs["padding_idx"])
    if pad != -1:
        keep = ids != pad
        ids, g = ids[keep], g[ctx.xp.asarray(keep)]  # g is on the trainer's device
    ctx.out("W@GRAD", SelectedRows(ids, g, int(ctx.attrs["table_height"])))


# ------------------------------------------------------------------ pserver op
@register_op("listen_and_serv", attrs={"endpoint": "", "Fanin": 1, "sync_mode": True, "optimize_blocks": [],
                                       "lr_block_id": -1, "grad_to_block_id": [], "param_blocks": [],
                                       "persistables": [], "sparse_tables": [], "pserver_index": 0,
                                       "pserver_num": 1, "checkpoint_dir": "", "checkpoint_interval_s": 0.0,
                                       "barrier_timeout_s": 0.0, "load_dir": "", "dc_asgd": False,
                                       "notify_dirs": []})
def listen_and_serv(ctx: KernelContext) -> None:
    """Serve this pserver's vars until every trainer sent COMPLETE (or the server stops)."""
    from .exec_handler import serve  # noqa: PLC0415
    serve(ctx)
