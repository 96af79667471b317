"""``ServerHandler``: the pserver's logic, free of transport (``ParameterServer`` serves it)."""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import NotFoundError

__all__ = ["ServerHandler"]


class ServerHandler(ABC):
    """The pserver's logic, free of transport.  Calls are serialized by the server, under
    the handler's own ``lock``: one lock, which the handler may also take itself."""

    @property
    def lock(self) -> threading.RLock:
        """The one lock around this handler's state (re-entrant; made on first use)."""
        return self.__dict__.setdefault("_handler_lock", threading.RLock())

    @abstractmethod
    def apply(self, grads: dict[str, Any]) -> None:
        """Apply gradients: sync mode once per round (already averaged), async per message."""

    @abstractmethod
    def get(self, name: str) -> Any:
        """The current value of a hosted variable; raise NotFoundError if unknown."""

    def apply_from(self, trainer_id: int, grads: dict[str, Any]) -> None:
        """Async mode: apply gradients sent by ``trainer_id`` (default: ``apply``)."""
        self.apply(grads)

    def get_for(self, trainer_id: int, name: str) -> Any:
        """Async mode: ``get`` on behalf of ``trainer_id`` (default: ``get``)."""
        return self.get(name)

    def prefetch(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of sparse table ``table`` as [len(ids), dim]."""
        raise NotFoundError(f"no sparse table '{table}' on this pserver")

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to resume (for checkpoints): name -> array/LoDTensor/SelectedRows."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state()`` returned."""

    def check_grad(self, name: str, value: Any) -> None:
        """Reject a gradient on arrival (NotFoundError: not hosted here;
        InvalidArgumentError/ShapeError/DTypeError: wrong shape or dtype).  Default: accept."""

    def sparse_memory(self, table: str = "") -> tuple[int, int]:
        """(touched rows, bytes) of one sparse table, or of all when ``table`` is ''."""
        return 0, 0

    def reseed(self, values: dict[str, Any]) -> None:
        """Set parameters to ``values`` (trainer 0's copy, after a restart without state)."""
        self.load_state(values)
