"""``DistributeTranspiler`` in ``nccl2`` mode: fluid 1.4's multi-process data parallelism.

    config = fluid.DistributeTranspilerConfig(); config.mode = "nccl2"
    t = fluid.DistributeTranspiler(config=config)
    t.transpile(trainer_id, trainers="ip:port,ip:port", current_endpoint="ip:port",
                startup_program=startup, program=main)
    exe = fluid.ParallelExecutor(use_cuda, loss_name=loss.name, main_program=main,
                                 num_trainers=2, trainer_id=trainer_id)

fluid 1.4 only added a ``gen_nccl_id`` op to the startup program here and let
ParallelExecutor all-reduce the gradients.  fleetkit runs one place per process,
so the program itself is rewritten, by the same rewrite fleet's collective mode
uses (``collective.data_parallel.data_parallel_rewrite``): the loss gradient is
scaled by 1/trainers, every trainable parameter's gradient is all-reduced before
the optimizer ops, and the startup program broadcasts the parameters from
trainer 0.  When the main program given (or the default one) has no optimizer ops,
as in models v1.4's dist_train, which passes only ``startup_program``, every variable
the startup initializes is broadcast and ParallelExecutor / CompiledProgram rewrite
the program they are given.  The program was already minimized, so the (parameter, gradient)
pairs are read back from it: each parameter an optimizer op updates, with its
``<param>@GRAD`` (the raw gradient, before regularization or clipping read it).

The group (ring 0) is created when the first collective op runs, from the
transpile arguments: trainer ``r`` is rank ``r`` and listens on ``trainers[r]``;
the backend is ``FLEETKIT_COLLECTIVE_BACKEND`` (``fleetkit launch --backend``:
tcp, mpi or nccl), tcp when unset.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..collective import groups
from ..collective.api import Backend, get_backend
from ..collective.data_parallel import broadcast_parameters, data_parallel_rewrite
from ..core.compiler import register_trainers_rewrite
from ..core.framework import ROLE_LOSS, ROLE_OPTIMIZE, Parameter, Program, Variable, grad_var_name
from ..env import FLEETKIT_COLLECTIVE_BACKEND, collective_backend, collective_timeout_s
from ..errors import InvalidArgumentError

__all__ = ["NCCL2_MODES", "parse_endpoints", "parse_trainer_endpoints", "rewrite_main_program", "transpile_nccl2"]

#: the modes fluid 1.4 had for the collective transpiler ("collective" came with 1.5)
NCCL2_MODES = ("nccl2",)
_RING = 0
_BACKENDS = ("tcp", "mpi", "nccl")


def parse_trainer_endpoints(trainers: str | Sequence[str]) -> list[str]:
    """``"ip:port,ip:port"`` (or a list of them) -> the endpoints, checked."""
    if isinstance(trainers, (bool, int)):
        raise InvalidArgumentError(
            f"transpile: in nccl2 mode trainers is the trainers' endpoints 'ip:port,ip:port,...' "
            f"(PADDLE_TRAINER_ENDPOINTS), got {trainers!r}")
    return parse_endpoints(trainers, "trainer", f"nccl2 mode needs trainers='ip:port,...', got {trainers!r}",
                           f" (trainers={trainers!r})")


def parse_endpoints(value: str | Sequence[str], role: str, if_empty: str, context: str = "") -> list[str]:
    """``"ip:port,ip:port"`` (or a list) -> the endpoints, each 'ip:port' and none twice; the
    transpiler's pserver list and nccl2's trainer list.  ``if_empty``: the message when none."""
    eps = [e.strip() for e in (value.split(",") if isinstance(value, str) else value) if e.strip()]
    if not eps:
        raise InvalidArgumentError(f"transpile: {if_empty}")
    for e in eps:
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgumentError(f"transpile: {role} endpoint {e!r} is not 'ip:port'{context}")
    if len(set(eps)) != len(eps):
        raise InvalidArgumentError(f"transpile: {role} endpoints repeat: {eps}")
    return eps


def transpile_nccl2(trainer_id: int, trainers: str | Sequence[str], current_endpoint: str,
                    program: Program, startup_program: Program) -> list[str]:
    """Rewrite ``program`` / ``startup_program`` in place for all-reduce training (module doc).

    Returns the trainer endpoints.  Also registers this process's group factory.
    """
    eps = parse_trainer_endpoints(trainers)
    if isinstance(trainer_id, bool) or not isinstance(trainer_id, int) or not 0 <= trainer_id < len(eps):
        raise InvalidArgumentError(
            f"transpile: trainer_id must be in [0, {len(eps)}) for trainers={','.join(eps)}, got {trainer_id!r}")
    if current_endpoint not in eps:
        raise InvalidArgumentError(
            f"transpile: current_endpoint {current_endpoint!r} is not one of trainers {eps} "
            f"(PADDLE_CURRENT_ENDPOINT must be listed in PADDLE_TRAINER_ENDPOINTS)")
    if eps[trainer_id] != current_endpoint:
        raise InvalidArgumentError(
            f"transpile: trainer_id {trainer_id} is trainers[{trainer_id}] = {eps[trainer_id]!r}, but "
            f"current_endpoint is {current_endpoint!r} (trainers[{eps.index(current_endpoint)}])")
    if program.meta.nccl2_trainers:
        raise InvalidArgumentError("transpile: this program was already transpiled in nccl2 mode")
    if len(eps) > 1:
        groups.set_group_factory(lambda: _make_group(eps, trainer_id), _RING)
    if _params_grads(program):
        rewrite_main_program(program, len(eps), trainer_id, startup_program)
    else:
        # models v1.4 dist_train passes only startup_program (the default main program is
        # empty) and hands its own train program to ParallelExecutor, which did the
        # all-reduce in fluid: every variable the startup initializes is broadcast now,
        # the program is rewritten when ParallelExecutor / CompiledProgram is built
        if len(eps) > 1:
            broadcast_parameters(startup_program, _initialized(startup_program), _RING)
        register_trainers_rewrite(len(eps), trainer_id,
                                  lambda prog: rewrite_main_program(prog, len(eps), trainer_id, None))
    return eps


def rewrite_main_program(program: Program, nranks: int, trainer_id: int, startup_program: Program | None) -> None:
    """All-reduce ``program``'s gradients over ``nranks`` (broadcast from ``startup_program``
    when given) and mark it; a program without optimizer ops (a test program) is only marked."""
    params_grads = _params_grads(program)
    if params_grads:
        data_parallel_rewrite(_find_loss(program), params_grads, nranks, startup_program=startup_program,
                              ring_id=_RING, broadcast_params=startup_program is not None)
    program.meta.nccl2_trainers = nranks
    program.meta.nccl2_trainer_id = trainer_id


def _initialized(startup_program: Program) -> list[str]:
    block = startup_program.global_block()
    return [n for op in block.ops for n in op.output_arg_names
            if block._find_var_recursive(n) is not None and block._find_var_recursive(n).persistable]


def _find_loss(program: Program) -> Variable:
    block = program.global_block()
    written = {n for op in block.ops for n in op.output_arg_names}
    for op in block.ops:
        if op.role == ROLE_LOSS:
            for name in op.output_arg_names:
                if grad_var_name(name) in written:
                    return block.var(name)
    raise InvalidArgumentError("transpile: nccl2 mode needs a minimized program (no loss with a backward "
                               "pass found): call optimizer.minimize(loss) before transpile()")


def _params_grads(program: Program) -> list[tuple[Parameter, Variable]]:
    """(parameter, raw gradient) of every parameter an optimizer op updates, in op order."""
    block = program.global_block()
    written = {n for op in block.ops if op.role != ROLE_OPTIMIZE for n in op.output_arg_names}
    pairs, seen = [], set()
    for op in block.ops:
        if op.role != ROLE_OPTIMIZE:
            continue
        for name in op.inputs.get("Param", []):
            grad = grad_var_name(name)
            if name in seen or grad not in written:
                continue  # e.g. weight_decay and the update both read it
            seen.add(name)
            pairs.append((block.var(name), block.var(grad)))
    return pairs


def _make_group(eps: list[str], rank: int) -> Backend:
    backend = collective_backend() or "tcp"
    if backend not in _BACKENDS:
        raise InvalidArgumentError(f"{FLEETKIT_COLLECTIVE_BACKEND}={backend!r}: expected one of "
                                   f"{', '.join(_BACKENDS)}")
    timeout = collective_timeout_s()
    if backend == "mpi":
        group = get_backend("mpi", timeout=timeout)
    elif backend == "nccl":
        group = get_backend("nccl", rank=rank, world_size=len(eps), timeout=timeout)
    else:
        group = get_backend("tcp", endpoints=eps, rank=rank, timeout=timeout)
    if (group.rank, group.world_size) != (rank, len(eps)):
        group.close()
        raise InvalidArgumentError(f"{backend} group has rank {group.rank}/{group.world_size}, but transpile "
                                   f"said trainer {rank} of {len(eps)}")
    return group
