"""Sockets of one TCP-backend rank, and how failures travel between ranks.

Each rank holds:

* two *data* connections of the ring: one to its right neighbour (it only
  sends on it) and one from its left neighbour (it only receives on it);
* a *control* connection to every other rank, read by a watcher thread.  It
  carries only two tiny messages: BYE (clean close) and ABORT (this group is
  broken, and why).  A control connection that ends without BYE means that
  process died: every rank sees that at once, directly, so all of them can
  name the dead rank and its endpoint instead of blaming the neighbour that
  merely stopped talking to them;
* a sender thread, so that a rank sends to the right while it receives from
  the left (full duplex), with sends gated on receive progress (pipelining).

Wire data is raw array bytes and ``struct`` headers; nothing is unpickled.
"""
from __future__ import annotations

import logging
import queue
import select
import selectors
import socket
import struct
import threading
import time

from ..errors import CollectiveError, CollectiveTimeoutError, PeerFailedError, seconds_text
from ..netio import recv_exactly
from ..waits import WaitNote
from .api import Deadline
from .constants import FAILURE_ATTRIBUTION_S
from .store import _connect_with_retry, _recv_exact

log = logging.getLogger(__name__)

_HELLO = struct.Struct("<I16siiB")   # magic, group token, world size, rank, link kind
_HELLO_MAGIC = 0x464B4848            # "FKHH"
_DATA, _CONTROL = 0, 1
_CTRL = struct.Struct("<BBiH")        # message type, error kind, failed rank, text length
_BYE, _ABORT = 1, 2
_KIND_PEER, _KIND_TIMEOUT, _KIND_OTHER = 1, 2, 3
_CONTROL_IO_TIMEOUT_S = 5.0


