"""The bulk server's event loop: one thread that serves every connection's small frames.

A thread per connection costs, per frame, a wake-up of that thread and a GIL hand-off
to it; with N trainers the N threads also contend for the GIL.  Here one thread waits
on every idle connection at once (``select.epoll``, level-triggered) and serves each
frame that arrived whole inline, so one wake-up serves every frame that is ready.

The loop never waits for one peer: it reads with ``MSG_DONTWAIT``, serves a frame only
if it is whole in the connection's buffer (so no read of ``BulkServer._serve_one``
waits) and of a method the pserver calls inline-safe (``BulkTarget.bulk_inline``), and
a reply the socket cannot take at once is left to the worker.  Anything else (a frame
not arrived whole, a large one, a method that may wait, a hang-up) hands the connection
to its worker thread (``BulkServer.hand_off``), which gives it back when done.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
from typing import TYPE_CHECKING

from .bulk import _FRAME, METHOD_NAME

if TYPE_CHECKING:
    from .bulk_server import BulkServer, Conn

__all__ = ["BulkLoop"]
log = logging.getLogger("fleetkit.pserver.bulk")

_READABLE = select.EPOLLIN | select.EPOLLRDHUP
_FRAME_SIZE = _FRAME.size


class BulkLoop:
    """The event loop of one ``BulkServer``."""

    def __init__(self, server: BulkServer) -> None:
        self.server = server
        self._ep = select.epoll()
        self._held: dict[int, Conn] = {}   # fd -> connection the loop holds
        # stop() writes to this pair, so the loop notices at once (epoll has no other wake-up)
        self._wake_r, self._wake_w = socket.socketpair()
        self._ep.register(self._wake_r.fileno(), select.EPOLLIN)
        self._stopping = False   # stop() was called
        self._ended = False      # the loop's thread is done (stopped, or failed)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fk-bulk-loop")
        self._thread.start()

    def stop(self) -> None:
        """End the loop; the connections it held go back to their workers (which close them)."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(5)

    def adopt(self, c: Conn) -> bool:
        """Take ``c`` (called by its worker, which then parks until ``hand_off``): its
        frames are served here.  False if the loop has ended (the worker keeps it)."""
        if self._ended:
            return False
        c.in_loop = True
        self._held[c.fd] = c          # before register: an event may come at once
        try:
            self._ep.register(c.fd, _READABLE)
            registered = True
        except (OSError, ValueError):   # the epoll was closed: the loop ended meanwhile
            registered = False
        if registered and not self._ended:
            return True
        # the loop ended around the registration: undo it, unless the loop's last look
        # at what it holds found the connection and handed it back already
        if self._held.pop(c.fd, None) is None:
            return True
        c.in_loop = False
        return False

    def _drop(self, c: Conn, closing: bool = False) -> None:
        """Hand ``c`` to its worker (``closing``: to hang up)."""
        if self._held.pop(c.fd, None) is None:
            return
        try:
            self._ep.unregister(c.fd)
        except (OSError, ValueError):
            pass
        c.closing = c.closing or closing
        self.server.hand_off(c)

    def _run(self) -> None:
        wake_fd, poll, held = self._wake_r.fileno(), self._ep.poll, self._held
        try:
            while not self._stopping:
                for fd, _events in poll():
                    c = held.get(fd)
                    if c is not None:
                        try:
                            self._readable(c)
                        except (OSError, ConnectionError) as e:   # the peer went away mid-reply
                            log.debug("bulk %s: connection dropped: %s", self.server.name, e)
                            self._drop(c, closing=True)
                        except Exception:  # noqa: BLE001 - a bug serving one peer must not stop the loop
                            log.exception("bulk %s: connection failed", self.server.name)
                            self._drop(c, closing=True)
                    elif fd == wake_fd:
                        self._wake_r.recv(64)
        except Exception:  # noqa: BLE001 - a bug here must not leave connections unserved
            log.exception("bulk %s: event loop failed; connections go back to their threads", self.server.name)
        finally:
            self._ended = True   # from here on adopt() refuses: workers keep their connections
            for c in list(held.values()):
                self._drop(c, closing=self._stopping)
            self._ep.close()
            self._wake_r.close()
            self._wake_w.close()

    def _readable(self, c: Conn) -> None:
        """Serve the frames ``c`` has ready; hand it to its worker for anything else."""
        reader = c.reader
        try:
            got = reader.fill_nowait()
        except OSError:
            got = 0   # reset by the peer: the worker sees it too and closes
        if got == 0:
            self._drop(c, closing=True)
            return
        if got is None and not reader.buffered:
            return   # woken for nothing
        server, inline = self.server, self.server.target.bulk_inline
        while avail := reader.buffered:
            if avail < _FRAME_SIZE:
                break   # the rest of the frame is late: the worker waits for it
            magic, mcode, _flags, tlen, hlen, rlen, dlen = _FRAME.unpack(reader.peek(_FRAME_SIZE))
            method = METHOD_NAME.get(mcode)
            if method is None or _FRAME_SIZE + tlen + hlen + rlen + dlen > avail or not inline(method):
                break   # malformed, not arrived whole, larger than the buffer, or may wait
            reader.take(_FRAME_SIZE)
            server.inline_frames += 1   # before the reply: a peer that has it sees the count
            keep, _ = server.serve_frame(c, magic, mcode, tlen, hlen, rlen, dlen)
            if not keep:
                self._drop(c, closing=True)
                return
            if c.unsent:
                break   # the worker sends the rest of the reply
        else:
            return
        self._drop(c)
