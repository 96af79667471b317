"""``optimizer.ModelAverage`` (fluid 1.4): evaluate with parameters averaged over a
sliding window of recent updates.

Create it after the optimizer's ``minimize``: it appends one
``average_accumulates`` op per trainable parameter to the main program, so every
training step adds the freshly updated parameters to the window sums (see
``ops.model_average``).  ``apply(exe)`` is a context manager that swaps in the
averages and, on exit, puts the trained values back::

    model_average = optimizer.ModelAverage(0.15, min_average_window=100, max_average_window=1000)
    ...train...
    with model_average.apply(exe):
        exe.run(test_program, ...)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import InvalidArgumentError
from . import unique_name
from .framework import Parameter, Program, default_main_program
from .optimizer import Optimizer, checked_number


class ModelAverage(Optimizer):
    """Window averages of every trainable parameter that has a gradient.

    The window grows with training: it closes once it holds at least
    ``min_average_window`` steps and ``average_window_rate`` * (steps so far),
    capped at ``max_average_window`` steps.
    """

    def __init__(self, average_window_rate: float, min_average_window: int = 10000,
                 max_average_window: int = 10000, regularization: Any = None, name: str | None = None) -> None:
        super().__init__(0.0, regularization, name)
        self.average_window = checked_number(average_window_rate, "ModelAverage: average_window_rate", lo=0.0)
        self.min_average_window = int(min_average_window)
        self.max_average_window = int(max_average_window)
        if not 0 < self.min_average_window <= self.max_average_window:
            raise InvalidArgumentError(
                f"ModelAverage: need 0 < min_average_window <= max_average_window, got {min_average_window} "
                f"and {max_average_window}")
        main = default_main_program()
        block = main.global_block()
        self.params = [p for p in block.all_parameters() if self._averaged(block, p)]
        if not self.params:
            raise InvalidArgumentError(
                "ModelAverage: no trainable parameter with a gradient in the main program; create it after "
                "optimizer.minimize(loss)")
        self._backups = {p.name: block.create_var(name=unique_name.generate(f"{p.name}_model_average_backup"),
                                                  shape=p.shape, dtype=p.dtype, persistable=True,
                                                  stop_gradient=True) for p in self.params}
        for p in self.params:
            self._append_accumulate(block, p)
        self.apply_program = self._swap_program(main, "model_average_apply")
        self.restore_program = self._swap_program(main, "model_average_restore")

    @staticmethod
    def _averaged(block: Any, p: Parameter) -> bool:
        return (getattr(p, "trainable", True) and getattr(p, "do_model_average", None) is not False
                and block._find_var_recursive(p.name + "@GRAD") is not None)

    def _append_accumulate(self, block: Any, p: Parameter) -> None:
        for s in ("sum_1", "sum_2", "sum_3"):
            self._add_accumulator(s, p)
        for s in ("num_accumulates", "old_num_accumulates", "num_updates"):
            self._add_accumulator(s, p, dtype="int64", shape=[1])
        accs = {s: [self._get_accumulator(s, p)] for s in self._accumulators}
        block.append_op("average_accumulates", {"param": [p], **{f"in_{s}": v for s, v in accs.items()}},
                        {f"out_{s}": v for s, v in accs.items()},
                        {"average_window": self.average_window, "min_average_window": self.min_average_window,
                         "max_average_window": self.max_average_window})

    def _swap_program(self, main: Program, op_type: str) -> Program:
        """A program of one apply (or restore) op per averaged parameter."""
        prog = Program()
        block = prog.global_block()
        for p in self.params:
            backup = self._backups[p.name]
            for v in [p, backup] + [self._get_accumulator(s, p) for s in self._accumulators]:
                if v.name not in block.vars:
                    block.create_var(name=v.name, shape=v.shape, dtype=v.dtype, persistable=True)
            if op_type == "model_average_apply":
                acc = {slot: [self._get_accumulator(s, p).name] for slot, s in (
                    ("Sum1", "sum_1"), ("Sum2", "sum_2"), ("Sum3", "sum_3"), ("NumAccumulates", "num_accumulates"),
                    ("OldNumAccumulates", "old_num_accumulates"))}
                block.append_op(op_type, {"Param": [p.name], **acc},
                                {"ParamOut": [p.name], "Backup": [backup.name]})
            else:
                block.append_op(op_type, {"Backup": [backup.name]}, {"ParamOut": [p.name]})
        return prog

    @contextmanager
    def apply(self, executor: Any, need_restore: bool = True) -> Iterator[None]:
        """Swap the window averages into the parameters for the ``with`` body; put the
        trained values back afterwards unless ``need_restore`` is False (then call
        ``restore(executor)`` yourself)."""
        executor.run(self.apply_program)
        try:
            yield
        finally:
            if need_restore:
                self.restore(executor)

    def restore(self, executor: Any) -> None:
        """Put back the parameters that ``apply`` replaced."""
        executor.run(self.restore_program)

    def minimize(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidArgumentError("ModelAverage does not minimize: create it after another optimizer's minimize")
