"""``FLEETKIT_LOG_LEVEL``: show fleetkit's own log records without the script configuring logging.

``fleetkit launch`` sets it to INFO for its children, so a pserver's "resumed from
checkpoint" or a trainer's rollback warning reaches the job's log files even when
the training script never calls ``logging.basicConfig``.  A script that does
configure logging keeps full control: the handler stays quiet once the root
logger has handlers of its own.
"""
from __future__ import annotations

import logging
import sys

from .env import FLEETKIT_LOG_LEVEL, log_level

LOG_LEVEL_ENV = FLEETKIT_LOG_LEVEL


class _UnlessConfigured(logging.StreamHandler):
    """Writes to stderr only while the application has not set up the root logger."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def configure_from_env() -> None:
    """Attach one stderr handler to the ``fleetkit`` logger at $FLEETKIT_LOG_LEVEL (if set)."""
    raw = log_level()
    if not raw:
        return
    level = logging.getLevelName(raw)
    if not isinstance(level, int):
        print(f"fleetkit: {LOG_LEVEL_ENV}={raw!r} is not a logging level (DEBUG, INFO, WARNING, ...); "
              "ignored", file=sys.stderr)
        return
    logger = logging.getLogger("fleetkit")
    if any(isinstance(h, _UnlessConfigured) for h in logger.handlers):
        return
    handler = _UnlessConfigured(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
