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


class NanInfError(OpError, ArithmeticError):
    """``FLAGS_check_nan_inf``: an op produced NaN/inf, or fed data holds them.

    Attributes:
        var: the variable holding them.
        op_type: the op that wrote it (None for fed data).
        block, op_index: where that op is in its program (op_index None for fed data).
    """

    def __init__(self, message: str, var: str, op_type: str | None = None, block: int | None = None,
                 op_index: int | None = None):
        super().__init__(message)
        self.var, self.op_type, self.block, self.op_index = var, op_type, block, op_index


def seconds_text(seconds: float) -> str:
    """A duration for a message: ``15.0`` for 14.999817, ``0.25`` below one second."""
    return f"{seconds:.1f}" if abs(seconds) >= 1 else f"{seconds:.2g}"


# --- collectives (fleetkit.collective) ---------------------------------------


class CollectiveError(FleetkitError, RuntimeError):
    """A collective operation (all-reduce, broadcast, ...) failed."""


class CollectiveTimeoutError(CollectiveError, RetryableError, TimeoutError):
    """A collective, a rendezvous or a wait did not finish within its timeout.

    The message names the peer that was being waited for, when it is known.
    """


class PeerFailedError(CollectiveError, RetryableError, ConnectionError):
    """Another rank of the group died, closed its backend or aborted.

    Attributes:
        rank: the rank that failed (None when unknown).
        endpoint: its ``host:port`` (None when unknown).
    """

    def __init__(self, message: str, rank: int | None = None, endpoint: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.endpoint = endpoint


class CollectiveMismatchError(CollectiveError, PermanentError, ValueError):
    """Ranks called a collective with different shapes, dtypes, ops or order.

    Raised on every rank; the message names the ranks and both sides' values.
    """


# --- parameter-server RPC (fleetkit.pserver) ----------------------------------


class RPCError(FleetkitError, RuntimeError):
    """A call between a trainer and a parameter server failed.

    Attributes:
        endpoint: the pserver's ``host:port`` (None when unknown).
        varname: the variable (or table) the call was about (None when unknown).
        code: the gRPC status code name, e.g. ``"UNAVAILABLE"`` (None when unknown).
    """

    def __init__(self, message: str, endpoint: str | None = None, varname: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.varname = varname
        self.code = code


class PServerUnavailableError(RPCError, RetryableError, ConnectionError):
    """The pserver could not be reached (down, restarting, refused) within the retry window."""


class RPCDeadlineError(RPCError, RetryableError, TimeoutError):
    """A call to a pserver did not finish before its deadline."""


class ServerNotReadyError(RPCError, RetryableError, TimeoutError):
    """``wait_server_ready`` gave up: the message names every endpoint that never came up."""


class RPCRequestError(RPCError, PermanentError, ValueError):
    """The pserver rejected a request as malformed: unknown variable, wrong dtype or shape,
    truncated payload, bad trainer id.  Retrying the same request cannot succeed."""


class RPCAuthError(RPCError, PermanentError, PermissionError):
    """The pserver refused the call: missing or wrong ``FLEETKIT_AUTH_TOKEN`` (UNAUTHENTICATED)."""


class BarrierTimeoutError(RPCError, PermanentError, TimeoutError):
    """A sync-mode round failed because some trainers never reached the barrier in time.

    Attributes:
        missing_trainers: the trainer ids the round was waiting for.
    """

    def __init__(self, message: str, endpoint: str | None = None, varname: str | None = None,
                 code: str | None = None, missing_trainers: tuple[int, ...] = ()):
        super().__init__(message, endpoint, varname, code)
        self.missing_trainers = tuple(missing_trainers)


class CheckpointError(PermanentError, OSError):
    """A pserver checkpoint could not be written or read (the message names the file)."""


class PServerError(RPCError, PermanentError):
    """The pserver failed while handling a well-formed call (its handler raised); the
    message carries the pserver's endpoint and its error."""


class PServerRestartedError(PServerError):
    """A pserver restarted without its state (no checkpoint): the parameters it held were
    lost.  Raised by the trainer that notices, naming the endpoint, unless re-seeding
    (``FLEETKIT_PS_RESEED_ON_RESTART``) is on."""


# --- data pipeline (fleetkit.dataset) ----------------------------------------


class DataFormatError(PermanentError, ValueError):
    """A line of input data does not follow the MultiSlot format or the slots set.

    Attributes:
        file: the file (path or URL) the line came from, when known.
        line: 1-based line number in that file (after the pipe command), when known.
        reason: what is wrong with it.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.file = file
        self.line = line
        self.reason = reason


class DataReadError(PermanentError, OSError):
    """Input data could not be read: a missing file, a failing pipe or remote-read
    command (its stderr tail is in the message), a stalled or broken stream."""
