"""The ``dynamic_rnn`` op: ``DynamicRNN``'s loop over time steps, and its gradient.

Forward, for each time step ``t`` of the rank table (longest sequence first): the step
inputs' rows of step ``t``, the static inputs and memories shrunk to the sequences still
running, then the step block (``sub_block``) in a scope of its own layered over the
running one: the step's values stay in that scope (kept in ``StepScopes`` for the
backward pass, as fluid's while op keeps its step scopes), reads of parameters and other
outer variables fall through to the running scope.  The outputs' steps are put back in
the inputs' sequence order.

Backward walks the steps in reverse over ``grad_block``, the step block's gradient ops
(built with the step, core/step_backward.py), in each step's own scope: the seeds are the
outputs' gradient rows and the gradient the next step sent to each memory's update; what
comes out goes to the step inputs' rows, the static inputs and initial memories (a
shrink's gradient: the rows it kept) and, summed over the steps, the outer variables.
"""
from __future__ import annotations

from collections import ChainMap
from typing import Any

from ...errors import InvalidArgumentError
from ..framework import EMPTY_VAR
from ..registry import KernelContext, ShapeContext, is_selected_rows, register_grad, register_op
from ..scope import LoDTensor
from .control_flow import run_sub_block_in
from .lod_rank import LoDRankTable, batch_size_at, check_rows_match, pad_rows, shrink_rows, step_rows

DEFAULT_ATTRS = {"step_vars": [], "static_vars": [], "memory_vars": [], "memory_init": [], "memory_shapes": [],
                 "memory_values": [], "memory_dtypes": [], "update_vars": [], "output_vars": [],
                 "seed_vars": [], "seed_grads": [], "source_vars": [], "source_grads": [], "grad_error": "",
                 # set by clone(for_test) / save_inference_model: no backward, so no step scopes kept
                 "is_test": False}


def _values(v: Any) -> Any:
    return v.values if isinstance(v, LoDTensor) else v


def _lod(v: Any) -> list[list[int]] | None:
    return v.lod() if isinstance(v, LoDTensor) and v.lod() else None


def _wrap(values: Any, lod: list[list[int]] | None) -> Any:
    return LoDTensor(values, lod) if lod else values


def _table(ctx: KernelContext) -> LoDRankTable:
    table = ctx.raw("RankTable")
    if not isinstance(table, LoDRankTable):
        raise InvalidArgumentError(f"dynamic_rnn: RankTable '{ctx.ins['RankTable'][0]}' holds "
                                   f"{type(table).__name__}, not a rank table")
    return table


def _step_inputs(ctx: KernelContext, table: LoDRankTable) -> list[Any]:
    xs = []
    for i, name in enumerate(ctx.ins.get("StepInputs", [])):
        v = ctx.raw("StepInputs", i)
        check_rows_match(table, _values(v), _lod(v), "dynamic_rnn", name)
        xs.append(_values(v))
    return xs


def _initial_memories(ctx: KernelContext, table: LoDRankTable) -> list[Any]:
    inits, n0 = [], batch_size_at(table, 0)
    for idx, shape, value, dtype in zip(ctx.attr("memory_init"), ctx.attr("memory_shapes"),
                                        ctx.attr("memory_values"), ctx.attr("memory_dtypes")):
        if idx >= 0:
            inits.append(ctx.raw("InitMemories", idx))
        else:  # memory(shape=..., value=...): one row per sequence
            inits.append(ctx.xp.full((n0,) + tuple(shape), value, dtype=dtype))
    return inits


def _infer(ctx: ShapeContext) -> None:
    block = ctx.attr("sub_block")
    for i, name in enumerate(ctx.attr("output_vars")):
        v = block.var(name)
        ctx.set("Out", (-1,) + tuple(v.shape[1:]), v.dtype, 1, i=i)


# random: the op's generator is the one random ops in the step (dropout) draw from
@register_op("dynamic_rnn", _infer, no_grad_inputs=("RankTable",), grad_outputs=("Out",), attrs=DEFAULT_ATTRS,
             random=True)
def dynamic_rnn(ctx: KernelContext) -> None:
    table, block = _table(ctx), ctx.attr("sub_block")
    xs = _step_inputs(ctx, table)
    statics = [ctx.raw("StaticInputs", i) for i in range(len(ctx.ins.get("StaticInputs", [])))]
    prev = _initial_memories(ctx, table)
    step_vars, static_vars, memory_vars = ctx.attr("step_vars"), ctx.attr("static_vars"), ctx.attr("memory_vars")
    update_vars, output_vars = ctx.attr("update_vars"), ctx.attr("output_vars")
    scopes: list[dict] = []
    outs: list[list[Any]] = [[] for _ in output_vars]
    xp = ctx.xp
    for t in range(table.max_len()):
        n, rows = batch_size_at(table, t), xp.asarray(step_rows(table, t))
        local: dict[str, Any] = {name: x[rows] for name, x in zip(step_vars, xs)}
        for name, v in zip(static_vars, statics):
            local[name] = _wrap(*shrink_rows(_values(v), _lod(v), n))
        for name, v in zip(memory_vars, prev):
            local[name] = _wrap(*shrink_rows(_values(v), _lod(v), n))
        scope = ChainMap(local, ctx.env)
        run_sub_block_in(ctx, block, scope)
        for k, name in enumerate(output_vars):
            o = _values(scope[name])
            if o.shape[0] != n:
                raise InvalidArgumentError(f"dynamic_rnn: output '{name}' has {o.shape[0]} rows at step {t}, "
                                           f"the step has {n} sequences (one row each)")
            outs[k].append(o)
        prev = [scope[name] for name in update_vars]
        scopes.append(local)
    offsets = table.offsets()
    lod = [list(lv) for lv in table.coarse_lod] + [offsets]
    results = []
    for k, steps in enumerate(outs):
        if not steps:  # no time steps at all: nothing to put back
            v = block.var(output_vars[k])
            results.append(xp.zeros((offsets[-1],) + tuple(max(d, 0) for d in v.shape[1:]), dtype=v.dtype))
            continue
        out = xp.zeros((offsets[-1],) + tuple(steps[0].shape[1:]), dtype=steps[0].dtype)
        for t, o in enumerate(steps):
            out[xp.asarray(step_rows(table, t))] = o
        results.append(out)
    ctx.outs_list("Out", results, [lod] * len(results))
    if ctx.wants("StepScopes") and not ctx.attr("is_test"):
        ctx.env[ctx.outs["StepScopes"][0]] = scopes


