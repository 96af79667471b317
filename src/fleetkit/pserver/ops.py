"""Kernels of the parameter-server ops the DistributeTranspiler writes into programs.

Trainer side: ``send`` (split each gradient into its pserver blocks at run time,
send all blocks concurrently), ``send_barrier``, ``recv`` (pull blocks, concat
into the parameter), ``fetch_barrier``, ``distributed_lookup_table`` (prefetch
rows of an ``is_distributed`` table from the pserver owning ``id % n``) and its
gradient.  Pserver side: ``listen_and_serv``, which serves the program's vars
through ``ParameterServer`` with an ``ExecutorHandler`` running the program's
optimize blocks (the same optimizer kernels as single-process training).

Registered with core's registry on import; ``fleetkit.fleet.transpiler`` imports
this module (core never imports pserver).  The RPC modules are imported inside
the kernels, so building and inspecting programs needs no gRPC.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.backend import to_numpy
from ..core.ops.sequence import _lookup_infer
from ..core.registry import KernelContext, register_grad, register_op
from ..core.scope import LoDTensor, SelectedRows
from ..errors import InvalidArgumentError, NotFoundError

_RPC_ATTRS = {"trainer_id": 0, "sync_mode": True}


def _client(ctx: KernelContext) -> Any:
    from .client import get_client  # noqa: PLC0415  (gRPC only when a program really talks)
    return get_client(int(ctx.attrs.get("trainer_id", 0)))


def _value(ctx: KernelContext, name: str) -> Any:
    if name not in ctx.env or ctx.env[name] is None:
        raise NotFoundError(f"op '{ctx.op.type}': variable '{name}' has no value to send (was the backward "
                            f"pass run? is it fed?)")
    v = ctx.env[name]
    return v.values if v.__class__ is LoDTensor else v


# ------------------------------------------------------------------ splitting
def split_rows(value: Any, sections: list[int], what: str) -> list[Any]:
    """Split a dense array or SelectedRows into row blocks of ``sections`` rows.

    SelectedRows rows are rebased to each block's first row (the pserver block
    only knows its own rows).
    """
    if len(sections) <= 1:
        return [value]
    bounds = np.cumsum([0] + list(sections))
    if isinstance(value, SelectedRows):
        out = []
        rows = np.asarray(value.rows, dtype=np.int64)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            mask = (rows >= lo) & (rows < hi)
            out.append(SelectedRows(rows[mask] - lo, value.values[mask], int(hi - lo)))
        return out
    if value.shape[0] != bounds[-1]:
        raise InvalidArgumentError(f"send: '{what}' has {value.shape[0]} rows but its pserver blocks "
                                   f"{sections} cover {int(bounds[-1])}")
    return [value[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def shard_by_id(value: Any, n: int, what: str) -> list[SelectedRows]:
    """A distributed table's SelectedRows gradient, split by ``row % n`` (global row ids
    kept).  Every shard is returned, empty ones too, so each pserver hears from every
    trainer every round."""
    if not isinstance(value, SelectedRows):
        raise InvalidArgumentError(f"send: the gradient '{what}' of a distributed table must be SelectedRows, "
                                   f"got {type(value).__name__}")
    merged = value.merged()
    rows = np.asarray(merged.rows, dtype=np.int64)
    shard = rows % n
    return [SelectedRows(rows[shard == p], merged.values[shard == p], merged.height) for p in range(n)]


# ------------------------------------------------------------------ trainer ops
@register_op("send", attrs={**_RPC_ATTRS, "epmap": [], "send_varnames": [], "sections": []})
def send(ctx: KernelContext) -> None:
    """Send every X: split into its blocks (or id shards) and pushed concurrently."""
    a = ctx.attrs
    reqs = []
    for i, gname in enumerate(ctx.ins["X"]):
        value = _value(ctx, gname)
        eps, names, secs = a["epmap"][i], a["send_varnames"][i], a["sections"][i]
        parts = shard_by_id(value, len(eps), gname) if not secs else split_rows(value, secs, gname)
        reqs.extend(zip(eps, names, parts))
    _client(ctx).send_vars(reqs)


@register_op("send_barrier", attrs={**_RPC_ATTRS, "endpoints": []})
def send_barrier(ctx: KernelContext) -> None:
    """Tell every pserver this trainer sent all gradients of the round."""
    _client(ctx).batch_barrier(list(ctx.attrs["endpoints"]))


@register_op("fetch_barrier", attrs={**_RPC_ATTRS, "endpoints": []})
def fetch_barrier(ctx: KernelContext) -> None:
    """Tell every pserver this trainer fetched the round's parameters."""
    _client(ctx).fetch_barrier(list(ctx.attrs["endpoints"]))


