"""The status page, served by the daemon: datasets and files in a browser, a JSON API, metrics.

:func:`serve` is one more task of the daemon's session: it listens on ``[web] listen``
(``127.0.0.1:8710`` unless told otherwise), reads the journal on a read-only connection of
its own (:mod:`daemon.web.reader`), and passes actions to the daemon as the command line does
(:mod:`daemon.control`). The parts: :mod:`daemon.web.http` (connections and requests),
:mod:`daemon.web.auth` (password, sessions, forged requests), :mod:`daemon.web.app` (what
each address answers), :mod:`daemon.web.pages` (the HTML), :mod:`daemon.web.metrics`
(Prometheus). A page that cannot be served never stops the uploads: it is said in the log and
tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import structlog

from daemon.config import WebSettings
from daemon.errors import ConfigError
from daemon.web.app import App
from daemon.web.auth import Guard
from daemon.web.http import HttpServer
from daemon.web.reader import JournalReader

log = structlog.get_logger("dronesync.web")

URL_FILE = "web.json"  # where the page is, for scripts and tests (port 0 picks one)
BIND_RETRY_S = 30.0


def page_url(host: str, port: int) -> str:
    """The address to open for a listening ``host:port``."""
    if host in ("0.0.0.0", ""):  # noqa: S104 (naming the wildcard, not binding it)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve(web: WebSettings, state_dir: Path, journal_path: Path) -> None:
    """Serve the status page until cancelled; it never returns by itself (off: it waits)."""
    forever = asyncio.Event()
    address = web.address
    if address is None:
        await forever.wait()
        return
    try:
        guard = Guard.from_settings(web)
    except ConfigError as exc:  # the secret went away since `config check`
        log.error("status page not served", problem="; ".join(exc.problems))  # noqa: TRY400
        await forever.wait()
        return
    reader = JournalReader(journal_path, state_dir)
    server = HttpServer(App(guard, reader, state_dir).handle)
    url_file = state_dir / URL_FILE
    try:
        while True:
            try:
                bound = await server.start(*address)
                break
            except OSError as exc:
                log.error(  # noqa: TRY400 (expected: one line, no traceback)
                    "status page not served: cannot listen; tried again",
                    listen=web.listen,
                    error=exc.strerror or str(exc),
                    retry_in_s=BIND_RETRY_S,
                )
                await asyncio.sleep(BIND_RETRY_S)
        url = page_url(bound[0][0], bound[0][1])
        with contextlib.suppress(OSError):
            tmp = state_dir / f".{URL_FILE}.tmp"
            tmp.write_text(json.dumps({"url": url}), encoding="utf-8")
            tmp.replace(url_file)
        log.info("status page", url=url, password=guard.password is not None)
        await forever.wait()
    finally:
        url_file.unlink(missing_ok=True)
        await server.close()
        await reader.close()


__all__ = ["URL_FILE", "page_url", "serve"]
