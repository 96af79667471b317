"""fluid 1.4's ``DynamicRNN``: a recurrence over variable-length sequences.

The step body is built into a sub-block as in fluid.  Where fluid unrolls it with a
``while`` op over tensor arrays, fleetkit runs it with one ``dynamic_rnn`` op
(core/ops/dynamic_rnn.py) that loops over the time steps of the batch at run time, so
the sequence lengths need not be known when the program is built; when the body closes,
its gradient block is built beside it (core/step_backward.py), so ``append_backward``
and the optimizers treat the whole RNN as one differentiable op.  The rank table, the
reordering of static inputs and of ``need_reorder`` memories are ordinary ops in the
enclosing block (core/layers/lod_rank.py), as in fluid.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from ...errors import InvalidArgumentError
from .. import unique_name
from ..framework import EMPTY_VAR, Block, Variable, convert_dtype, default_main_program
from ..step_backward import build_step_backward
from .lod_rank import lod_rank_table, reorder_lod_tensor_by_rank
from .checks import need_var

__all__ = ["DynamicRNN"]

_BEFORE, _IN, _AFTER = "before", "in", "after"


class DynamicRNN:
    """``with drnn.block(): x_t = drnn.step_input(x); h = drnn.memory(shape=[H]); ...;
    drnn.update_memory(h, new_h); drnn.output(new_h)``, then ``out = drnn()``: ``x`` is a
    LoD tensor of sequences (one level), ``out`` a LoD tensor with one row per row of ``x``,
    in ``x``'s sequence order.  Each step sees the sequences still running, longest first."""

    def __init__(self, name: str | None = None) -> None:
        self._name = name or unique_name.generate("dynamic_rnn")
        self._status = _BEFORE
        self._block: Block | None = None
        self._table: Variable | None = None
        self._step_inputs: list[tuple[Variable, Variable]] = []  # (step var, whole LoD tensor)
        self._statics: list[tuple[Variable, Variable]] = []  # (step var, input in table order)
        self._memories: list[dict] = []  # var, init (Variable or None), shape, value, dtype, update
        self._outputs: list[Variable] = []
        self._results: list[Variable] = []

    # ------------------------------------------------------------------ building
    def _check_inside(self, what: str) -> Block:
        if self._status != _IN or self._block is None:
            raise InvalidArgumentError(f"DynamicRNN.{what}() must be called inside 'with drnn.block():'")
        return self._block

    @contextlib.contextmanager
    def _in_parent(self, what: str) -> Iterator[None]:
        """Append ops to the enclosing block (what fluid puts before its while op)."""
        program = default_main_program()
        block = self._check_inside(what)
        program._current_block_idx = block.parent_idx
        try:
            yield
        finally:
            program._current_block_idx = block.idx

    def _step_var(self, prefix: str, like: Variable, shape: Sequence[int] | None = None,
                  dtype: Any = None, lod_level: int = 0) -> Variable:
        assert self._block is not None
        return self._block.create_var(name=unique_name.generate(f"{self._name}.{prefix}"),
                                      shape=like.shape if shape is None else shape,
                                      dtype=like.dtype if dtype is None else dtype, lod_level=lod_level)

    def block(self) -> Any:
        """The step body: ``with drnn.block(): ...`` (once per DynamicRNN)."""
        if self._status != _BEFORE:
            raise InvalidArgumentError("DynamicRNN.block() can be used once per DynamicRNN")
        return self._body()

    @contextlib.contextmanager
    def _body(self) -> Iterator[None]:
        program = default_main_program()
        self._block = program.create_block()
        self._status = _IN
        try:
            yield
        finally:
            program.rollback()
            self._status = _AFTER
        self._append_loop(program)

    def step_input(self, x: Variable) -> Variable:
        """This step's rows of the LoD tensor ``x``: one per sequence longer than the step."""
        self._check_inside("step_input")
        need_var("DynamicRNN.step_input", "x", x)
        if self._table is None:
            with self._in_parent("step_input"):
                self._table = lod_rank_table(x, 0)
        step = self._step_var("step_input", x, lod_level=0)
        self._step_inputs.append((step, x))
        return step

    def static_input(self, x: Variable) -> Variable:
        """``x`` (one row, or one LoD sequence, per input sequence) as the step sees it: in
        rank-table order, shrunk to the sequences still running."""
        self._check_inside("static_input")
        need_var("DynamicRNN.static_input", "x", x)
        if self._table is None:
            raise InvalidArgumentError("DynamicRNN.static_input() must be called after step_input()")
        with self._in_parent("static_input"):
            reordered = reorder_lod_tensor_by_rank(x, self._table)
        step = self._step_var("static_input", x, lod_level=x.lod_level)
        self._statics.append((step, reordered))
        return step

    def memory(self, init: Variable | None = None, shape: Sequence[int] | None = None, value: float = 0.0,
               need_reorder: bool = False, dtype: Any = "float32") -> Variable:
        """The previous step's value of a state: ``init`` (one row per sequence, in rank-table
        order unless ``need_reorder``) at the first step, or ``value`` rows of ``shape``."""
        self._check_inside("memory")
        if init is not None:
            need_var("DynamicRNN.memory", "init", init)
            if need_reorder:
                if self._table is None:
                    raise InvalidArgumentError("DynamicRNN.memory(init=..., need_reorder=True) must come after "
                                               "step_input()")
                with self._in_parent("memory"):
                    init = reorder_lod_tensor_by_rank(init, self._table)
            var = self._step_var("memory", init, lod_level=init.lod_level)
            self._memories.append({"var": var, "init": init, "shape": [], "value": 0.0, "dtype": init.dtype,
                                   "update": None})
            return var
        if not self._step_inputs:
            raise InvalidArgumentError("DynamicRNN.memory(shape=..., value=...) must come after step_input()")
        if shape is None:
            raise InvalidArgumentError("DynamicRNN.memory: give init, or shape")
        shape = [int(d) for d in ([shape] if isinstance(shape, int) else shape)]
        var = self._step_var("memory", self._step_inputs[0][1], shape=[-1] + shape, dtype=convert_dtype(dtype))
        self._memories.append({"var": var, "init": None, "shape": shape, "value": float(value),
                               "dtype": convert_dtype(dtype), "update": None})
        return var

    def update_memory(self, ex_mem: Variable, new_mem: Variable) -> None:
        """``new_mem`` (computed in this step) is the memory's value at the next step."""
        self._check_inside("update_memory")
        for m in self._memories:
            if m["var"] is ex_mem or m["var"].name == getattr(ex_mem, "name", None):
                need_var("DynamicRNN.update_memory", "new_mem", new_mem)
                m["update"] = new_mem
                return
        raise InvalidArgumentError(f"DynamicRNN.update_memory: '{getattr(ex_mem, 'name', ex_mem)}' is not a memory "
                                   f"of this DynamicRNN (call memory() first)")

    def output(self, *outputs: Variable) -> None:
        """Step values to collect into output LoD tensors (one row per sequence per step)."""
        self._check_inside("output")
        for o in outputs:
            if not isinstance(o, Variable):
                raise InvalidArgumentError(f"DynamicRNN.output: outputs must be Variables, got {type(o).__name__}")
            self._outputs.append(o)

    # ------------------------------------------------------------------ the loop op
    def _outer_names(self, step: Block) -> list[str]:
        """Variables of enclosing blocks the step reads (parameters, tensors computed before)."""
        reads: list[str] = []
        for op in step.ops:
            for n in op.input_arg_names:
                if n not in step.vars and n not in reads and step._find_var_recursive(n) is not None:
                    reads.append(n)
            for n in op.output_arg_names:
                if n not in step.vars and n != EMPTY_VAR:
                    raise InvalidArgumentError(
                        f"DynamicRNN: op '{op.type}' in the step writes '{n}', a variable of the enclosing "
                        f"block; a step's values stay in the step: hand them out with drnn.output(...)")
        return reads

    def _append_loop(self, program: Any) -> None:
        step = self._block
        assert step is not None
        not_updated = [m["var"].name for m in self._memories if m["update"] is None]
        if not self._step_inputs or not self._outputs or not_updated:
            raise InvalidArgumentError(f"DynamicRNN: the block needs a step_input, an output and an update_memory "
                                       f"for every memory (not updated: {not_updated})")
        outer = self._outer_names(step)
        inits = [m["init"] for m in self._memories if m["init"] is not None]
        seeds = list(dict.fromkeys([o.name for o in self._outputs] + [m["update"].name for m in self._memories]))
        sources = ([s.name for s, _ in self._step_inputs] + [s.name for s, _ in self._statics]
                   + [m["var"].name for m in self._memories] + outer)
        try:
            grad_block, seed_grads, source_grads = build_step_backward(step, seeds, sources)
            grad_error = ""
        except InvalidArgumentError as e:  # e.g. an op with no gradient: fine for inference, said if trained
            grad_block, seed_grads, source_grads, grad_error = step, {s: "" for s in seeds}, {}, str(e)
        index = iter(range(len(inits)))
        attrs = {
            "sub_block": step, "grad_block": grad_block,
            "step_vars": [s.name for s, _ in self._step_inputs], "static_vars": [s.name for s, _ in self._statics],
            "memory_vars": [m["var"].name for m in self._memories],
            "memory_init": [next(index) if m["init"] is not None else -1 for m in self._memories],
            "memory_shapes": [m["shape"] for m in self._memories],
            "memory_values": [m["value"] for m in self._memories],
            "memory_dtypes": [m["dtype"] for m in self._memories],
            "update_vars": [m["update"].name for m in self._memories],
            "output_vars": [o.name for o in self._outputs],
            "seed_vars": seeds, "seed_grads": [seed_grads[s] for s in seeds],
            "source_vars": list(source_grads), "source_grads": list(source_grads.values()),
            "grad_error": grad_error,
        }
        parent = program.current_block()
        self._results = [parent.create_var(name=unique_name.generate(f"{self._name}.out"), dtype=o.dtype,
                                           lod_level=1) for o in self._outputs]
        scopes = parent.create_var(name=unique_name.generate(f"{self._name}.step_scopes"), type="step_scopes",
                                   stop_gradient=True)
        parent.append_op("dynamic_rnn",
                         {"RankTable": [self._table], "StepInputs": [x for _, x in self._step_inputs],
                          "StaticInputs": [x for _, x in self._statics], "InitMemories": inits, "X": outer},
                         {"Out": self._results, "StepScopes": [scopes]}, attrs)

    def __call__(self, *args: Any, **kwargs: Any) -> Variable | list[Variable]:
        """The output LoD tensor(s), sequences in the step inputs' original order (fluid's
        signature: arguments are accepted and ignored)."""
        if self._status != _AFTER or not self._results:
            raise InvalidArgumentError("DynamicRNN(): the outputs exist after the 'with drnn.block():' body")
        return self._results[0] if len(self._results) == 1 else list(self._results)
