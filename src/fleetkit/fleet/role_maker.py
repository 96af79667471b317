"""Role makers: who is a worker (trainer) and who is a server, and where everyone is."""
from __future__ import annotations

import socket
from enum import Enum
from typing import Sequence

from .. import env as envmod
from ..errors import ConfigError, InvalidArgumentError


class Role(Enum):
    WORKER = 1
    SERVER = 2


class RoleMakerBase:
    """Answers the role questions fleet asks; subclasses fill the fields in ``generate_role``."""

    def __init__(self) -> None:
        self._role: Role | None = None
        self._current_id = 0
        self._worker_endpoints: list[str] = []
        self._server_endpoints: list[str] = []
        self._worker_num = 0
        self._role_is_generated = False

    def generate_role(self) -> None:
        self._role_is_generated = True

    def _check(self) -> None:
        if not self._role_is_generated:
            self.generate_role()

    def is_collective(self) -> bool:
        """True for all-reduce jobs (every process a worker); picks fleet's collective mode."""
        return bool(getattr(self, "_is_collective", False))

    def is_worker(self) -> bool:
        self._check()
        return self._role == Role.WORKER

    def is_server(self) -> bool:
        self._check()
        return self._role == Role.SERVER

    def is_first_worker(self) -> bool:
        return self.is_worker() and self._current_id == 0

    def worker_index(self) -> int:
        self._check()
        if self._role != Role.WORKER:
            raise InvalidArgumentError("worker_index() called on a server")
        return self._current_id

    def server_index(self) -> int:
        self._check()
        if self._role != Role.SERVER:
            raise InvalidArgumentError("server_index() called on a worker")
        return self._current_id

    def worker_num(self) -> int:
        self._check()
        return self._worker_num or len(self._worker_endpoints)

    def server_num(self) -> int:
        self._check()
        return len(self._server_endpoints)

    def get_trainer_endpoints(self) -> list[str]:
        self._check()
        return list(self._worker_endpoints)

    def get_pserver_endpoints(self) -> list[str]:
        self._check()
        return list(self._server_endpoints)


class PaddleCloudRoleMaker(RoleMakerBase):
    """Roles from the environment (set by ``fleetkit launch`` or the Kubernetes operator).

    Every missing or malformed variable is reported at once (ConfigError).
    """

    def __init__(self, is_collective: bool = False) -> None:
        super().__init__()
        self._is_collective = is_collective

    def generate_role(self) -> None:
        if self._role_is_generated:
            return
        info = envmod.load_role(is_collective=self._is_collective)
        self.role_info = info
        if info.role == envmod.ROLE_PSERVER:
            self._role, self._current_id = Role.SERVER, info.server_index
        else:
            self._role, self._current_id = Role.WORKER, info.trainer_id
        self._server_endpoints = list(info.pserver_endpoints)
        self._worker_endpoints = list(info.trainer_endpoints)
        self._worker_num = info.trainers_num
        self._current_endpoint = info.current_endpoint
        self._role_is_generated = True


