"""COMPLETE at a clean interpreter exit, for trainers whose script never closed its executor.

fluid 1.4 tells the pservers a trainer is done in ``Executor.close()``, but most real 1.4
scripts end without calling it, and a pserver started by hand then sees the trainer's
heartbeat stream drop without COMPLETE, calls it lost and exits non-zero.  So the first
process-wide client (``client.get_client``) installs ``install()``: an ``atexit`` handler
that sends COMPLETE for every client that contacted a pserver and has not completed yet.

A crashed trainer must still be reported as lost, so nothing is sent after an uncaught
exception: ``sys.excepthook`` and ``threading.excepthook`` are wrapped (chaining whatever
hook was there) to note it, and the atexit handler then stays silent.  A process killed by
a signal or ended by ``os._exit`` runs no atexit handler at all (also lost, as before).
``sys.exit(n)`` is a clean exit for Python (no hook sees it), so it sends COMPLETE too.

Not sent either: to a pserver this client knows lost its parameters in a restart without a
checkpoint (the trainer did not finish its job there), and from a forked child (the hooks
are inherited, the clients are the parent's).
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import threading
from typing import Any

__all__ = ["install"]
log = logging.getLogger(__name__)

#: bounds of the COMPLETE calls at exit: a trainer whose pservers are gone already must
#: still exit in seconds (the client's own retry window is two minutes)
EXIT_DEADLINE_S = 10.0
EXIT_RETRY_WINDOW_S = 3.0

_installed_pid: int | None = None   # the process whose hooks these are
_crash: str | None = None           # the first uncaught exception, described


def install() -> None:
    """Install the excepthooks and the atexit handler once per process (idempotent)."""
    global _installed_pid
    if _installed_pid == os.getpid():
        return
    _installed_pid = os.getpid()
    previous_sys_hook = sys.excepthook
    previous_thread_hook = threading.excepthook

    def sys_hook(exc_type: type, exc: BaseException, tb: Any) -> None:
        _note_crash(f"uncaught {exc_type.__name__} in the main thread")
        previous_sys_hook(exc_type, exc, tb)

    def thread_hook(args: Any) -> None:
        # SystemExit ends a thread quietly (threading's default hook ignores it): no crash
        if args.exc_type is not SystemExit:
            name = args.thread.name if args.thread is not None else "?"
            _note_crash(f"uncaught {args.exc_type.__name__} in thread {name!r}")
        previous_thread_hook(args)

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook
    # registered after grpc was imported (client.py imports it first), so this runs before
    # any handler grpc or logging registered (atexit runs handlers last in, first out)
    atexit.register(complete_at_exit)


def _note_crash(what: str) -> None:
    global _crash
    if _crash is None:
        _crash = what


def complete_at_exit() -> None:
    """Send COMPLETE for the clients that still owe it, unless the process crashed."""
    if _installed_pid != os.getpid():
        return
    from .client import live_clients  # noqa: PLC0415 - client imports this module
    pending = [c for c in live_clients() if c.contacted and not c.completed]
    if not pending:
        return
    if _crash is not None:
        log.warning("not telling the pservers this trainer is done (%s): they report it lost", _crash)
        return
    from .ops import drain_background  # noqa: PLC0415
    try:
        drain_background()           # the last async pushes go first, as in Executor.close()
    except Exception as e:  # noqa: BLE001 - at exit: say why; the pservers report the trainer lost
        log.error("not telling the pservers this trainer is done: its last gradient push failed: %s", e)
        return
    for client in pending:
        _complete(client)


def _complete(client: Any) -> None:
    # Nothing else calls this client any more: bound its calls so exit is not held up.
    client.options = dataclasses.replace(client.options, deadline_s=EXIT_DEADLINE_S,
                                         retry_window_s=EXIT_RETRY_WINDOW_S)
    lost_state = set(client.restarts.lost_endpoints())
    # one endpoint per call: at exit the client's thread pool takes no new work (threading's
    # shutdown already ran), and a call to a single endpoint runs in this thread
    for endpoint in client.contacted:
        if endpoint in lost_state:
            continue
        try:
            client.send_complete([endpoint])
        except Exception as e:  # noqa: BLE001 - at exit: say why; that pserver reports the trainer lost
            log.error("could not tell pserver %s this trainer is done at exit: %s", endpoint, e)
