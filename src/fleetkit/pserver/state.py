"""Checkpoints, CheckpointNotify, re-seeding and the non-finite check of a ParameterServer.

Checkpoint files hold the handler's ``state()`` plus the pserver's update count
(``checkpoint.UPDATES_KEY``), so a pserver resumed from one knows which update it rolled
back to.  CheckpointNotify comes over the network, so the paths it may touch come only
from this pserver's configuration: a request naming no directory uses ``checkpoint_dir``;
a named one must lie inside ``checkpoint_dir``, ``ServerOptions.notify_dirs`` or
``FLEETKIT_PS_NOTIFY_DIRS``; LOAD of a named file needs ``ServerOptions.notify_load``.
Bad requests get INVALID_ARGUMENT with the reason.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

import numpy as np

from ..env import FLAGS_CHECK_NAN_INF, FLEETKIT_PS_RESEED_ON_RESTART, ps_notify_dirs
from ..errors import CheckpointError, InvalidArgumentError, PServerError
from . import checkpoint, codec, rpc
from .liveness import RESEEDED

__all__ = ["StateMixin", "check_finite"]
log = logging.getLogger("fleetkit.pserver.server")


class StateMixin:
    """The state-handling methods of ``ParameterServer`` (which provides the attributes)."""

    endpoint: str
    options: Any
    handler: Any
    incarnation: Any
    _hlock: threading.RLock
    _stop_flag: threading.Event
    _reseed_on: bool

    def save_checkpoint(self, path: str | None = None) -> str:
        """Write ``handler.state()`` atomically (to ``path``, or a new numbered file in
        ``checkpoint_dir``); returns the file written."""
        with self._hlock:
            state = dict(self.handler.state())
            state[checkpoint.UPDATES_KEY] = np.array([self.incarnation.updates], np.int64)
            if path is not None:
                return checkpoint.save(path, state)
            if not self.options.checkpoint_dir:
                raise InvalidArgumentError(f"pserver {self.endpoint}: no checkpoint_dir configured")
            return checkpoint.save_numbered(self.options.checkpoint_dir, state, self.options.checkpoint_keep)

    def _checkpoint_loop(self) -> None:
        every = float(self.options.checkpoint_every_s or 0)
        while not self._stop_flag.wait(every):
            try:
                self.save_checkpoint()
            except Exception:  # noqa: BLE001 - keep serving; the next period retries
                log.exception("pserver %s: periodic checkpoint failed", self.endpoint)

    def shard_file(self, dirname: str) -> str:
        """This pserver's file under ``dirname`` for CheckpointNotify."""
        idx = self.options.server_index
        tag = str(idx) if idx is not None else re.sub(r"[^0-9A-Za-z]+", "_", self.endpoint)
        return os.path.join(dirname, f"pserver_{tag}.fkckpt")

    def _load_state(self, state: dict[str, Any], resumed: bool = False) -> None:
        meta = state.pop(checkpoint.UPDATES_KEY, None)
        with self._hlock:
            self.handler.load_state(state)
            if meta is not None:
                self.incarnation.updates = int(np.asarray(meta).reshape(-1)[0])
            if resumed:
                self.incarnation.resumed = self.incarnation.updates

    def _notify(self, env: codec.Envelope) -> None:
        """CheckpointNotify: SAVE / LOAD this pserver's state.  A request naming no directory
        uses checkpoint_dir; a named one must lie inside the configured directories, and
        LOAD of a named one needs ``notify_load`` (a LOAD rolls live parameters back)."""
        h, o = env.header, self.options
        if h.varname not in (rpc.SAVE_CHECKPOINT, rpc.LOAD_CHECKPOINT):
            raise InvalidArgumentError(f"unknown checkpoint request '{h.varname}' "
                                       f"(use {rpc.SAVE_CHECKPOINT} or {rpc.LOAD_CHECKPOINT})")
        load = h.varname == rpc.LOAD_CHECKPOINT
        try:
            if not h.out_varname:
                if not load:
                    self.save_checkpoint()
                    return None
                state = checkpoint.load_latest(o.checkpoint_dir) if o.checkpoint_dir else None
                if state is None:
                    raise InvalidArgumentError(f"no checkpoint to load in checkpoint_dir {o.checkpoint_dir!r}")
            else:
                if load and not o.notify_load:
                    raise InvalidArgumentError("CheckpointNotify LOAD of a named directory is disabled on this "
                                               "pserver (ServerOptions.notify_load)")
                path = checkpoint.notify_path(self._notify_roots(), self.shard_file(h.out_varname))
                if not load:
                    self.save_checkpoint(path)
                    return None
                state = checkpoint.load(path)
        except CheckpointError as e:
            raise InvalidArgumentError(str(e)) from None
        self._load_state(state)
        return None

    def _notify_roots(self) -> list[str]:
        o = self.options
        return [d for d in (o.checkpoint_dir, *o.notify_dirs, *ps_notify_dirs()) if d]

    def _reseed(self, trainer: int, name: str, value: Any) -> None:
        """Trainer 0 re-seeds a pserver that started without state (see ``restarts.py``)."""
        if not self._reseed_on:
            raise PServerError(f"re-seeding is off on this pserver (set {FLEETKIT_PS_RESEED_ON_RESTART}=1 "
                                f"for every process of the job)")
        if trainer != 0 or self.incarnation.resumed >= 0:
            raise PServerError(f"only trainer 0 may re-seed, and only a pserver that started without "
                                f"state (trainer {trainer}, resumed at update {self.incarnation.resumed})")
        with self._hlock:
            if name == rpc.RESEED_DONE:
                self.incarnation.resumed = RESEEDED
                log.warning("pserver %s: re-seeded from trainer 0's last pulled copy; updates since its "
                            "pull, optimizer state and sparse table rows were lost", self.endpoint)
                return None
            self.handler.reseed({name: np.array(getattr(value, "values", value), copy=True)})
        return None


def check_finite(name: str, trainer: int, value: Any) -> None:
    """FLAGS_check_nan_inf: refuse a gradient holding NaN or inf (it would poison the parameters)."""
    arr = np.asarray(getattr(value, "values", value))
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise InvalidArgumentError(f"gradient '{name}' of trainer {trainer} holds {bad} non-finite value(s) "
                                   f"(NaN/inf) of {arr.size}; refused ({FLAGS_CHECK_NAN_INF} is on)")


