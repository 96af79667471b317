"""Control-flow ops: ``while`` runs its ``sub_block`` against the same scope until its
Condition is false; tensor arrays (``write_to_array``, ``read_from_array``,
``lod_array_length``) are Python lists of arrays stored under the array's name.

The executor's prepared program holds only the global block's ops, so a program
without sub-blocks runs exactly as before; a sub-block is prepared here, once per
block version, and re-pointed at the running scope on each run.
"""
from __future__ import annotations

import threading
import weakref
from collections import ChainMap
from typing import Any

from ...errors import FleetkitError, InvalidArgumentError, OpError
from ..backend import to_numpy
from ..framework import Block
from ..registry import KernelContext, ShapeContext, get_op_def, register_op
from ..scope import LoDTensor

#: per thread, sub-block -> (program version, [(kernel, ctx)]): prepared once, like the executor's
#: cache; per thread because a run points the contexts at its scope (train_from_dataset's
#: worker threads run one program at once, each in its own scope)
_LOCAL = threading.local()

#: a while loop that runs this many iterations is taken to be stuck (its condition never turns false)
MAX_ITERATIONS = 10_000_000


def _sub_block_steps(block: Block, parent: KernelContext) -> list:
    version = block.program._version
    prepared = getattr(_LOCAL, "prepared", None)
    if prepared is None:
        prepared = _LOCAL.prepared = weakref.WeakKeyDictionary()
    cached = prepared.get(block)
    # re-prepared when the program changes or another run (other place or random stream) uses it
    key = (version, parent.xp, parent.rng)
    if cached is None or cached[0] != key:
        steps = []
        for op in block.ops:
            opdef = get_op_def(op.type)
            steps.append((opdef.forward, KernelContext(op, parent.xp, parent.rng, parent.place)))
        cached = prepared[block] = (key, steps)
    return cached[1]


def run_sub_block(ctx: KernelContext, block: Block) -> None:
    """Run the ops of ``block`` against the scope ``ctx`` runs in (errors name the sub-block op)."""
    env = ctx.env
    for i, (kernel, sub) in enumerate(_sub_block_steps(block, ctx)):
        sub.env = env
        try:
            kernel(sub)
        except FleetkitError:
            raise
        except Exception as e:
            raise OpError(f"op #{i} {sub.op.type} of block {block.idx} (the sub-block of "
                          f"{ctx.op.type}) failed: {type(e).__name__}: {e}\n  op: {sub.op}") from e


def _sub_block(ctx: KernelContext) -> Block:
    block = ctx.attr("sub_block")
    if not isinstance(block, Block):
        raise InvalidArgumentError(f"op '{ctx.op.type}': attribute 'sub_block' must be a Block, got "
                                   f"{type(block).__name__}")
    return block


def _scalar(ctx: KernelContext, slot: str) -> Any:
    v = to_numpy(ctx.x(slot)).reshape(-1)
    if v.size != 1:
        raise InvalidArgumentError(f"op '{ctx.op.type}': input {slot} ('{ctx.ins[slot][0]}') must hold one "
                                   f"element, got shape {list(v.shape)}")
    return v[0]


def run_sub_block_in(ctx: KernelContext, block: Block, scope: Any) -> None:
    """Run ``block`` against ``scope`` (a ChainMap over the running scope: writes stay in its first map)."""
    outer = ctx.env
    ctx.env = scope
    try:
        run_sub_block(ctx, block)
    finally:
        ctx.env = outer


def _run_pass(ctx: KernelContext, block: Block, passes: list | None) -> None:
    """One run of a control-flow body.  Training (``passes`` is a list), it runs in a scope of
    its own, kept for the backward: the outer variables it writes are then copied out, and
    the kept scope holds the carried variables as the pass began (what its body read)."""
    if passes is None:
        run_sub_block(ctx, block)
        return
    env = ctx.env
    before = {n: env[n] for n in ctx.attr("carried_vars", []) if n in env}
    local: dict[str, Any] = {}
    run_sub_block_in(ctx, block, ChainMap(local, env))
    for n in ctx.outs.get("Out", []):
        if n in local:
            env[n] = local[n]
    local.update(before)
    passes.append(local)


def _passes(ctx: KernelContext) -> list | None:
    return [] if ctx.wants("StepScopes") and not ctx.attr("is_test") else None


def _keep(ctx: KernelContext, passes: list | None) -> None:
    if passes is not None:
        ctx.env[ctx.outs["StepScopes"][0]] = passes


#: the gradient attributes the layers set (core/step_backward.body_backward_attrs)
BODY_ATTRS = {"is_test": False, "carried_vars": [], "carried_last": [], "seed_vars": [], "seed_grads": [],
              "source_vars": [], "source_grads": [], "grad_error": "no gradient block (an op built without one)"}


@register_op("while", attrs=BODY_ATTRS, no_grad_inputs=("Condition",), grad_outputs=("Out",))
def while_op(ctx: KernelContext) -> None:
    """Run ``sub_block`` while the one-element bool ``Condition`` is true (the body updates it)."""
    block, passes = _sub_block(ctx), _passes(ctx)
    for _ in range(MAX_ITERATIONS):
        if not bool(_scalar(ctx, "Condition")):
            _keep(ctx, passes)
            return
        _run_pass(ctx, block, passes)
    raise OpError(f"while: condition '{ctx.ins['Condition'][0]}' still true after {MAX_ITERATIONS} iterations")


@register_op("conditional_block", attrs={**BODY_ATTRS, "is_scalar_condition": True}, no_grad_inputs=("Cond",),
             grad_outputs=("Out",))
