"""A server-side network namespace joined to this one by a veth pair, rate limited both ways.

The server runs in the namespace (``ip netns exec``), the client stays here. Each end of the
pair gets a ``tbf`` qdisc at the link's rate; this kernel has no ``netem``, so the round trip
is added by :mod:`benchkit.link.delay` in this namespace. Everything made is removed on exit,
on an error or a signal included (deleting the namespace deletes its end of the pair, and the
pair with it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LinkSpec:
    """A link: rate in Mbit/s and round-trip time in ms."""

    name: str
    mbit: float
    rtt_ms: float

    @property
    def bytes_per_s(self) -> float:
        """The rate in bytes per second, as tbf counts it (whole frames)."""
        return self.mbit * 1e6 / 8


LINKS = {
    "4g": LinkSpec("4g", 20, 60),
    "lan": LinkSpec("lan", 200, 10),
    # A geostationary satellite uplink: where a fixed number of uploads in flight would
    # first leave the link idle between one image's last byte and the next one's first.
    "sat": LinkSpec("sat", 10, 600),
}


# iproute2's commands (root's PATH has /usr/sbin; a user's may not).
IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"


def netns_missing() -> str | None:
    """Why a namespace cannot be made here, or None (tried: made and removed)."""
    if not (Path(IP).exists() and Path(TC).exists()):
        return "ip or tc not found (Debian: apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"dsl-probe-{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "del", name], capture_output=True, check=False)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    argv = [IP, *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _tbf(dev: str, spec: LinkSpec, ns: str | None = None) -> None:
    # The bucket holds 10 ms at the rate, never less than a 64 KiB GSO frame of veth.
    burst = max(int(spec.bytes_per_s / 100), 65536 + 1514)
    argv = [TC, *(["-n", ns] if ns else []), "qdisc", "replace", "dev", dev, "root", "tbf"]
    argv += ["rate", f"{spec.mbit:g}mbit", "burst", str(burst), "latency", "200ms"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


class Namespace:
    """The namespace and the veth pair; the server's address is :attr:`server_ip`."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.name = f"dsl-{pid}"
        self.client_dev = f"dslc{pid}"[:15]
        self.server_dev = f"dsls{pid}"[:15]
        # A /30 of its own per process: two benchmarks at once do not collide.
        base = 4 * (pid % 16384)
        prefix = f"10.{214 + base // 65536}.{base // 256 % 256}"
        self.client_ip = f"{prefix}.{base % 256 + 1}"
        self.server_ip = f"{prefix}.{base % 256 + 2}"
        self.made = False

    def __enter__(self) -> Namespace:
        try:
            _ip("netns", "add", self.name)
            self.made = True
            _ip("link", "add", self.client_dev, "type", "veth", "peer", "name", self.server_dev)
            _ip("link", "set", self.server_dev, "netns", self.name)
            _ip("addr", "add", f"{self.client_ip}/30", "dev", self.client_dev)
            _ip("link", "set", self.client_dev, "up")
            _ip("addr", "add", f"{self.server_ip}/30", "dev", self.server_dev, ns=self.name)
            _ip("link", "set", self.server_dev, "up", ns=self.name)
            _ip("link", "set", "lo", "up", ns=self.name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the pair and the namespace (idempotent)."""
        subprocess.run([IP, "link", "del", self.client_dev], capture_output=True, check=False)
        if self.made:
            subprocess.run([IP, "netns", "del", self.name], capture_output=True, check=False)
            self.made = False

    def shape(self, spec: LinkSpec) -> None:
        """Limit both ends of the pair to the link's rate (replacing any limit before)."""
        _tbf(self.client_dev, spec)
        _tbf(self.server_dev, spec, ns=self.name)

    def prefix(self) -> list[str]:
        """What runs a command in the namespace."""
        return [IP, "netns", "exec", self.name]

    def tx_bytes(self) -> int:
        """Bytes sent from this side of the link so far (frames, headers included)."""
        path = Path(f"/sys/class/net/{self.client_dev}/statistics/tx_bytes")
        return int(path.read_text())
