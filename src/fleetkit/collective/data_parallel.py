"""Rewrite a program for synchronous data-parallel training by gradient all-reduce.

``data_parallel_rewrite`` runs between the backward pass and the optimizer ops:

1. the loss gradient seed is scaled by ``1/nranks`` (each rank's loss is the
   mean over its own batch, so summed gradients are the gradient of the mean
   over all ranks' batches: the same as one process on the concatenated batch);
2. after the op that finishes each gradient, an async all-reduce starts
   (``c_allreduce_sum``), or, with fusion, after the op that finishes the last
   gradient of a bucket, one ``c_fused_allreduce_sum`` for the whole bucket.
   Buckets follow the order in which backward produces the gradients (last
   layer first), so the first buckets travel while earlier layers' gradients
   are still being computed;
3. one ``c_sync_comm_stream`` after the backward pass waits for all of them
   before the optimizer ops read any gradient;
4. the startup program broadcasts every parameter from rank 0, so all ranks
   start from the same weights whatever their random seeds.

An optimizer can take over some gradients itself (DGC): it returns extra op
specs and the parameters it handles through ``comm_hook``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.framework import (ROLE_BACKWARD, Block, Operator, Parameter, Program, Variable,
                              grad_var_name, op_role_guard)
from ..errors import InvalidArgumentError
from .ops import fused_bucket_bytes

__all__ = ["OpSpec", "data_parallel_rewrite", "grad_positions"]

ParamsGrads = Sequence[tuple[Parameter, Variable | None]]


@dataclass
class OpSpec:
    """An op to insert right after op number ``after`` of the block."""

    after: int
    type: str
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]
    attrs: dict[str, Any] = field(default_factory=dict)


CommHook = Callable[[Block, ParamsGrads, dict[str, int]], tuple[list[OpSpec], set[str]]]


def grad_positions(block: Block, names: Sequence[str]) -> dict[str, int]:
    """Index of the last op writing each of ``names`` (where that value is final)."""
    wanted, pos = set(names), {}
    for i, op in enumerate(block.ops):
        for n in op.output_arg_names:
            if n in wanted:
                pos[n] = i
    missing = wanted - set(pos)
    if missing:
        raise InvalidArgumentError(f"data-parallel rewrite: no op produces gradients {sorted(missing)}")
    return pos


def data_parallel_rewrite(loss: Variable, params_grads: ParamsGrads, nranks: int,
                          startup_program: Program | None = None, ring_id: int = 0,
                          fuse: bool = False, bucket_mb: float = 32.0, overlap: bool = True,
                          broadcast_params: bool = True, comm_hook: CommHook | None = None) -> list[Operator]:
    """Insert loss scaling, gradient all-reduce and the startup broadcast (see module doc).

    Args:
        loss: the loss whose backward pass is already in its program.
        params_grads: (param, grad) pairs from that backward pass.
        nranks: number of data-parallel processes; 1 leaves the program alone.
        startup_program: where parameters are initialized (gets the broadcasts).
        ring_id: communication group of the inserted ops.
        fuse: one all-reduce per bucket of about ``bucket_mb`` MiB instead of one per gradient.
        overlap: start all-reduces asynchronously during backward (else each blocks).
        comm_hook: ``(block, params_grads, positions) -> (extra ops, handled param names)``.
    Returns:
        The inserted ops of the main program.
    """
    if nranks < 1:
        raise InvalidArgumentError(f"data-parallel rewrite: nranks must be >= 1, got {nranks}")
    block = loss.block
    if nranks == 1:
        return []
    pgs = [(p, g) for p, g in params_grads if g is not None]
    for p, g in pgs:
        if g.type == "selected_rows":
            raise InvalidArgumentError(
                f"collective mode all-reduces dense gradients only; parameter '{p.name}' has a sparse "
                f"(SelectedRows) gradient: build its embedding with is_sparse=False")
    positions = grad_positions(block, [g.name for _, g in pgs])
    specs: list[OpSpec] = [_loss_scale_spec(block, loss, nranks)]
    handled: set[str] = set()
    if comm_hook is not None:
        extra, handled = comm_hook(block, pgs, positions)
        specs += extra
    dense = sorted(((p, g) for p, g in pgs if p.name not in handled), key=lambda pg: positions[pg[1].name])
    attrs = {"ring_id": ring_id, "use_calc_stream": not overlap}
    if fuse:
        specs += _bucket_specs(dense, positions, bucket_mb, attrs)
    else:
        specs += [OpSpec(positions[g.name], "c_allreduce_sum", {"X": [g.name]}, {"Out": [g.name]}, dict(attrs))
                  for _, g in dense]
    inserted = _insert(block, specs)
    grads = [g.name for _, g in pgs]
    last = max(i for i, op in enumerate(block.ops) if op.role == ROLE_BACKWARD)
    with op_role_guard(ROLE_BACKWARD):
        inserted.append(block._insert_op(last + 1, "c_sync_comm_stream", {"X": grads}, {"Out": grads},
                                         {"ring_id": ring_id}))
    if broadcast_params and startup_program is not None:
        broadcast_parameters(startup_program, [p.name for p, _ in params_grads], ring_id)
    return inserted


def broadcast_parameters(startup_program: Program, names: Sequence[str], ring_id: int = 0) -> None:
    """Append ``c_broadcast`` from rank 0 of each named variable (sorted) to ``startup_program``."""
    sblock = startup_program.global_block()
    for name in sorted(set(names)):
        if sblock._find_var_recursive(name) is None:
            continue  # not initialized by this startup program (e.g. fed or loaded)
        sblock.append_op("c_broadcast", {"X": [name]}, {"Out": [name]},
                         {"root": 0, "ring_id": ring_id, "use_calc_stream": True})


def _loss_scale_spec(block: Block, loss: Variable, nranks: int) -> OpSpec:
    seed = grad_var_name(loss.name)
    for i, op in enumerate(block.ops):
        if seed in op.output_arg_names:
            return OpSpec(i, "scale", {"X": [seed]}, {"Out": [seed]}, {"scale": 1.0 / nranks, "bias": 0.0})
    raise InvalidArgumentError(f"data-parallel rewrite: no backward pass of loss '{loss.name}' "
                               f"(gradient '{seed}' is never written); run backward/minimize first")


def _bucket_specs(pgs: list[tuple[Parameter, Variable]], positions: dict[str, int], bucket_mb: float,
                  attrs: dict) -> list[OpSpec]:
    """Consecutive (in production order) same-dtype gradients, about ``bucket_mb`` MiB per bucket."""
    specs, run = [], []

    def flush() -> None:
        sizes = [int(np.prod(g.shape)) * np.dtype(g.dtype).itemsize for g in run]
        for bucket in fused_bucket_bytes(sizes, bucket_mb):
            names = [run[i].name for i in bucket]
            specs.append(OpSpec(max(positions[n] for n in names), "c_fused_allreduce_sum",
                                {"X": names}, {"Out": names}, dict(attrs)))

    for _, g in pgs:
        if any(d <= 0 for d in g.shape):
            raise InvalidArgumentError(f"gradient '{g.name}' has an unknown shape {list(g.shape)}")
        if run and run[-1].dtype != g.dtype:
            flush()
            run = []
        run.append(g)
    if run:
        flush()
    return specs


def _insert(block: Block, specs: list[OpSpec]) -> list[Operator]:
    """Insert every spec after its op; later positions first so earlier indices stay valid.

    Specs after the same op keep their list order (the loss scale before anything).
    """
    order = sorted(range(len(specs)), key=lambda i: (specs[i].after, i), reverse=True)
    ops = []
    with op_role_guard(ROLE_BACKWARD):
        for i in order:
            s = specs[i]
            ops.append(block._insert_op(s.after + 1, s.type, s.inputs, s.outputs, s.attrs))
    return ops[::-1]