class UserDefinedRoleMaker(RoleMakerBase):
    """Roles given explicitly (fluid 1.4 signature; ``worker_num`` as in 1.5 is accepted too)."""

    def __init__(self, current_id: int = 0, current_endpoint: str | None = None, role: Role = Role.WORKER,
                 worker_endpoints: Sequence[str] | None = None, server_endpoints: Sequence[str] | None = None,
                 worker_num: int = 0) -> None:
        super().__init__()
        if isinstance(current_endpoint, Role):
            # fluid 1.5 positional order (current_id, role, worker_num, server_endpoints)
            if worker_num or server_endpoints is not None:
                raise InvalidArgumentError("UserDefinedRoleMaker: mixed fluid 1.4 and 1.5 argument orders")
            current_endpoint, role, worker_num, server_endpoints, worker_endpoints = (
                None, current_endpoint, 0 if isinstance(role, Role) else role, worker_endpoints, None)
            if not isinstance(worker_num, int):
                raise InvalidArgumentError(f"UserDefinedRoleMaker: worker_num must be an int, got {worker_num!r}")
        if not isinstance(role, Role):
            raise InvalidArgumentError(f"UserDefinedRoleMaker: role must be Role.WORKER or Role.SERVER, got {role!r}")
        if not isinstance(current_id, int) or current_id < 0:
            raise InvalidArgumentError(f"UserDefinedRoleMaker: current_id must be an int >= 0, got {current_id!r}")
        self._role, self._current_id = role, current_id
        self._current_endpoint = current_endpoint or ""
        self._worker_endpoints = list(worker_endpoints or [])
        self._server_endpoints = list(server_endpoints or [])
        self._worker_num = worker_num or len(self._worker_endpoints)
        if role == Role.SERVER and self._server_endpoints and current_id >= len(self._server_endpoints):
            raise InvalidArgumentError(
                f"UserDefinedRoleMaker: server current_id {current_id} >= {len(self._server_endpoints)} servers")
        if role == Role.WORKER and self._worker_num and current_id >= self._worker_num:
            raise InvalidArgumentError(
                f"UserDefinedRoleMaker: worker current_id {current_id} >= worker_num {self._worker_num}")
        self._role_is_generated = True


class UserDefinedCollectiveRoleMaker(RoleMakerBase):
    def __init__(self, current_id: int = 0, worker_endpoints: Sequence[str] | None = None) -> None:
        super().__init__()
        self._worker_endpoints = list(worker_endpoints or [])
        if not self._worker_endpoints or not 0 <= current_id < len(self._worker_endpoints):
            raise InvalidArgumentError(
                f"UserDefinedCollectiveRoleMaker: current_id {current_id} outside {self._worker_endpoints}")
        self._role, self._current_id = Role.WORKER, current_id
        self._current_endpoint = self._worker_endpoints[current_id]
        self._worker_num = len(self._worker_endpoints)
        self._is_collective = True
        self._role_is_generated = True


class MPISymetricRoleMaker(RoleMakerBase):
    """Two processes per node under mpiexec: even ranks are servers, odd ranks workers.

    Endpoints are ``ip:port``, gathered from every rank: the ip of the rank's host, and
    ``PADDLE_PORT + rank`` when ``PADDLE_PORT`` is set (ranks on one host never collide),
    else a port that was free on that host when the role was generated.
    """

    def __init__(self) -> None:
        super().__init__()
        self._comm = None

    def generate_role(self) -> None:
        if self._role_is_generated:
            return
        try:
            from mpi4py import MPI  # noqa: PLC0415  (optional dependency)
        except ImportError as e:
            raise ConfigError("MPISymetricRoleMaker needs mpi4py (pip install 'fleetkit[mpi]')") from e
        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        if size % 2:
            raise ConfigError(f"MPISymetricRoleMaker needs an even number of processes, got {size}")
        ip = socket.gethostbyname(socket.gethostname())
        endpoints = comm.allgather(f"{ip}:{_mpi_rank_port(rank)}")
        self._comm = comm
        self._role = Role.SERVER if rank % 2 == 0 else Role.WORKER
        self._current_id = rank // 2
        self._current_endpoint = endpoints[rank]
        self._server_endpoints = list(endpoints[::2])
        self._worker_endpoints = list(endpoints[1::2])
        self._node_comm = comm.Split(rank % 2)
        self._role_is_generated = True

    def _barrier_worker(self) -> None:
        if self.is_worker():
            self._node_comm.barrier()

    def _barrier_server(self) -> None:
        if self.is_server():
            self._node_comm.barrier()


def _mpi_rank_port(rank: int) -> int:
    base = envmod.paddle_port()
    if base:
        if not base.isdigit() or not 0 < int(base) + rank < 65536:
            raise ConfigError(f"{envmod.PADDLE_PORT}={base!r}: MPISymetricRoleMaker needs a base port such that "
                              f"PADDLE_PORT + rank is a valid port (rank {rank})")
        return int(base) + rank
    with socket.socket() as probe:  # free now; the pserver binds it moments later
        probe.bind(("", 0))
        return int(probe.getsockname()[1])