def conditional_block(ctx: KernelContext) -> None:
    """Run ``sub_block`` once: if the one-element bool ``Cond`` is true (Switch's cases), or,
    with ``is_scalar_condition`` False, if every ``Cond`` tensor has rows (IfElse's branches)."""
    if ctx.attr("is_scalar_condition"):
        run = bool(_scalar(ctx, "Cond"))
    else:
        run = all(getattr(v, "size", 0) > 0 for v in ctx.xs("Cond"))
    passes = _passes(ctx)
    if run:
        _run_pass(ctx, _sub_block(ctx), passes)
    _keep(ctx, passes)


# ---------------------------------------------------------- IfElse's row split / merge
def _mask(ctx: KernelContext, rows: int) -> Any:
    mask = ctx.x("Mask").reshape(-1).astype(bool)
    if mask.shape[0] != rows:
        raise InvalidArgumentError(f"op '{ctx.op.type}': mask '{ctx.ins['Mask'][0]}' has {mask.shape[0]} "
                                   f"rows, the input has {rows}")
    return mask


def _split_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    for slot in ("OutTrue", "OutFalse"):
        ctx.set(slot, (-1,) + tuple(x.shape[1:]), x.dtype, 0)


@register_op("split_lod_tensor", _split_infer, attrs={"level": 0}, no_grad_inputs=("Mask",))
def split_lod_tensor(ctx: KernelContext) -> None:
    """OutTrue / OutFalse: the rows of X where Mask is true / false (dense rows; order kept)."""
    x = ctx.x("X")
    mask = _mask(ctx, x.shape[0])
    ctx.out("OutTrue", x[mask])
    ctx.out("OutFalse", x[~mask])


def _merge_infer(ctx: ShapeContext) -> None:
    t = ctx.var("InTrue")
    ctx.set("Out", (-1,) + tuple(t.shape[1:]), t.dtype, 0)


@register_op("merge_lod_tensor", _merge_infer, attrs={"level": 0}, no_grad_inputs=("X", "Mask"))
def merge_lod_tensor(ctx: KernelContext) -> None:
    """Out: InTrue's rows where Mask is true and InFalse's where it is false (undoes the split)."""
    xp = ctx.xp
    mask = _mask(ctx, ctx.x("X").shape[0])
    t, f = ctx.env.get(ctx.ins["InTrue"][0]), ctx.env.get(ctx.ins["InFalse"][0])
    t = t.values if isinstance(t, LoDTensor) else t
    f = f.values if isinstance(f, LoDTensor) else f
    n_true = int(mask.sum())
    # a branch that selects no rows did not run: its output may hold an earlier run's value
    t = t if n_true else None
    f = f if n_true < mask.shape[0] else None
    for part, want, slot in ((t, n_true, "InTrue"), (f, mask.shape[0] - n_true, "InFalse")):
        if part is not None and part.shape[0] != want:
            raise InvalidArgumentError(f"IfElse: the {slot} branch output '{ctx.ins[slot][0]}' has "
                                       f"{part.shape[0]} rows, its condition selects {want}")
    ref = t if t is not None else f
    if ref is None:  # no rows at all
        ctx.out("Out", ctx.x("X")[:0])
        return
    out = xp.zeros((mask.shape[0],) + tuple(ref.shape[1:]), dtype=ref.dtype)
    if t is not None:
        out[mask] = t
    if f is not None:
        out[~mask] = f
    ctx.out("Out", out)


# ------------------------------------------------------------------ tensor arrays
def _array(ctx: KernelContext, slot: str, name: str) -> list:
    arr = ctx.env.get(name)
    if arr is None:
        return []
    if not isinstance(arr, list):
        raise InvalidArgumentError(f"op '{ctx.op.type}': '{name}' ({slot}) is not a tensor array, it holds "
                                   f"{type(arr).__name__}")
    return arr


def _element_infer(ctx: ShapeContext) -> None:
    """An array element (written or read) has X's shape, dtype and LoD level."""
    x = ctx.var("X")
    ctx.set("Out", x.shape, x.dtype, x.lod_level)


@register_op("write_to_array", _element_infer)
def write_to_array(ctx: KernelContext) -> None:
    """Out[I] = X (the array grows as needed; it is the same list as before the write)."""
    name = ctx.outs["Out"][0]
    arr = _array(ctx, "Out", name)
    i = int(_scalar(ctx, "I"))
    if i < 0:
        raise InvalidArgumentError(f"array_write: index {i} into '{name}' is negative")
    arr.extend([None] * (i + 1 - len(arr)))
    arr[i] = ctx.raw("X")
    ctx.env[name] = arr


@register_op("read_from_array", _element_infer)
def read_from_array(ctx: KernelContext) -> None:
    """Out = X[I]."""
    name = ctx.ins["X"][0]
    arr = _array(ctx, "X", name)
    i = int(_scalar(ctx, "I"))
    if not 0 <= i < len(arr) or arr[i] is None:
        raise InvalidArgumentError(f"array_read: index {i} of '{name}' was never written (length {len(arr)})")
    v = arr[i]
    ctx.env[ctx.outs["Out"][0]] = LoDTensor(v.values, v._lod) if isinstance(v, LoDTensor) else v


def _length_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", (1,), "int64", 0)


@register_op("lod_array_length", _length_infer)
def lod_array_length(ctx: KernelContext) -> None:
    """Out = [len(X)] as int64."""
    ctx.out("Out", ctx.xp.asarray([len(_array(ctx, "X", ctx.ins["X"][0]))], dtype="int64"))


from . import control_flow_grad  # noqa: E402,F401  (registers the gradients; it imports run_sub_block_in)
