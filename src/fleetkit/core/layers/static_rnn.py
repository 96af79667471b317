"""fluid 1.4's ``StaticRNN``, unrolled when its step block closes.

The step body is built once into a sub-block (so user code reads as in fluid); leaving
``rnn.step()`` copies its ops into the enclosing block once per time step, renaming the
step's own variables ``<name>.step<t>`` and wiring each memory to the previous step's
update.  The result is a plain single-block graph, so ``append_backward``, the optimizers,
pruning and the executor's fast path handle it with no special case; the cost is that the
sequence length (``step_input``'s dim 0) must be known when the program is built.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ...errors import InvalidArgumentError
from .. import unique_name
from ..framework import Block, Variable, default_main_program
from .tensor import fill_constant_batch_size_like, stack
from .tensor_ext import unstack

__all__ = ["StaticRNN"]


class StaticRNN:
    """``with rnn.step(): x_t = rnn.step_input(x); h = rnn.memory(init=h0); ...;
    rnn.update_memory(h, new_h); rnn.step_output(new_h)``, then ``out = rnn()``:
    ``x`` is time-major [T, batch, ...] and ``out`` stacks the T step outputs the same way."""

    def __init__(self, name: str | None = None) -> None:
        self._block: Block | None = None
        self._seq_len: int | None = None
        self._inputs: list[tuple[Variable, Variable]] = []  # (step var, whole sequence)
        self._memories: dict[str, list[Any]] = {}  # step var name -> [initial value, its update]
        self._outputs: list[Variable] = []
        self._results: list[Variable] | None = None

    def _check_inside(self, what: str) -> Block:
        if self._block is None or self._results is not None:
            raise InvalidArgumentError(f"StaticRNN.{what}() must be called inside 'with rnn.step():'")
        return self._block

    @contextlib.contextmanager
    def _body(self) -> Iterator[None]:
        if self._block is not None:
            raise InvalidArgumentError("StaticRNN.step() can be used once per StaticRNN")
        program = default_main_program()
        self._block = program.create_block()
        try:
            yield
        finally:
            program.rollback()
        self._unroll(program)

    def step(self) -> Any:
        return self._body()

    def step_input(self, x: Variable) -> Variable:
        block = self._check_inside("step_input")
        if not isinstance(x, Variable) or not x.shape or x.shape[0] <= 0:
            raise InvalidArgumentError(f"StaticRNN.step_input: '{getattr(x, 'name', x)}' must be a time-major "
                                       f"Variable with a known length in dim 0, got shape "
                                       f"{list(getattr(x, 'shape', ()))}")
        if self._seq_len not in (None, x.shape[0]):
            raise InvalidArgumentError(f"StaticRNN.step_input: '{x.name}' has {x.shape[0]} steps, an earlier "
                                       f"input has {self._seq_len}")
        self._seq_len = x.shape[0]
        step = block.create_var(name=unique_name.generate("static_rnn.step_input"), shape=x.shape[1:],
                                dtype=x.dtype)
        self._inputs.append((step, x))
        return step

    def memory(self, init: Variable | None = None, shape: Any = None, batch_ref: Variable | None = None,
               init_value: float = 0.0, init_batch_dim_idx: int = 0, ref_batch_dim_idx: int = 1) -> Variable:
        """The previous step's value of a state: ``init`` at step 0, or ``init_value`` rows of
        ``shape`` with the batch size of ``batch_ref`` (its dim ``ref_batch_dim_idx``)."""
        block = self._check_inside("memory")
        if init is None:
            if shape is None or batch_ref is None:
                raise InvalidArgumentError("StaticRNN.memory: give init, or shape and batch_ref")
            outer = {s.name: x for s, x in self._inputs}
            # a step input stands for its whole sequence, as in fluid (whose step var shares the
            # sequence's name): the default ref_batch_dim_idx=1 is the batch dim of [T, batch, ...]
            batch_ref = outer.get(batch_ref.name, batch_ref)
            program = default_main_program()
            program._current_block_idx = block.parent_idx  # the initial value is computed once, outside
            try:
                init = fill_constant_batch_size_like(batch_ref, list(shape), batch_ref.dtype, init_value,
                                                     ref_batch_dim_idx, init_batch_dim_idx)
            finally:
                program._current_block_idx = block.idx
        mem = block.create_var(name=unique_name.generate("static_rnn.memory"), shape=init.shape, dtype=init.dtype)
        self._memories[mem.name] = [init, None]
        return mem

    def update_memory(self, mem: Variable, var: Variable) -> None:
        self._check_inside("update_memory")
        if getattr(mem, "name", None) not in self._memories:
            raise InvalidArgumentError(f"StaticRNN.update_memory: '{getattr(mem, 'name', mem)}' is not a memory "
                                       f"of this StaticRNN")
        self._memories[mem.name][1] = var

    def step_output(self, o: Variable) -> None:
        self._check_inside("step_output")
        self._outputs.append(o)

    def output(self, *outputs: Variable) -> None:
        for o in outputs:
            self.step_output(o)

    def _unroll(self, program: Any) -> None:
        block, parent = self._block, program.current_block()
        assert block is not None
        missing = [n for n, (_, upd) in self._memories.items() if upd is None]
        if self._seq_len is None or not self._outputs or missing:
            raise InvalidArgumentError(f"StaticRNN: the step needs a step_input, a step_output and an "
                                       f"update_memory for every memory (not updated: {missing})")
        steps = {s.name: unstack(x, axis=0, num=self._seq_len) for s, x in self._inputs}
        prev = {n: init for n, (init, _) in self._memories.items()}
        per_step: list[list[Variable]] = []
        for t in range(self._seq_len):
            rename = {n: parts[t].name for n, parts in steps.items()}
            rename.update((n, v.name) for n, v in prev.items())

            def mapped(n: str, t: int = t, rename: dict = rename) -> str:
                if n not in rename and n in block.vars:  # the step's own variable: one copy per step
                    v = block.vars[n]
                    rename[n] = parent.create_var(name=f"{n}.step{t}", shape=v.shape, dtype=v.dtype,
                                                  lod_level=v.lod_level, stop_gradient=v.stop_gradient).name
                return rename.get(n, n)
            for op in block.ops:
                parent.append_op(op.type, {s: [mapped(n) for n in ns] for s, ns in op.inputs.items()},
                                 {s: [mapped(n) for n in ns] for s, ns in op.outputs.items()}, dict(op.attrs))
            per_step.append([parent.var(mapped(o.name)) for o in self._outputs])
            prev = {n: parent.var(mapped(upd.name)) for n, (_, upd) in self._memories.items()}
        self._results = [stack([outs[k] for outs in per_step], axis=0) for k in range(len(self._outputs))]
        if program.blocks[-1] is block:  # the body's ops now live in the parent
            program.blocks.pop()
            program._bump()

    def __call__(self) -> Variable | list[Variable]:
        if self._results is None:
            raise InvalidArgumentError("StaticRNN(): call it after the 'with rnn.step():' block")
        return self._results[0] if len(self._results) == 1 else list(self._results)
