"""The status page, served by the daemon: datasets and files in a browser, a JSON API, metrics.

:func:`serve` is one more task of the daemon's session: it listens on ``[web] listen``
(``127.0.0.1:8710`` unless told otherwise), reads the journal on a read-only connection of
its own (:mod:`daemon.web.reader`), and passes actions to the daemon as the command line does
(:mod:`daemon.control`). The parts: :mod:`daemon.web.http` (connections and requests),
:mod:`daemon.web.auth` (password, sessions, forged requests), :mod:`daemon.web.app` (what
each address answers), :mod:`daemon.web.pages` (the HTML), :mod:`daemon.web.metrics`
(Prometheus). The server runs on an event loop of its own, in a thread. A page that cannot
be served never stops the uploads: it is said in the log and tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path

import structlog

from daemon.clock import wait_event
from daemon.config import WebSettings
from daemon.errors import ConfigError
from daemon.web.app import App
from daemon.web.auth import Guard
from daemon.web.http import HttpServer
from daemon.web.reader import JournalReader

log = structlog.get_logger("dronesync.web")

URL_FILE = "web.json"  # where the page is, for scripts and tests (port 0 picks one)
BIND_RETRY_S = 30.0
STOP_S = 10.0


def page_url(host: str, port: int) -> str:
    """The address to open for a listening ``host:port``."""
    if host in ("0.0.0.0", ""):  # noqa: S104 (naming the wildcard, not binding it)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve(web: WebSettings, state_dir: Path, journal_path: Path) -> None:
    """Serve the status page until cancelled; it never returns by itself (off: it waits).

    The page has an event loop of its own, in a thread: a request never waits for a turn of
    the daemon's loop, which may be busy with a card, and answering it takes none of that
    loop's turns. Cancelling this task ends that loop and its thread.
    """
    forever = asyncio.Event()
    if web.address is None:
        await forever.wait()
        return
    try:
        guard = Guard.from_settings(web)
    except ConfigError as exc:  # the secret went away since `config check`
        log.error("status page not served", problem="; ".join(exc.problems))  # noqa: TRY400
        await forever.wait()
        return
    page = PageThread(web, guard, state_dir, journal_path)
    page.start()
    try:
        await forever.wait()
    finally:
        await asyncio.to_thread(page.stop)


class PageThread:
    """The page's server and its event loop, in a thread, until :meth:`stop`."""

    def __init__(self, web: WebSettings, guard: Guard, state_dir: Path, journal_path: Path) -> None:
        self._web = web
        self._guard = guard
        self._state_dir = state_dir
        self._journal_path = journal_path
        self._thread = threading.Thread(target=self._main, name="web", daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        """Start the thread; it listens as soon as it can."""
        self._thread.start()
        self._started.wait(STOP_S)

    def stop(self) -> None:
        """End the server, its connections and its thread (blocks up to :data:`STOP_S`)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(STOP_S)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = stopping = asyncio.Event()
        self._started.set()
        address = self._web.address
        assert address is not None  # noqa: S101 (serve() starts no thread when off)
        reader = JournalReader(self._journal_path, self._state_dir)
        server = HttpServer(App(self._guard, reader, self._state_dir).handle)
        url_file = self._state_dir / URL_FILE
        try:
            while not stopping.is_set():
                try:
                    bound = await server.start(*address)
                    break
                except OSError as exc:
                    log.error(  # noqa: TRY400 (expected: one line, no traceback)
                        "status page not served: cannot listen; tried again",
                        listen=self._web.listen,
                        error=exc.strerror or str(exc),
                        retry_in_s=BIND_RETRY_S,
                    )
                    await wait_event(stopping, BIND_RETRY_S)
            else:
                return
            url = page_url(bound[0][0], bound[0][1])
            with contextlib.suppress(OSError):
                tmp = self._state_dir / f".{URL_FILE}.tmp"
                tmp.write_text(json.dumps({"url": url}), encoding="utf-8")
                tmp.replace(url_file)
            log.info("status page", url=url, password=self._guard.password is not None)
            await stopping.wait()
        finally:
            url_file.unlink(missing_ok=True)
            await server.close()
            await reader.close()


__all__ = ["URL_FILE", "page_url", "serve"]