class RingLinks:
    """Connections, failure state and the sender thread of one rank."""

    def __init__(self, rank: int, world_size: int, listener: socket.socket, endpoints: list[str],
                 token: bytes, deadline: Deadline):
        self.rank, self.world_size, self.endpoints = rank, world_size, endpoints
        self.right, self.left = (rank + 1) % world_size, (rank - 1) % world_size
        self.right_sock: socket.socket | None = None
        self.left_sock: socket.socket | None = None
        self.control: dict[int, socket.socket] = {}
        self._control_locks: dict[int, threading.Lock] = {}
        self._said_bye: set[int] = set()
        self._closing = False
        self._failure: tuple[type, str, int | None] | None = None
        self._fail_lock = threading.Lock()
        self.failed = threading.Event()
        self.progress = 0
        self.progress_cv = threading.Condition()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        try:
            self._connect(token, deadline)
            self._accept(listener, token, deadline)
        except BaseException:
            self._close_sockets()
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads = [threading.Thread(target=self._watch, daemon=True, name=f"fleetkit-tcp-watch-{rank}")]
        if world_size > 1:
            self._threads.append(threading.Thread(target=self._send_loop, daemon=True,
                                                  name=f"fleetkit-tcp-send-{rank}"))
        for t in self._threads:
            t.start()

    def describe(self, rank: int) -> str:
        """``rank 2 (10.0.0.3:6170)`` for messages."""
        return f"rank {rank} ({self.endpoints[rank]})"

    # ---- set-up ----------------------------------------------------------------------------

    def _connect(self, token: bytes, deadline: Deadline) -> None:
        targets = [(self.right, _DATA)] if self.world_size > 1 else []
        targets += [(peer, _CONTROL) for peer in range(self.rank + 1, self.world_size)]
        for peer, kind in targets:
            host, _, port = self.endpoints[peer].rpartition(":")
            sock = _connect_with_retry(host, int(port), deadline.remaining(), self.describe(peer))
            sock.settimeout(deadline.remaining() or 0.001)
            sock.sendall(_HELLO.pack(_HELLO_MAGIC, token, self.world_size, self.rank, kind))
            self._adopt(peer, kind, sock, outgoing=True)

    def _accept(self, listener: socket.socket, token: bytes, deadline: Deadline) -> None:
        want_left = self.world_size > 1
        want_control = set(range(self.rank))
        note = WaitNote(log)
        while want_left or want_control:
            missing = sorted(want_control | ({self.left} if want_left else set()))
            note.say("rank %d: waiting for %s to connect; %.0f s left", self.rank,
                     ", ".join(self.describe(r) for r in missing), deadline.remaining())
            if deadline.expired():
                raise CollectiveTimeoutError(
                    f"rank {self.rank}: ranks {missing} did not connect within {seconds_text(deadline.seconds)} s "
                    f"({', '.join(self.describe(r) for r in missing)})")
            listener.settimeout(max(0.001, min(deadline.remaining(), 1.0)))
            try:
                conn, _ = listener.accept()
                conn.settimeout(max(0.001, deadline.remaining()))
                magic, their_token, size, peer, kind = _HELLO.unpack(_recv_exact(conn, _HELLO.size))
            except (socket.timeout, OSError, EOFError, struct.error):
                continue  # nothing yet, or a stray connection: keep waiting
            ok = magic == _HELLO_MAGIC and their_token == token and size == self.world_size
            if ok and kind == _DATA and peer == self.left and want_left:
                want_left = False
            elif ok and kind == _CONTROL and peer in want_control:
                want_control.discard(peer)
            else:
                conn.close()  # another job, or a duplicate: not ours
                continue
            self._adopt(peer, kind, conn, outgoing=False)

    def _adopt(self, peer: int, kind: int, sock: socket.socket, outgoing: bool) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == _CONTROL:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.settimeout(_CONTROL_IO_TIMEOUT_S)
            self.control[peer] = sock
            self._control_locks[peer] = threading.Lock()
        elif outgoing:
            self.right_sock = sock
        else:
            self.left_sock = sock

    # ---- failure ---------------------------------------------------------------------------

    def fail(self, error: BaseException, notify: bool = True) -> None:
        """Put the group in the failed state (first cause wins) and wake every waiter.

        Peers are told (ABORT) so they fail fast with the same cause, and the data
        sockets are shut down so that blocked sends and receives return at once.
        """
        rank = getattr(error, "rank", None)
        if isinstance(error, PeerFailedError):
            kind = _KIND_PEER
        elif isinstance(error, CollectiveTimeoutError):
            kind = _KIND_TIMEOUT
        else:
            kind = _KIND_OTHER
        with self._fail_lock:
            if self._failure is not None:
                return
            self._failure = ({_KIND_PEER: PeerFailedError, _KIND_TIMEOUT: CollectiveTimeoutError}
                             .get(kind, CollectiveError), str(error), rank)
        self.failed.set()
        with self.progress_cv:
            self.progress_cv.notify_all()
        if notify:
            text = str(error).encode("utf-8", "replace")[:4000]
            message = _CTRL.pack(_ABORT, kind, -1 if rank is None else rank, len(text)) + text
            for peer in list(self.control):
                self._send_control(peer, message)
        for sock in (self.right_sock, self.left_sock):
            _shutdown(sock)

    def failure_error(self) -> BaseException | None:
        """A new exception describing the failure, or None while the group is healthy."""
        if self._failure is None:
            return None
        cls, message, rank = self._failure
        if cls is PeerFailedError:
            return PeerFailedError(message, rank=rank, endpoint=self.endpoints[rank] if rank is not None else None)
        error = cls(message)
        error.rank = rank  # type: ignore[attr-defined]
        return error

    def io_failure(self, peer: int, exc: BaseException | None, doing: str, deadline: Deadline,
                   blame: int | None = None) -> BaseException:
        """The error to raise after a data-socket problem with ``peer``.

        A broken connection may be a neighbour that aborted because of another
        rank; give the control channel a moment to tell which rank really failed.
        """
        timed_out = isinstance(exc, (socket.timeout, TimeoutError)) or deadline.expired()
        end = time.monotonic() + min(FAILURE_ATTRIBUTION_S, deadline.remaining())
        while not timed_out and peer not in self._said_bye and time.monotonic() < end:
            if self.failed.wait(0.01):
                break
        known = self.failure_error()
        if known is not None:
            return known
        if timed_out:
            culprit = peer if blame is None else blame
            error: BaseException = CollectiveTimeoutError(
                f"rank {self.rank}: timed out after {seconds_text(deadline.seconds)} s {doing} "
                f"{self.describe(culprit)}")
            error.rank = culprit  # type: ignore[attr-defined]
        else:
            how = "closed its backend" if peer in self._said_bye else "closed the connection"
            error = PeerFailedError(f"{self.describe(peer)} {how} while rank {self.rank} was talking to it"
                                    + (f" ({exc})" if exc else ""), rank=peer, endpoint=self.endpoints[peer])
        self.fail(error)
        return self.failure_error() or error

    # ---- data ------------------------------------------------------------------------------

    def send(self, view: memoryview, deadline: Deadline) -> None:
        """Send all of ``view`` to the right neighbour before the deadline."""
        sock = self.right_sock
        try:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise socket.timeout("deadline passed")
            sock.settimeout(remaining)  # type: ignore[union-attr]
            sock.sendall(view)  # type: ignore[union-attr]
        except (OSError, AttributeError) as exc:
            raise self.io_failure(self.right, exc, "sending to", deadline) from None

    def recv_into(self, view: memoryview, deadline: Deadline, doing: str = "receiving from",
                  blame: int | None = None) -> None:
        """Fill ``view`` from the left neighbour before the deadline.

        On a timeout the error names ``blame`` (default: the left neighbour), e.g.
        the rank whose header is missing, with ``doing`` saying what was awaited.
        """
        try:
            recv_exactly(self.left_sock, view, deadline)  # type: ignore[arg-type]
        except (OSError, AttributeError) as exc:
            raise self.io_failure(self.left, exc, doing, deadline, blame) from None

    def wait_for_left(self, deadline: Deadline, doing: str, blame: int) -> None:
        """Return once the left neighbour has sent something, the deadline passed or the
        socket broke (the read that follows reports either); a long wait says what it
        waits for (``doing`` and rank ``blame``), e.g. a peer still loading its data."""
        sock, note = self.left_sock, None
        while sock is not None and not deadline.expired():
            try:
                if select.select([sock], [], [], 0 if note is None else min(deadline.remaining(), note.until_due()))[0]:
                    return
            except (OSError, ValueError):
                return
            if note is None:
                note = WaitNote(log)
            else:
                note.say("rank %d: %s %s; %.0f s left", self.rank, doing, self.describe(blame), deadline.remaining())

    def post_sends(self, items: list[tuple[memoryview, int]], deadline: Deadline) -> "SendJob":
        """Hand gated sends to the sender thread; it runs them in order."""
        job = SendJob(items, deadline)
        self._jobs.put(job)
        return job

    def bump_progress(self) -> None:
        """Count one finished receive (opens the gates of sends waiting for it)."""
        with self.progress_cv:
            self.progress += 1
            self.progress_cv.notify()

    def _send_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                for view, gate in job.items:
                    if gate > self.progress:
                        self._await_progress(gate, job.deadline)
                    self.send(view, job.deadline)
            except BaseException as exc:  # noqa: BLE001 - handed to the op thread
                job.error = exc
            finally:
                job.done.set()

    def _await_progress(self, gate: int, deadline: Deadline) -> None:
        with self.progress_cv:
            while self.progress < gate:
                if self.failed.is_set():
                    raise self.failure_error()  # type: ignore[misc]
                if deadline.expired():
                    raise self.io_failure(self.left, None, "waiting for data from", deadline)
                self.progress_cv.wait(deadline.remaining())

    # ---- control channel -------------------------------------------------------------------

    def _send_control(self, peer: int, message: bytes) -> None:
        sock = self.control.get(peer)
        if sock is None:
            return
        with self._control_locks[peer]:
            try:
                sock.sendall(message)
            except OSError:
                pass  # that peer is gone too; its own EOF tells the others

    def _watch(self) -> None:
        sel = selectors.DefaultSelector()
        for peer, sock in self.control.items():
            sel.register(sock, selectors.EVENT_READ, peer)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        with sel:
            while True:
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    if not self._read_control(key.data, key.fileobj):  # type: ignore[arg-type]
                        sel.unregister(key.fileobj)

    def _read_control(self, peer: int, sock: socket.socket) -> bool:
        """Handle one control message; False once that connection ended."""
        try:
            kind_type, kind, rank, length = _CTRL.unpack(_recv_exact(sock, _CTRL.size))
            text = _recv_exact(sock, length).decode("utf-8", "replace")
        except (OSError, EOFError, struct.error):
            if peer not in self._said_bye and not self._closing:
                self.fail(PeerFailedError(
                    f"{self.describe(peer)} died: its connection to rank {self.rank} closed "
                    "without a goodbye (process killed or crashed)", rank=peer, endpoint=self.endpoints[peer]))
            return False
        if kind_type == _BYE:
            self._said_bye.add(peer)
        elif kind_type == _ABORT:
            cls = {_KIND_PEER: PeerFailedError, _KIND_TIMEOUT: CollectiveTimeoutError}.get(kind, CollectiveError)
            failed_rank = None if rank < 0 else rank
            message = f"{text} (reported by rank {peer})"
            if cls is PeerFailedError:
                endpoint = None if failed_rank is None else self.endpoints[failed_rank]
                error: BaseException = PeerFailedError(message, rank=failed_rank, endpoint=endpoint)
            else:
                error = cls(message)
                error.rank = failed_rank  # type: ignore[attr-defined]
            self.fail(error)
        return True

    # ---- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye to every peer, stop the threads and close the sockets."""
        self._closing = True
        for peer in list(self.control):
            self._send_control(peer, _CTRL.pack(_BYE, 0, -1, 0))
        self._jobs.put(None)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        for t in self._threads:
            t.join(_CONTROL_IO_TIMEOUT_S)
        self._close_sockets()
        self._wake_r.close()
        self._wake_w.close()

    def _close_sockets(self) -> None:
        for sock in [self.right_sock, self.left_sock, *self.control.values()]:
            if sock is not None:
                sock.close()


class SendJob:
    """Sends of one collective; ``done`` is set when all were sent or one failed."""

    def __init__(self, items: list[tuple[memoryview, int]], deadline: Deadline):
        self.items, self.deadline = items, deadline
        self.done = threading.Event()
        self.error: BaseException | None = None


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
