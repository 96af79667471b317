"""Exception hierarchy.

One root, ``FleetkitError``.  Every error also derives from the closest builtin
(``ValueError``, ``KeyError``, ``TimeoutError``...) so ``except ValueError`` in
user code keeps working.  ``RetryableError`` marks failures worth retrying
(peer unavailable, deadline); everything else is permanent.
"""
from __future__ import annotations


class FleetkitError(Exception):
    """Root of every error raised by fleetkit."""


class RetryableError(FleetkitError):
    """A transient failure: the same call may succeed later."""


class PermanentError(FleetkitError):
    """A failure that retrying cannot fix (bad input, bad config)."""


class InvalidArgumentError(PermanentError, ValueError):
    """A caller passed a value that cannot be used; the message names it."""


class ShapeError(InvalidArgumentError):
    """Shapes of inputs are incompatible; the message lists them."""


class DTypeError(InvalidArgumentError, TypeError):
    """A tensor has the wrong element type."""


class NotFoundError(PermanentError, KeyError):
    """A named thing (variable, op type, file) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OpError(PermanentError, RuntimeError):
    """An operator failed while running; names the op and its variables."""


class ConfigError(PermanentError, ValueError):
    """Configuration (environment, flags) is missing or invalid."""


class GPUUnavailableError(PermanentError, RuntimeError):
    """A CUDA place was requested but cupy or a device is missing."""
