"""Servers placed across the link: run in the namespace, reached through the delaying proxy."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import urlsplit

from benchkit.bench_targets.tools import Server
from benchkit.link.netns import LinkSpec, Namespace

HERE = Path(__file__).resolve().parent


class Across:
    """A :class:`~benchkit.bench_targets.tools.Placement` across one link; owns its proxies."""

    def __init__(self, ns: Namespace, spec: LinkSpec, work: Path) -> None:
        self.ns = ns
        self.spec = spec
        self.work = work
        self.host = ns.server_ip
        # The namespace is fresh: every port is free there.
        self._ports = itertools.count(20000)
        self._proxies: list[Server] = []

    def prefix(self) -> list[str]:
        """``ip netns exec NAME``."""
        return self.ns.prefix()

    def port(self) -> int:
        """The next port of the namespace."""
        return next(self._ports)

    def expose(self, url: str) -> str:
        """A delaying proxy here to ``url``'s host and port; the URL through it."""
        parts = urlsplit(url)
        log = self.work / f"delay-{len(self._proxies)}.log"
        proxy = Server(
            str(HERE / "delay.py"),
            ["--to", parts.netloc, "--rtt-ms", f"{self.spec.rtt_ms:g}"],
            log,
            "listening",
        )
        self._proxies.append(proxy)
        local = proxy.lines[-1].split()[-1]
        return parts._replace(netloc=local).geturl()

    def sink(self) -> tuple[Server, str]:
        """A sink for the capacity transfer, in the namespace; its URL through the proxy."""
        port = self.port()
        server = Server(
            str(HERE / "sink.py"),
            ["--host", self.host, "--port", str(port)],
            self.work / "sink.log",
            "http://",
            self.prefix(),
        )
        return server, self.expose(f"http://{self.host}:{port}/sink")

    def close(self) -> None:
        """Stop the proxies."""
        for proxy in self._proxies:
            proxy.close()
        self._proxies.clear()
