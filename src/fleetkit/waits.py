"""Long waits say where they are (``WaitNote``).

A process that blocks on another one (a pserver not up yet, a collective peer that has
not entered the same operation, a trainer still loading its data before a global
shuffle) logs a WARNING once it has waited ``NOTE_AFTER_S`` seconds and again every
``NOTE_EVERY_S`` seconds, so that a user looking at a silent terminal learns what is
awaited and for how much longer, instead of guessing whether the job hangs.
"""
from __future__ import annotations

import logging
import time

__all__ = ["NOTE_AFTER_S", "NOTE_EVERY_S", "WaitNote"]

NOTE_AFTER_S = 5.0
NOTE_EVERY_S = 15.0


class WaitNote:
    """The schedule of one wait's notes: ``say`` logs only when a note is due."""

    def __init__(self, log: logging.Logger, after: float | None = None, every: float | None = None) -> None:
        # the module's constants are read here, not bound as defaults: a test may lower them
        self._log, self._every = log, float(NOTE_EVERY_S if every is None else every)
        self.started = time.monotonic()
        self._due = self.started + float(NOTE_AFTER_S if after is None else after)

    def waited(self) -> float:
        """Seconds since the wait began."""
        return time.monotonic() - self.started

    def until_due(self) -> float:
        """Seconds until the next note is due (0 when it is due now)."""
        return max(0.0, self._due - time.monotonic())

    def say(self, message: str, *args: object) -> bool:
        """Log ``message % args`` plus the time waited if a note is due; True if it was logged."""
        now = time.monotonic()
        if now < self._due:
            return False
        self._log.warning(message + " (waited %.0f s)", *args, now - self.started)
        self._due = now + self._every
        return True
