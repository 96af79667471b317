"""The gradient ops of one recurrent step block, built once with the step.

A ``dynamic_rnn`` op runs its step block once per time step; its gradient runs a second
block once per step in reverse.  That block holds what ``append_backward`` would append
for the step's ops (the same helpers build it, so every op's gradient rule lives in one
place), seeded with the gradients flowing into the step from outside, not with a loss:
``seeds`` are the step's outputs and memory updates, ``sources`` the variables whose
gradients the step hands back (step inputs, static inputs, memories, outer variables).
"""
from __future__ import annotations

from typing import Sequence

from ..errors import InvalidArgumentError
from .backward import _append_op_grad, _count_contributions, _GradNames, _requires_grad
from .framework import EMPTY_VAR, ROLE_BACKWARD, Block, op_role_guard


def build_step_backward(step: Block, seeds: Sequence[str], sources: Sequence[str]) -> tuple[Block, dict, dict]:
    """A new block (a child of ``step``) with the gradient ops of ``step``.

    Returns the block, ``{seed var: the grad var to set before running it}`` and
    ``{source var: the grad var that holds its gradient after}`` (sources no seed
    reaches are left out)."""
    program = step.program
    no_grad = {n for n, v in step.vars.items() if v.stop_gradient and n not in sources}
    requires = _requires_grad(step, set(sources), no_grad)
    needed, path = set(seeds), []
    for op in reversed(step.ops):  # the ops between the sources and the seeds, last first
        if any(n in needed for n in op.output_arg_names):
            path.append(op)
            needed.update(op.input_arg_names)
    block = program._create_block(step.idx)
    counts = _count_contributions(path, requires)
    for s in seeds:  # the seed is one more contribution to its variable's gradient
        counts[s] = counts.get(s, 0) + 1
    grads = _GradNames(block, counts)
    with op_role_guard(ROLE_BACKWARD):
        seed_grads = {s: grads.new(s) for s in seeds}
        for op in path:
            _append_op_grad(block, op, grads, requires)
        source_grads = {s: g for s in sources if (g := grads.finalize(s)) is not None}
    return block, seed_grads, source_grads


def _differentiable(block: Block, name: str) -> bool:
    v = block._find_var_recursive(name)
    return v is not None and v.type == "lod_tensor" and str(v.dtype).startswith("float")


def body_backward_attrs(body: Block, seeds: Sequence[str], sources: Sequence[str]) -> dict:
    """The gradient attributes of a control-flow op that runs ``body`` (``while``,
    ``conditional_block``): its gradient block and the seed / source gradient names, built
    with :func:`build_step_backward` over the float tensors among ``seeds`` and ``sources``.
    A body with no backward (an op without a gradient on the path) still runs forward, for
    inference; ``grad_error`` says why, and its gradient op raises it if the program trains."""
    seeds = [s for s in seeds if _differentiable(body, s)]
    sources = [s for s in sources if _differentiable(body, s)]
    try:
        both = sorted(set(seeds) & set(sources))
        if both:  # left unversioned (a nested body): which value a gradient is for is ambiguous
            raise InvalidArgumentError(f"the body reads and writes {both} and holds nested control flow; "
                                       f"its backward is not supported")
        block, seed_grads, source_grads = build_step_backward(body, seeds, sources)
        error = ""
    except InvalidArgumentError as e:
        block, seed_grads, source_grads, error = body, {s: "" for s in seeds}, {}, str(e)
    return {"grad_block": block, "seed_vars": seeds, "seed_grads": [seed_grads[s] for s in seeds],
            "source_vars": list(source_grads), "source_grads": list(source_grads.values()), "grad_error": error}


def version_loop_carried(body: Block) -> tuple[list[str], list[str]]:
    """Give each write of a loop body to an outer tensor its own body variable (``x@ITER_k``),
    point the body's later reads at it, and copy the last one out at the end of the body.

    The body then reads each carried variable ``x`` only as it was when the iteration
    began, which is what that iteration's backward must see (fluid keeps the same split: a
    step scope's values, then the parent's).  Returns ``(carried, last)``: the outer names
    and their last in-body versions.  Tensor arrays are not versioned (writes fill slots
    of one array); a body with nested control flow is left as it is."""
    if any("sub_block" in op.attrs for op in body.ops):
        return [], []
    latest: dict[str, str] = {}
    for op in list(body.ops):
        for n, new in latest.items():
            if n in op.input_arg_names:
                op._rename_input(n, new)
        for n in list(dict.fromkeys(op.output_arg_names)):
            outer = body._find_var_recursive(latest.get(n, n))
            if n in body.vars or n == EMPTY_VAR or outer is None or outer.type != "lod_tensor":
                continue
            new = f"{n}@ITER_{len([v for v in body.vars if v.startswith(n + '@ITER_')])}"
            body.create_var(name=new, shape=outer.shape, dtype=outer.dtype, lod_level=outer.lod_level)
            op._rename_output(n, new)
            latest[n] = new
    for n, new in latest.items():
        body.append_op("assign", {"X": [new]}, {"Out": [n]}, infer=False)
    return list(latest), list(latest.values())