@register_op("recv", attrs={**_RPC_ATTRS, "epmap": [], "recv_varnames": [], "sections": [],
                            "with_barrier": True})
def recv(ctx: KernelContext) -> None:
    """Pull every Out's blocks from their pservers (one concurrent call) and concat them."""
    a = ctx.attrs
    reqs = [(ep, name) for eps, names in zip(a["epmap"], a["recv_varnames"]) for ep, name in zip(eps, names)]
    values = _client(ctx).get_vars(reqs, barrier=bool(a["with_barrier"]))
    i = 0
    for out, names in zip(ctx.outs["Out"], a["recv_varnames"]):
        parts = [_dense(v) for v in values[i:i + len(names)]]
        i += len(names)
        ctx.env[out] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _dense(v: Any) -> Any:
    if isinstance(v, SelectedRows):
        return v.to_dense()
    return v.values if isinstance(v, LoDTensor) else v


@register_op("distributed_lookup_table", _lookup_infer, no_grad_inputs=("Ids",),
             attrs={**_RPC_ATTRS, "epmap": [], "table_name": "", "table_height": 0, "table_dim": 0,
                    "padding_idx": -1, "is_sparse": True, "is_distributed": True},
             sparse_grad=lambda op: {"W"})
def distributed_lookup_table(ctx: KernelContext) -> None:
    """Out[i] = table[Ids[i]], rows prefetched from pserver ``id % n`` (each id once)."""
    a = ctx.attrs
    ids_in = to_numpy(ctx.x("Ids"))
    ids = ids_in.reshape(-1).astype(np.int64)
    height, dim, table = int(a["table_height"]), int(a["table_dim"]), a["table_name"]
    if ids.size and (ids.min() < 0 or ids.max() >= height):
        bad = int(ids.max() if ids.max() >= height else ids.min())
        raise InvalidArgumentError(f"op 'distributed_lookup_table': Ids '{ctx.ins['Ids'][0]}' holds id {bad}, "
                                   f"outside the table '{table}' of {height} rows")
    uniq, inv = np.unique(ids, return_inverse=True)
    eps = list(a["epmap"])
    rows = np.zeros((len(uniq), dim), dtype=np.float32)
    if uniq.size:
        shard = uniq % len(eps)
        asked = [p for p in range(len(eps)) if np.any(shard == p)]
        got = _client(ctx).prefetch([(eps[p], table, uniq[shard == p]) for p in asked])
        for p, vals in zip(asked, got):
            vals = _dense(vals)
            if rows.dtype != vals.dtype:
                rows = rows.astype(vals.dtype)
            rows[shard == p] = vals
    out = rows[inv]
    pad = int(a["padding_idx"])
    if pad != -1:
        out[ids == pad] = 0
    lead = ids_in.shape[:-1] if ids_in.ndim > 1 and ids_in.shape[-1] == 1 else ids_in.shape
    ctx.out("Out", ctx.xp.asarray(out.reshape(tuple(lead) + (dim,))), ctx.lod("Ids"))


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
        ids, g = ids[keep], g[keep]
    ctx.out("W@GRAD", SelectedRows(ids, g, int(ctx.attrs["table_height"])))


# ------------------------------------------------------------------ pserver op
@register_op("listen_and_serv", attrs={"endpoint": "", "Fanin": 1, "sync_mode": True, "optimize_blocks": [],
                                       "lr_block_id": -1, "grad_to_block_id": [], "param_blocks": [],
                                       "persistables": [], "sparse_tables": [], "pserver_index": 0,
                                       "pserver_num": 1, "checkpoint_dir": "", "checkpoint_interval_s": 0.0,
                                       "barrier_timeout_s": 0.0, "load_dir": ""})
def listen_and_serv(ctx: KernelContext) -> None:
    """Serve this pserver's vars until every trainer sent COMPLETE (or the server stops)."""
    from .exec_handler import serve  # noqa: PLC0415
    serve(ctx)
