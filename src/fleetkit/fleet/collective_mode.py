"""Collective (all-reduce) fleet: ``CollectiveFleet``, ``DistributedStrategy`` and the
optimizer wrapper that rewrites a program for data-parallel training.

    fleet.init(role_maker.PaddleCloudRoleMaker(is_collective=True))
    strategy = DistributedStrategy(); strategy.fuse_all_reduce_ops = True
    opt = fleet.distributed_optimizer(fk.optimizer.Momentum(0.1, 0.9), strategy)
    opt.minimize(loss)
    exe.run(fleet.startup_program)       # parameters broadcast from rank 0
    exe.run(fleet.main_program, feed=my_shard_of_the_batch)

Every worker runs the same program on its own part of the data; gradients are
averaged by all-reduce (see ``fleetkit.collective.data_parallel``).  The
communication group is created when first needed: at ``init_worker()``, or
when the startup program's first ``c_broadcast`` runs.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from ..collective import groups
from ..collective.api import Backend, get_backend
from ..collective.data_parallel import data_parallel_rewrite
from ..core import io as fkio
from ..core.framework import Program, Variable, default_startup_program
from ..core.optimizer import Optimizer
from ..errors import InvalidArgumentError
from .base import FleetBase
from .role_maker import RoleMakerBase

__all__ = ["CollectiveFleet", "CollectiveOptimizer", "DistributedStrategy"]

log = logging.getLogger(__name__)

_BACKENDS = ("tcp", "mpi", "nccl")


class DistributedStrategy:
    """Knobs of collective training (fluid 1.5 names where fluid had them).

    Attributes:
        fuse_all_reduce_ops: pack gradients into buckets, one all-reduce per bucket.
        fuse_grad_size_in_MB: bucket size in MiB (<= 0: one bucket for everything).
        backend: "tcp" (CPU sockets), "mpi" (under mpiexec) or "nccl" (GPUs).
        timeout: seconds per collective (None: ``FLEETKIT_COLLECTIVE_TIMEOUT`` or 300).
        overlap_comm: start all-reduces during backward (async) instead of blocking.
        broadcast_params: broadcast parameters from rank 0 in the startup program.
        ring_id: the communication group the inserted ops use.
        use_local_sgd: not supported (raises at ``distributed_optimizer``).
        check_nan_inf: the rewritten program stops at the first op that writes NaN/inf (or fed
            data holding them) with a ``NanInfError`` naming it, as ``FLAGS_check_nan_inf=1``.
    """

    def __init__(self) -> None:
        self.fuse_all_reduce_ops: bool = False
        self.fuse_grad_size_in_MB: float = 32.0
        self.backend: str = "tcp"
        self.timeout: float | None = None
        self.overlap_comm: bool = True
        self.broadcast_params: bool = True
        self.ring_id: int = 0
        self.use_local_sgd: bool = False
        self.check_nan_inf: bool = False

    def check(self) -> None:
        """Raise InvalidArgumentError naming every bad field."""
        problems = []
        if self.backend not in _BACKENDS:
            problems.append(f"backend={self.backend!r} (expected one of {', '.join(_BACKENDS)})")
        if not isinstance(self.fuse_grad_size_in_MB, (int, float)):
            problems.append(f"fuse_grad_size_in_MB={self.fuse_grad_size_in_MB!r} is not a number")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            problems.append(f"timeout={self.timeout!r} must be > 0 seconds or None")
        if self.use_local_sgd:
            problems.append("use_local_sgd=True is not supported (only gradient all-reduce)")
        if not isinstance(self.check_nan_inf, bool):
            problems.append(f"check_nan_inf={self.check_nan_inf!r} must be True or False")
        if not isinstance(self.ring_id, int) or self.ring_id < 0:
            problems.append(f"ring_id={self.ring_id!r} must be an int >= 0")
        if problems:
            raise InvalidArgumentError("DistributedStrategy: " + "; ".join(problems))

    def __repr__(self) -> str:
        return f"DistributedStrategy({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class CollectiveFleet(FleetBase):
    """Fleet for collective mode: every role is a worker; no parameter servers."""

    def __init__(self) -> None:
        super().__init__()
        self._strategy = DistributedStrategy()
        self._main_program: Program | None = None
        self._startup_program: Program | None = None

    def init(self, role_maker: RoleMakerBase | None = None) -> None:
        """Read the role; the group is created later (``init_worker`` or first collective op)."""
        super().init(role_maker)
        if not self._rm().is_collective():
            raise InvalidArgumentError("CollectiveFleet needs a collective role maker "
                                       "(PaddleCloudRoleMaker(is_collective=True) or UserDefinedCollectiveRoleMaker)")
        self._register_factory()

    # ---- the group -------------------------------------------------------------------------

    def _register_factory(self) -> None:
        groups.set_group_factory(self._make_group, self._strategy.ring_id)

    def _make_group(self) -> Backend:
        s, rm = self._strategy, self._rm()
        if s.backend == "mpi":
            group = get_backend("mpi", timeout=s.timeout)
        elif s.backend == "nccl":
            group = get_backend("nccl", rank=rm.worker_index(), world_size=rm.worker_num(), timeout=s.timeout)
        else:
            group = get_backend("tcp", endpoints=list(rm.get_trainer_endpoints()), rank=rm.worker_index(),
                                timeout=s.timeout)
        if (group.rank, group.world_size) != (rm.worker_index(), rm.worker_num()):
            group.close()  # not kept anywhere: release its sockets and threads before failing
            raise InvalidArgumentError(
                f"{s.backend} group has rank {group.rank}/{group.world_size}, but the role maker says "
                f"worker {rm.worker_index()} of {rm.worker_num()}")
        return group

    def _group(self) -> Backend:
        group = groups.get_group(self._strategy.ring_id)
        if group.world_size != self.worker_num():
            raise InvalidArgumentError(f"ring {self._strategy.ring_id} has {group.world_size} ranks, "
                                       f"but fleet has {self.worker_num()} workers")
        return group

    # ---- fluid fleet API -------------------------------------------------------------------

    def distributed_optimizer(self, optimizer: Optimizer, strategy: DistributedStrategy | None = None
                              ) -> "CollectiveOptimizer":
        """Wrap ``optimizer``; its ``minimize`` rewrites the program for all-reduce training."""
        if not isinstance(optimizer, Optimizer):
            raise InvalidArgumentError(f"distributed_optimizer: expected a fleetkit optimizer, "
                                       f"got {type(optimizer).__name__}")
        strategy = DistributedStrategy() if strategy is None else strategy
        if not isinstance(strategy, DistributedStrategy):
            raise InvalidArgumentError(f"distributed_optimizer: strategy must be a collective_mode."
                                       f"DistributedStrategy, got {type(strategy).__name__}")
        strategy.check()
        self._strategy = strategy
        self._register_factory()
        return CollectiveOptimizer(optimizer, strategy, self)

    def init_worker(self) -> None:
        """Create the communication group now (rendezvous with the other workers)."""
        self._group()

    def stop_worker(self) -> None:
        """Wait for every worker, then close this process's group."""
        ring = self._strategy.ring_id
        if groups.is_initialized(ring):
            groups.get_group(ring).barrier()
            groups.destroy_group(ring)

    def stop(self) -> None:
        """fluid's ``fleet.stop()``: same as ``stop_worker()`` in collective mode."""
        self.stop_worker()

    def run_worker(self, main_programs: Any = None, scopes: Any = None) -> None:
        """Nothing to do: workers run ``fleet.main_program`` themselves (as in fluid 1.4)."""

    def init_server(self, *args: Any, **kwargs: Any) -> None:
        """No servers in collective mode (fluid logs a warning too)."""
        log.warning("init_server() does nothing in collective mode")

    def run_server(self) -> None:
        log.warning("run_server() does nothing in collective mode")

    def stop_server(self) -> None:
        log.warning("stop_server() does nothing in collective mode")

    @property
    def main_program(self) -> Program:
        """The program ``minimize`` rewrote."""
        if self._main_program is None:
            raise InvalidArgumentError("fleet.main_program: call distributed_optimizer(...).minimize(loss) first")
        return self._main_program

    @property
    def startup_program(self) -> Program:
        """The startup program ``minimize`` added the parameter broadcast to."""
        if self._startup_program is None:
            raise InvalidArgumentError("fleet.startup_program: call distributed_optimizer(...).minimize(loss) first")
        return self._startup_program

    def save_persistables(self, executor: Any, dirname: str, main_program: Program | None = None) -> None:
        """Save the persistables on worker 0 only (all workers hold the same values)."""
        if self.is_first_worker():
            fkio.save_persistables(executor, dirname, main_program or self.main_program)

    def save_inference_model(self, executor: Any, dirname: str, feeded_var_names: Sequence[str],
                             target_vars: Sequence[Variable], main_program: Program | None = None,
                             export_for_deployment: bool = True) -> None:
        """Save an inference model on worker 0 only."""
        if self.is_first_worker():
            fkio.save_inference_model(dirname, feeded_var_names, target_vars, executor,
                                      main_program or self.main_program,
                                      export_for_deployment=export_for_deployment)


