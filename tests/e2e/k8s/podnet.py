"""Pod networking for the test kubelet: one network namespace per pod on a bridge.

Each pod gets ``ip netns`` namespace with a veth into a bridge owned by this
kubelet (its own /24, gateway .1), so every pod has its own address and ports,
as on a cluster.  Cluster DNS is played by hosts files: ``ip netns exec``
bind-mounts ``/etc/netns/<ns>/hosts`` over ``/etc/hosts`` for the pod's
processes (and ``resolv.conf`` likewise), and the kubelet rewrites the hosts files in place (the bind mount keeps
the inode) whenever a headless service gains or loses an address.
"""
from __future__ import annotations

import os
import secrets
import subprocess


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class PodNetwork:
    """A bridge with a /24 and the pods' namespaces on it (root only)."""

    def __init__(self, subnet: str | None = None):
        self.tag = secrets.token_hex(2)
        self.bridge = f"fkkbr{self.tag}"
        self.subnet = subnet or f"10.{200 + int(self.tag[:2], 16) % 50}.{int(self.tag[2:], 16)}"
        self.gateway = f"{self.subnet}.1"
        self._free = list(range(2, 255))
        self._used: dict[str, int] = {}          # netns name -> host byte
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self) -> tuple[str, str]:
        """A new namespace attached to the bridge; returns (netns name, pod IP)."""
        host = self._free.pop(0)
        ns, veth, peer = f"fkk{self.tag}-{host}", f"fkv{self.tag}{host}", f"fkc{self.tag}{host}"
        _ip("netns", "add", ns)
        self._used[ns] = host
        ip = f"{self.subnet}.{host}"
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "link", "set", peer, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.gateway)
        os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
        write_hosts(ns, {})
        # No real DNS server: the host's would be routed out of the bridge and never
        # answer, so resolvers asking it for AAAA records would wait seconds each.  A
        # nameserver on the pod's own loopback refuses at once, like a cluster DNS's
        # NXDOMAIN for a name it does not serve; the hosts file answers the rest.
        with open(f"/etc/netns/{ns}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return ns, ip

    def remove(self, ns: str) -> None:
        """Delete a pod's namespace (its veth goes with it) and hosts file."""
        host = self._used.pop(ns, None)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for name in ("hosts", "resolv.conf"):
            try:
                os.remove(f"/etc/netns/{ns}/{name}")
            except OSError:
                pass
        try:
            os.rmdir(f"/etc/netns/{ns}")
        except OSError:
            pass
        if host is not None:
            self._free.append(host)

    def close(self) -> None:
        """Remove every namespace and the bridge."""
        for ns in list(self._used):
            self.remove(ns)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)


def write_hosts(ns: str, names: dict[str, str]) -> None:
    """Rewrite the hosts file of ``ns`` in place: ``names`` maps host name -> IP."""
    lines = ["127.0.0.1 localhost"] + [f"{ip} {name}" for name, ip in sorted(names.items())]
    with open(f"/etc/netns/{ns}/hosts", "r+" if os.path.exists(f"/etc/netns/{ns}/hosts") else "w") as f:
        f.seek(0)
        f.write("\n".join(lines) + "\n")
        f.truncate()
