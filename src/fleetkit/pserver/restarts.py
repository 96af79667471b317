"""Client side: notice a restarted pserver and act on it (``RestartWatch``).

Every pserver reply carries the pserver's (incarnation, updates, resumed) (see
``liveness.Incarnation``).  A client remembers the incarnation each endpoint had on
first contact; a different one on a later reply means the pserver restarted:

- it resumed from a checkpoint (``resumed`` >= 0): the rollback is logged (which update
  it resumed from, how many of the updates this trainer had seen are lost) and training
  goes on;
- it started without state (``FRESH``): its parameters were re-initialized.  The trainer
  raises ``PServerRestartedError`` naming the endpoint, unless re-seeding is on
  (``FLEETKIT_PS_RESEED_ON_RESTART=1`` for every process, or ``ClientOptions.reseed``):
  then trainer 0 sends its last pulled copy of every parameter block it pulled from that
  pserver (``rpc.RESEED``, then ``rpc.RESEED_DONE``) and the other trainers wait for the
  pserver to report ``RESEEDED``; the loss is logged.  A value that came from the
  unseeded pserver is fetched again.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from ..errors import PServerRestartedError
from .liveness import FRESH, RESEEDED

__all__ = ["RestartWatch"]
log = logging.getLogger(__name__)

OK, REFETCH = "ok", "refetch"


class RestartWatch:
    """Incarnations seen per endpoint; ``observe`` says whether a reply can be used."""

    def __init__(self, trainer_id: int, reseed: bool, send_seed: Callable[[str, dict[str, Any]], None],
                 poll: Callable[[str], tuple[int, int, int]], wait_s: float = 120.0) -> None:
        self.trainer_id, self.reseed = trainer_id, bool(reseed)
        self._send_seed, self._poll, self._wait_s = send_seed, poll, wait_s
        self._lock = threading.RLock()
        self._known: dict[str, list[int]] = {}     # endpoint -> [incarnation, last updates seen]
        self._fresh: dict[str, int] = {}           # endpoint -> incarnation that restarted empty
        self._lost: dict[str, PServerRestartedError] = {}   # no re-seeding: raised on every reply
        self._pulled: dict[str, dict[str, np.ndarray]] = {}   # trainer 0: last pulled values
        self.events: list[dict[str, Any]] = []     #: restarts noticed (tests, logs)

    def lost_endpoints(self) -> list[str]:
        """Pservers that restarted without their parameters (every reply from them raises)."""
        with self._lock:
            return list(self._lost)

    @property
    def keeps_copies(self) -> bool:
        """Trainer 0 with re-seeding on keeps a copy of what it pulls."""
        return self.reseed and self.trainer_id == 0

    def pulled(self, endpoint: str, name: str, value: Any) -> None:
        if self.keeps_copies and isinstance(value, np.ndarray):
            with self._lock:
                self._pulled.setdefault(endpoint, {})[name] = np.array(value, copy=True)

    def observe(self, endpoint: str, info: tuple[int, int, int] | None) -> str:
        """OK: the reply is usable; REFETCH: it came from an unseeded pserver that has now
        been re-seeded, fetch it again.  Raises PServerRestartedError (no re-seeding)."""
        if info is None:
            return OK
        inc, updates, resumed = info
        with self._lock:
            known = self._known.get(endpoint)
            if known is None:
                self._known[endpoint] = [inc, updates]
                return OK
            if known[0] == inc:
                known[1] = max(known[1], updates)
                if self._fresh.get(endpoint) != inc or resumed != FRESH:
                    return OK
                if endpoint in self._lost:
                    raise self._lost[endpoint]
            else:
                self._restarted(endpoint, known, inc, updates, resumed)
                if resumed != FRESH:
                    return OK
            return self._reseed(endpoint, inc)

    def _restarted(self, endpoint: str, known: list[int], inc: int, updates: int, resumed: int) -> None:
        old, last = known
        self._known[endpoint] = [inc, updates]
        event = {"endpoint": endpoint, "old": old, "new": inc, "last_seen": last, "resumed": resumed}
        self.events.append(event)
        if resumed >= 0:
            log.warning("pserver %s restarted (incarnation %x -> %x) and resumed from its checkpoint at update "
                        "%d; this trainer had seen update %d: %d update(s) rolled back", endpoint, old, inc,
                        resumed, last, max(last - resumed, 0))
            return
        if resumed == RESEEDED:
            log.warning("pserver %s restarted without a checkpoint (incarnation %x -> %x) and was re-seeded "
                        "from trainer 0's last pulled copy; the updates since then and the optimizer state "
                        "are lost (this trainer had seen update %d)", endpoint, old, inc, last)
            return
        self._fresh[endpoint] = inc
        if not self.reseed:
            self._lost[endpoint] = PServerRestartedError(
                f"pserver {endpoint} restarted without a checkpoint (incarnation {old:x} -> {inc:x}): the "
                f"parameters it held were lost (it serves freshly initialized ones; this trainer had seen "
                f"update {last}).  Give the pservers a checkpoint_dir (fleet.init_server(checkpoint_dir=...)) "
                f"or set FLEETKIT_PS_RESEED_ON_RESTART=1 to re-seed it from trainer 0's copy",
                endpoint=endpoint, code="DATA_LOSS")
            log.error("%s", self._lost[endpoint])
            raise self._lost[endpoint]

    def _reseed(self, endpoint: str, inc: int) -> str:
        if self.trainer_id == 0:
            values = self._pulled.get(endpoint, {})
            log.warning("pserver %s restarted without a checkpoint: re-seeding it with trainer 0's last pulled "
                        "copy of %d block(s) (%s); updates since that pull, its optimizer state and sparse "
                        "table rows are lost", endpoint, len(values), ", ".join(sorted(values)))
            self._send_seed(endpoint, values)
        else:
            self._wait_reseeded(endpoint, inc)
        self._fresh.pop(endpoint, None)
        return REFETCH

    def _wait_reseeded(self, endpoint: str, inc: int) -> None:
        give_up = time.monotonic() + self._wait_s
        while time.monotonic() < give_up:
            now_inc, _, resumed = self._poll(endpoint)
            if now_inc != inc or resumed != FRESH:
                return
            time.sleep(0.1)
        raise PServerRestartedError(
            f"pserver {endpoint} restarted without a checkpoint and trainer 0 did not re-seed it within "
            f"{self._wait_s:g} s: its parameters are lost", endpoint=endpoint, code="DATA_LOSS")