class CollectiveOptimizer:
    """What ``fleet.distributed_optimizer`` returns in collective mode."""

    def __init__(self, optimizer: Optimizer, strategy: DistributedStrategy, fleet: CollectiveFleet):
        self._optimizer = optimizer
        self._strategy = strategy
        self._fleet = fleet

    def backward(self, loss: Variable, startup_program: Program | None = None,
                 parameter_list: Sequence[Any] | None = None, no_grad_set: Iterable[Any] | None = None,
                 callbacks: Any = None) -> list:
        return self._optimizer.backward(loss, startup_program, parameter_list, no_grad_set, callbacks)

    def apply_gradients(self, params_grads: list) -> list:
        return self._optimizer.apply_gradients(params_grads)

    def minimize(self, loss: Variable, startup_program: Program | None = None,
                 parameter_list: Sequence[Any] | None = None,
                 no_grad_set: Iterable[Any] | None = None) -> tuple[list, list]:
        """Backward, gradient all-reduce (scaled by 1/workers), then the optimizer's updates.

        Returns ``(optimize_ops, params_grads)`` like ``Optimizer.minimize``.
        """
        s, opt = self._strategy, self._optimizer
        startup = startup_program or default_startup_program()
        params_grads = opt.backward(loss, startup, parameter_list, no_grad_set)
        hook = getattr(opt, "_data_parallel_hook", None)
        data_parallel_rewrite(
            loss, params_grads, self._fleet.worker_num(), startup_program=startup, ring_id=s.ring_id,
            fuse=s.fuse_all_reduce_ops, bucket_mb=s.fuse_grad_size_in_MB, overlap=s.overlap_comm,
            broadcast_params=s.broadcast_params,
            comm_hook=hook(self._fleet.worker_num(), s.ring_id, startup) if hook else None)
        optimize_ops = opt.apply_optimize(loss, startup, params_grads)
        if s.check_nan_inf:
            loss.block.program.meta.check_nan_inf = True
        self._fleet._main_program = loss.block.program
        self._fleet._startup_program = startup
        return optimize_ops, params_grads
