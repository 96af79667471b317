"""Fleet base: role queries delegated to a role maker, and file splitting."""
from __future__ import annotations

from typing import Sequence

from ..collective.api import Backend, get_backend
from ..errors import InvalidArgumentError
from .role_maker import RoleMakerBase


class FleetBase:
    """What every fleet mode shares (fluid 1.4 ``Fleet`` query methods)."""

    def __init__(self) -> None:
        self._role_maker: RoleMakerBase | None = None

    def _rm(self) -> RoleMakerBase:
        if self._role_maker is None:
            raise InvalidArgumentError("fleet.init(role_maker) must be called first")
        return self._role_maker

    def init(self, role_maker: RoleMakerBase | None = None) -> None:
        if role_maker is None:
            from .role_maker import PaddleCloudRoleMaker  # noqa: PLC0415
            role_maker = PaddleCloudRoleMaker()
        if not isinstance(role_maker, RoleMakerBase):
            raise InvalidArgumentError(f"fleet.init: role_maker must be a RoleMakerBase, got {type(role_maker).__name__}")
        role_maker.generate_role()
        self._role_maker = role_maker

    def is_first_worker(self) -> bool:
        return self._rm().is_first_worker()

    def worker_index(self) -> int:
        return self._rm().worker_index()

    def worker_num(self) -> int:
        return self._rm().worker_num()

    def is_worker(self) -> bool:
        return self._rm().is_worker()

    def is_server(self) -> bool:
        return self._rm().is_server()

    def server_num(self) -> int:
        return self._rm().server_num()

    def server_index(self) -> int:
        return self._rm().server_index()

    def worker_endpoints(self, to_string: bool = False) -> list[str] | str:
        eps = self._rm().get_trainer_endpoints()
        return ",".join(eps) if to_string else eps

    def server_endpoints(self, to_string: bool = False) -> list[str] | str:
        eps = self._rm().get_pserver_endpoints()
        return ",".join(eps) if to_string else eps

    def split_files(self, files: Sequence[str]) -> list[str]:
        return split_files(files, self.worker_index(), self.worker_num())

    def data_exchange_backend(self, timeout: float) -> Backend:
        """A collective backend over the workers' endpoints, for the dataset's size queries
        and global shuffle (fleetkit: fluid 1.4's pslib had its own channel for that).
        The dataset is handed this backend; it never picks a transport itself."""
        endpoints = list(self.worker_endpoints())
        world = int(self.worker_num())
        if len(endpoints) != world:
            raise InvalidArgumentError(
                f"global_shuffle: fleet has {world} workers but {len(endpoints)} worker endpoints {endpoints}: "
                f"each trainer needs an endpoint to exchange data (parameter-server jobs: set "
                f"PADDLE_TRAINER_ENDPOINTS for the trainers, or give the role maker worker_endpoints)")
        return get_backend("tcp", rank=int(self.worker_index()), endpoints=endpoints, timeout=timeout,
                           prefix="fleetkit/shuffle/")


def split_files(files: Sequence[str], index: int, num: int) -> list[str]:
    """Contiguous split: worker i gets len//n files, plus one if i < len % n, in order."""
    files = list(files)
    if num > len(files):
        raise InvalidArgumentError(f"split_files: {num} workers but only {len(files)} files: {files}")
    base, extra = divmod(len(files), num)
    start = index * base + min(index, extra)
    return files[start:start + base + (1 if index < extra else 0)]
