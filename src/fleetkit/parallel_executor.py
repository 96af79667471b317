"""``fluid.ParallelExecutor``: the 1.3-era data-parallel executor, on one place per process.

    pe = fluid.ParallelExecutor(use_cuda=False, loss_name=loss.name, main_program=main)
    loss_value, = pe.run(fetch_list=[loss.name], feed=feeder.feed(batch))

It runs ``main_program`` with the whole batch on ``CUDAPlace(0)`` (``use_cuda``) or the
CPU, like ``CompiledProgram(main).with_data_parallel(...)``; see ``core/compiler.py``
for why that computes the same update as fluid's split-over-devices run.  Training on
several processes is fleet's collective mode, or a program DistributeTranspiler
rewrote in nccl2 mode (then ``num_trainers`` / ``trainer_id`` must match the
transpile); ``num_trainers`` > 1 for any other program is refused rather than
silently training alone.
"""
from __future__ import annotations

from typing import Any, Sequence

from .core.backend import CPUPlace, CUDAPlace
from .core.compiler import BuildStrategy, ExecutionStrategy, check_num_trainers
from .core.executor import Executor
from .core.framework import Program, default_main_program
from .core.scope import Scope, global_scope
from .errors import InvalidArgumentError

__all__ = ["ParallelExecutor"]


class ParallelExecutor:
    """Runs ``main_program`` on one place; ``run(fetch_list, feed)`` as in fluid 1.4."""

    def __init__(self, use_cuda: bool, loss_name: str | None = None, main_program: Program | None = None,
                 share_vars_from: "ParallelExecutor | None" = None, exec_strategy: ExecutionStrategy | None = None,
                 build_strategy: BuildStrategy | None = None, num_trainers: int = 1, trainer_id: int = 0,
                 scope: Scope | None = None) -> None:
        if share_vars_from is not None and not isinstance(share_vars_from, ParallelExecutor):
            raise InvalidArgumentError(f"ParallelExecutor: share_vars_from must be a ParallelExecutor, got "
                                       f"{type(share_vars_from).__name__}")
        self._program = default_main_program() if main_program is None else main_program
        if not isinstance(self._program, Program):
            raise InvalidArgumentError(f"ParallelExecutor: main_program must be a Program, got "
                                       f"{type(self._program).__name__}")
        check_num_trainers(self._program, num_trainers, trainer_id, "ParallelExecutor: ")
        self._place = CUDAPlace(0) if use_cuda else CPUPlace()
        self._exe = Executor(self._place)
        self._scope = share_vars_from._scope if share_vars_from is not None else (scope or global_scope())
        self.loss_name = loss_name
        self.build_strategy = build_strategy or BuildStrategy()
        self.exec_strategy = exec_strategy or ExecutionStrategy()

    @property
    def device_count(self) -> int:
        """Places this executor runs on: always 1 (one place per process)."""
        return 1

    def run(self, fetch_list: Sequence[Any], feed: Any = None, feed_dict: Any = None,
            return_numpy: bool = True) -> list[Any]:
        """Run one step; ``feed`` is a dict or a list with one dict (``feed_dict`` is its old name)."""
        if feed is None and feed_dict is not None:
            feed = feed_dict
        return self._exe.run(self._program, feed=feed, fetch_list=fetch_list, scope=self._scope,
                             return_numpy=return_numpy)

    def drop_local_exe_scopes(self) -> None:
        """Nothing to drop: intermediates live in the run's scope (see ``memory_optimize``)."""
