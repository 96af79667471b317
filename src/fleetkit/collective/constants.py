"""Defaults of the collective subsystem, in one place.

Every blocking call takes a timeout; the value used when a caller passes None
comes from here.  ``FLEETKIT_COLLECTIVE_TIMEOUT`` (seconds) overrides the
default for a whole job without code changes (e.g. a short value in tests).
"""
from __future__ import annotations

from ..env import (FLEETKIT_COLLECTIVE_TIMEOUT, PADDLE_TRAINER_ENDPOINTS, PADDLE_TRAINER_ID, PADDLE_TRAINERS_NUM,
                   collective_timeout_s)

#: Environment variable overriding DEFAULT_TIMEOUT_S (seconds, > 0); named and read in env.py.
TIMEOUT_ENV = FLEETKIT_COLLECTIVE_TIMEOUT
#: Default timeout of one collective, a rendezvous or a store wait (seconds).
DEFAULT_TIMEOUT_S = 300.0
#: Extra time a blocking call waits for the op thread after the op's own
#: deadline, so that the op reports its own (more precise) timeout first.
WAIT_GRACE_S = 5.0
#: After a broken connection, how long to wait for the control channel to say
#: which rank really failed (a neighbour that aborted vs. the rank that died).
FAILURE_ATTRIBUTION_S = 1.0

#: Paddle's launcher variables used for rendezvous (named in env.py, parsed by env.load_role).
TRAINER_ENDPOINTS_ENV = PADDLE_TRAINER_ENDPOINTS
TRAINER_ID_ENV = PADDLE_TRAINER_ID
TRAINERS_NUM_ENV = PADDLE_TRAINERS_NUM

#: Reduction operators every backend supports.
REDUCE_OPS = ("sum", "max", "min", "prod")

#: Ring algorithms move data in pieces of this many bytes, so that sending
#: piece i+1 overlaps receiving and reducing piece i (and the last ring step
#: starts before the first one ends).
DEFAULT_CHUNK_BYTES = 1 << 20

#: Arrays with more dimensions than this cannot be described in the fixed-size
#: header that ranks exchange before each collective.
MAX_NDIM = 16


def default_timeout() -> float:
    """The default collective timeout: $FLEETKIT_COLLECTIVE_TIMEOUT (read by env.py) or 300 s."""
    value = collective_timeout_s()
    return DEFAULT_TIMEOUT_S if value is None else value
