"""gRPC channels to pservers, and waiting for pservers to come up."""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import grpc

from ..errors import ServerNotReadyError
from ..waits import WaitNote
from . import rpc

__all__ = ["make_channel", "wait_server_ready"]
log = logging.getLogger(__name__)



def make_channel(endpoint: str, options: Any) -> grpc.Channel:
    """A gRPC channel to a pserver with the ``ClientOptions`` settings (TLS if configured)."""
    opts = rpc.channel_options(options.max_message_bytes)
    if options.tls_ca_path:
        with open(options.tls_ca_path, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        if options.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", options.tls_server_name))
        return grpc.secure_channel(endpoint, creds, options=opts)
    return grpc.insecure_channel(endpoint, options=opts)


def wait_server_ready(endpoints: Sequence[str], timeout: float = 120.0,
                      options: Any = None) -> None:
    """Block until every pserver accepts connections; ServerNotReadyError names the
    endpoints that did not within ``timeout`` seconds."""
    if options is None:
        from .client import ClientOptions  # noqa: PLC0415 - client imports this module
        options = ClientOptions()
    deadline, note = time.monotonic() + timeout, WaitNote(log)   # a trainer started by hand is not silent
    channels = {ep: make_channel(ep, options) for ep in dict.fromkeys(endpoints)}
    pending = {ep: grpc.channel_ready_future(ch) for ep, ch in channels.items()}
    try:
        while pending and time.monotonic() < deadline:
            for ep in list(pending):
                try:
                    pending[ep].result(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    del pending[ep]
                except grpc.FutureTimeoutError:
                    pass
            if pending:
                note.say("waiting for pservers: %d of %d ready (waiting for %s; %.0f s of %.0f s left)",
                         len(channels) - len(pending), len(channels), ", ".join(pending),
                         max(0.0, deadline - time.monotonic()), timeout)
    finally:
        for fut in pending.values():
            fut.cancel()
        for ch in channels.values():
            ch.close()
    missing = list(pending)
    if missing:
        raise ServerNotReadyError(
            f"pserver(s) {', '.join(missing)} not reachable after {timeout:.1f} s "
            f"(not started, wrong endpoint, or blocked); {len(channels) - len(missing)} of "
            f"{len(channels)} ready", endpoint=missing[0], code="UNAVAILABLE")
