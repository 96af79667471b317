"""Gradients of ``while`` and ``conditional_block`` (fluid's while_grad / conditional_block_grad)
and of IfElse's ``split_lod_tensor`` / ``merge_lod_tensor``.

Both control-flow ops run their body in passes (a ``while`` as many as its condition
allows, a ``conditional_block`` none or one), each in a scope of its own over the running
one, kept in ``StepScopes`` when training (core/ops/control_flow.py).  The gradient walks
the passes in reverse over ``grad_block``, the body's gradient ops built with it
(core/step_backward.py, as DynamicRNN's step is), in each pass's scope: the seeds are the
gradients of the body's last version of each carried variable (the gradient from after the
op, then what the later pass handed back); what comes out is the gradient of the carried
variables before the op and, summed over the passes, of the outer variables the body reads.
"""
from __future__ import annotations

from collections import ChainMap
from typing import Any

from ...errors import InvalidArgumentError
from ..framework import EMPTY_VAR
from ..registry import KernelContext, is_selected_rows, register_grad
from ..scope import LoDTensor
from .control_flow import run_sub_block_in


def _values(v: Any) -> Any:
    return v.values if isinstance(v, LoDTensor) else v


def _pass_grad(ctx: KernelContext, grads: dict, gname: str, var: str) -> Any:
    if gname not in grads:
        return None
    g = grads[gname]
    if is_selected_rows(g):
        raise InvalidArgumentError(f"{ctx.op.type}: the gradient of '{var}' inside the body is sparse "
                                   f"(is_sparse=True inside a While / Switch / IfElse); not supported")
    return _values(g)


def _add(a: Any, b: Any) -> Any:
    return b if a is None else a + b


def _body_grad(ctx: KernelContext) -> None:
    op = ctx.op.type[:-len("_grad")]
    if ctx.attr("grad_error"):
        raise InvalidArgumentError(f"{op}: the body has no backward: {ctx.attr('grad_error')}")
    xp, env = ctx.xp, ctx.env
    scopes = ctx.raw("StepScopes")
    if scopes is None:
        raise InvalidArgumentError(f"{op}: no pass scopes kept (is_test is set): this program cannot be trained")
    carried = dict(zip(ctx.attr("carried_last"), ctx.attr("carried_vars")))
    d_out = {n: _values(env[g]) for n, g in zip(ctx.ins.get("Out", []), ctx.ins.get("Out@GRAD", []))
             if g != EMPTY_VAR and g in env}
    d_carry = {n: d_out.get(n) for n in carried.values()}
    source_grad = dict(zip(ctx.attr("source_vars"), ctx.attr("source_grads")))
    d_reads: dict[str, Any] = {}
    for scope in reversed(scopes):
        grads: dict[str, Any] = {}
        for var, gname in zip(ctx.attr("seed_vars"), ctx.attr("seed_grads")):
            d = d_carry.get(carried[var]) if var in carried else d_out.get(var)
            grads[gname] = d if d is not None else xp.zeros_like(_values(ChainMap(scope, env)[var]))
        run_sub_block_in(ctx, ctx.attr("grad_block"), ChainMap(grads, scope, env))
        for n in d_carry:
            d_carry[n] = _pass_grad(ctx, grads, source_grad.get(n, ""), n)
        for n, gname in source_grad.items():
            if n not in d_carry and (g := _pass_grad(ctx, grads, gname, n)) is not None:
                d_reads[n] = _add(d_reads.get(n), g)
    for i, (name, gname) in enumerate(zip(ctx.ins.get("X", []), ctx.outs.get("X@GRAD", []))):
        if gname == EMPTY_VAR:
            continue
        x = ctx.raw("X", i)
        d = d_carry[name] if name in d_carry else d_reads.get(name)
        d = d if d is not None else xp.zeros_like(_values(x))
        env[gname] = LoDTensor(d, x.lod()) if isinstance(x, LoDTensor) and x.lod() else d


register_grad("while")(_body_grad)
register_grad("conditional_block")(_body_grad)


# ---------------------------------------------------------- IfElse's row split / merge
def _mask(ctx: KernelContext) -> Any:
    return ctx.x("Mask").reshape(-1).astype(bool)


@register_grad("split_lod_tensor")
def split_lod_tensor_grad(ctx: KernelContext) -> None:
    """X's rows take OutTrue's gradient where Mask is true, OutFalse's where it is false."""
    x, mask = ctx.x("X"), _mask(ctx)
    d = ctx.xp.zeros_like(x)
    for slot, rows in (("OutTrue", mask), ("OutFalse", ~mask)):
        g = ctx.x(slot + "@GRAD")
        if g is not None and g.shape[0] == int(rows.sum()):
            d[rows] = g
    ctx.out("X@GRAD", d, ctx.lod("X"))


@register_grad("merge_lod_tensor")
def merge_lod_tensor_grad(ctx: KernelContext) -> None:
    """Each branch's output takes the rows of Out's gradient its condition selected."""
    g, mask = ctx.x("Out@GRAD"), _mask(ctx)
    ctx.out("InTrue@GRAD", g[mask])
    ctx.out("InFalse@GRAD", g[~mask])