def _grad_value(v: Any, var: str) -> Any:
    if is_selected_rows(v):
        raise InvalidArgumentError(f"dynamic_rnn: the gradient of '{var}' inside the step is sparse (is_sparse=True "
                                   f"in a DynamicRNN step), which is not supported (nor is it in fluid 1.4)")
    return _values(v)


def _seeds(ctx: KernelContext, scope: ChainMap, rows: Any, d_outs: list, d_next: list) -> dict:
    """The gradient flowing into each seed variable at a step: its output's rows, plus the
    gradient the next step's memory sent back to it (zeros where neither reaches it)."""
    xp = ctx.xp
    got: dict[str, Any] = {}
    for name, g in zip(ctx.attr("output_vars"), d_outs):
        if g is not None:
            got[name] = got[name] + g[rows] if name in got else g[rows]
    for name, g in zip(ctx.attr("update_vars"), d_next):
        if g is not None:
            g = pad_rows(xp, _values(scope[name]), g)
            got[name] = got[name] + g if name in got else g
    return {gname: got[v] if v in got else xp.zeros_like(_values(scope[v]))
            for v, gname in zip(ctx.attr("seed_vars"), ctx.attr("seed_grads"))}


@register_grad("dynamic_rnn")
def dynamic_rnn_grad(ctx: KernelContext) -> None:
    if ctx.attr("grad_error"):
        raise InvalidArgumentError(f"dynamic_rnn: the step has no backward: {ctx.attr('grad_error')}")
    table, grad_block = _table(ctx), ctx.attr("grad_block")
    xp = ctx.xp
    xs = _step_inputs(ctx, table)
    statics = [ctx.raw("StaticInputs", i) for i in range(len(ctx.ins.get("StaticInputs", [])))]
    inits = _initial_memories(ctx, table)
    scopes = ctx.raw("StepScopes")
    out_names = ctx.ins.get("Out@GRAD", [])
    d_outs = [_values(ctx.env[n]) if n in ctx.env else None for n in out_names]
    source_grad = dict(zip(ctx.attr("source_vars"), ctx.attr("source_grads")))
    d_xs = [xp.zeros_like(x) for x in xs]
    d_statics = [xp.zeros_like(_values(v)) for v in statics]
    outer = ctx.ins.get("X", [])
    d_outer: list[Any] = [None] * len(outer)
    d_next: list[Any] = [None] * len(ctx.attr("memory_vars"))
    for t in reversed(range(len(scopes))):
        rows = xp.asarray(step_rows(table, t))
        fwd = ChainMap(scopes[t], ctx.env)
        grads: dict[str, Any] = _seeds(ctx, fwd, rows, d_outs, d_next)
        run_sub_block_in(ctx, grad_block, ChainMap(grads, scopes[t], ctx.env))

        def grad_of(var: str, grads: dict = grads) -> Any:
            """The gradient the step's backward left for source ``var`` (None: nothing reached it)."""
            gname = source_grad.get(var) or ""
            return _grad_value(grads[gname], var) if gname in grads else None
        for k, name in enumerate(ctx.attr("step_vars")):
            g = grad_of(name)
            if g is not None:
                d_xs[k][rows] = g
        for k, name in enumerate(ctx.attr("static_vars")):
            g = grad_of(name)
            if g is not None:
                d_statics[k][:g.shape[0]] += g
        d_next = [grad_of(name) for name in ctx.attr("memory_vars")]
        for k, name in enumerate(outer):
            g = grad_of(name)
            if g is not None:
                d_outer[k] = g if d_outer[k] is None else d_outer[k] + g
    _write_grads(ctx, "StepInputs", [_wrap(d, _lod(ctx.raw("StepInputs", i))) for i, d in enumerate(d_xs)])
    _write_grads(ctx, "StaticInputs", [_wrap(d, _lod(v)) for d, v in zip(d_statics, statics)])
    d_inits = [None] * len(ctx.ins.get("InitMemories", []))
    for j, idx in enumerate(ctx.attr("memory_init")):
        if idx >= 0:
            init = inits[j]
            d_inits[idx] = _wrap(pad_rows(xp, _values(init), d_next[j] if scopes else None), _lod(init))
    _write_grads(ctx, "InitMemories", d_inits)
    _write_grads(ctx, "X", [d if d is not None else xp.zeros_like(_values(ctx.raw("X", i)))
                            for i, d in enumerate(d_outer)])


def _write_grads(ctx: KernelContext, slot: str, values: list) -> None:
    for name, v in zip(ctx.outs.get(slot + "@GRAD", []), values):
        if name != EMPTY_VAR and v is not None:
            ctx.env[name] = v
