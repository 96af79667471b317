"""``CompiledProgram`` / ``BuildStrategy`` / ``ExecutionStrategy``: fluid's names, so a
1.4 script that wraps its program keeps running unchanged::

    compiled = fk.CompiledProgram(main).with_data_parallel(loss_name=loss.name)
    exe.run(compiled, feed=feed, fetch_list=[loss])

fleetkit runs one place per process, so ``with_data_parallel`` runs the program
on the executor's place with the whole batch.  For a loss that is a mean over
the batch this computes the same update as fluid's split-over-devices run
(CoeffNumDevice scaling then summed gradients); batch_norm statistics are over
the whole batch.  Training across processes is fleet's collective mode
(``fleet.init(PaddleCloudRoleMaker(is_collective=True))``) or DistributeTranspiler's
nccl2 mode, which rewrite the program itself; asking this class for more than one
trainer for any other program is an error rather than a silent single-process run.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from .framework import Program

__all__ = ["BuildStrategy", "CompiledProgram", "ExecutionStrategy", "check_num_trainers",
           "register_trainers_rewrite"]


# (num_trainers, trainer_id, rewrite) of the last nccl2 transpile that had no main program
# to rewrite: fleet registers it (core does not import fleet), check_num_trainers applies it
_pending_rewrite: tuple[int, int, Callable[[Program], None]] | None = None


def register_trainers_rewrite(num_trainers: int, trainer_id: int, rewrite: Callable[[Program], None]) -> None:
    """Have ``check_num_trainers`` all-reduce an unmarked program with ``rewrite(program)``."""
    global _pending_rewrite
    _pending_rewrite = (int(num_trainers), int(trainer_id), rewrite)


def check_num_trainers(program: Program, num_trainers: int, trainer_id: int, who: str) -> None:
    """Refuse ``num_trainers`` > 1 unless ``program`` all-reduces over that many trainers itself
    (``DistributeTranspiler`` in nccl2 mode marks it, or registered a rewrite for it);
    then this process runs it on its place."""
    n = int(num_trainers or 1)
    if n <= 1:
        return
    meta = program.meta
    if not meta.nccl2_trainers and _pending_rewrite is not None and _pending_rewrite[:2] == (n, int(trainer_id)):
        _pending_rewrite[2](program)
    if not meta.nccl2_trainers:
        raise InvalidArgumentError(
            f"{who}num_trainers={n}, but the program was not transpiled for several trainers: run "
            f"DistributeTranspiler with config.mode = 'nccl2' (transpile(trainer_id, trainers='ip:port,...', "
            f"current_endpoint=..., program=main, startup_program=startup)) first, or use fleet's collective "
            f"mode (fleet.init(role_maker.PaddleCloudRoleMaker(is_collective=True)))")
    if (meta.nccl2_trainers, meta.nccl2_trainer_id) != (n, int(trainer_id)):
        raise InvalidArgumentError(
            f"{who}num_trainers={n}, trainer_id={trainer_id}, but the program was transpiled in nccl2 mode "
            f"for trainer {meta.nccl2_trainer_id} of {meta.nccl2_trainers}")


class BuildStrategy:
    """fluid 1.4 ``BuildStrategy`` fields (accepted and kept; single place per process)."""

    class ReduceStrategy:
        AllReduce = 0
        Reduce = 1

    class GradientScaleStrategy:
        CoeffNumDevice = 0
        One = 1
        Customized = 2

    def __init__(self) -> None:
        self.reduce_strategy = BuildStrategy.ReduceStrategy.AllReduce
        self.gradient_scale_strategy = BuildStrategy.GradientScaleStrategy.CoeffNumDevice
        self.debug_graphviz_path = ""
        self.enable_sequential_execution = False
        self.remove_unnecessary_lock = True
        self.num_trainers = 1
        self.trainers_endpoints: list[str] = []
        self.trainer_id = 0
        self.nccl_comm_num = 1
        self.fuse_elewise_add_act_ops = False
        self.fuse_relu_depthwise_conv = False
        self.sync_batch_norm = False
        self.memory_optimize = False
        self.is_distribution = False
        self.enable_inplace = False
        self.fuse_all_reduce_ops = False


class ExecutionStrategy:
    """fluid 1.4 ``ExecutionStrategy`` fields (accepted and kept)."""

    def __init__(self) -> None:
        self.num_threads = 0
        self.use_cuda = False
        self.allow_op_delay = False
        self.num_iteration_per_drop_scope = 100
        self.use_experimental_executor = False


class CompiledProgram:
    """A program plus how to run it; ``Executor.run`` and ``train_from_dataset`` accept it."""

    def __init__(self, program_or_graph: Program) -> None:
        if not isinstance(program_or_graph, Program):
            raise InvalidArgumentError(
                f"CompiledProgram: expected a Program, got {type(program_or_graph).__name__}")
        self._program = program_or_graph
        self._loss_name: str | None = None
        self._build_strategy = BuildStrategy()
        self._exec_strategy = ExecutionStrategy()
        self._places: Sequence[Any] | None = None
        self._is_data_parallel = False

    def with_data_parallel(self, loss_name: str | None = None, build_strategy: BuildStrategy | None = None,
                           exec_strategy: ExecutionStrategy | None = None, share_vars_from: Any = None,
                           places: Sequence[Any] | None = None) -> CompiledProgram:
        """Mark the program data parallel (see the module docstring); returns self."""
        if build_strategy is not None:
            check_num_trainers(self._program, getattr(build_strategy, "num_trainers", 1),
                               getattr(build_strategy, "trainer_id", 0),
                               "CompiledProgram.with_data_parallel: build_strategy.")
        self._is_data_parallel = True
        self._loss_name = loss_name
        self._build_strategy = build_strategy or self._build_strategy
        self._exec_strategy = exec_strategy or self._exec_strategy
        self._places = places
        return self

    def with_inference_optimize(self, config: Any) -> CompiledProgram:
        """Accepted for fluid compatibility; the program runs as is."""
        return self

    def _executor_run(self, executor: Any, feed: Any, fetch_list: Any, scope: Any, return_numpy: bool) -> list:
        return executor.run(self._program, feed=feed, fetch_list=fetch_list, scope=scope,
                            return_numpy=return_numpy)
