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

from .backward import _append_op_grad, _count_contributions, _GradNames, _requires_grad
from .framework import ROLE_BACKWARD, Block, op_role_guard


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
