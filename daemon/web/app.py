"""What each address of the status page answers, and who may ask.

========================================  =====================================================
``GET /``                                 every dataset: state, progress, rate, ETA, errors
``GET /datasets/NAME``                    one dataset's files, ``?status=failed&page=2``
``GET /events?view=PATH``                 server-sent events: the live part of PATH's page
``GET /api/status``                       the ``status --json`` document (``?files=1``,
                                          ``?dataset=NAME``)
``POST /api/retry``                       ``dronesync retry --all``
``POST /api/datasets/NAME/ACTION``        ``dronesync retry|process|cancel NAME``
``GET /metrics``                          Prometheus text
``GET, POST /login``, ``POST /logout``    the password form, when there is a password
========================================  =====================================================

An action does what the command line does: it leaves a request for the daemon
(:mod:`daemon.control`) and waits for its answer, which it passes on.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from daemon import control
from daemon.journal import Journal
from daemon.status import file_entry, snapshot
from daemon.web import metrics, pages
from daemon.web.auth import Guard
from daemon.web.http import Request, Response
from daemon.web.reader import JournalReader

ANSWER_TIMEOUT_S = 2.5  # as long as `dronesync retry` waits for the daemon
EVENT_S = 1.0
KEEPALIVE_EVERY = 15  # events: a comment after this many quiet seconds keeps proxies open
ACTIONS = ("retry", "process", "cancel")
MADE_MAX = 64
T = typing.TypeVar("T")


def _local(path: str | None, default: str = "/") -> str:
    """``path`` if it stays on this server (a form's ``next``), else ``default``."""
    if path and path.startswith("/") and not path.startswith("//") and "\\" not in path:
        return path
    return default


def _with_query(path: str, **values: str) -> str:
    return path + ("&" if "?" in path else "?") + urlencode(values)


def _page_number(text: str | None) -> int:
    return int(text) if text and text.isdigit() and 0 < int(text) < 1_000_000 else 1


class App:
    """The handler the HTTP server calls for every request."""

    def __init__(self, guard: Guard, reader: JournalReader, state_dir: Path) -> None:
        self.guard = guard
        self.reader = reader
        self.state_dir = state_dir
        # What was made of the current status document (its JSON, the index for a session):
        # made once per document, not once per request; the event loop is the uploads' too.
        self._made_from: object = None
        self._made: dict[tuple[str, ...], Any] = {}

    def _once(self, document: object, key: tuple[str, ...], make: Callable[[], T]) -> T:
        """``make()``, remembered for as long as ``document`` is the current one."""
        if document is not self._made_from or len(self._made) >= MADE_MAX:
            self._made_from = document
            self._made = {}
        if key not in self._made:
            self._made[key] = make()
        return typing.cast(T, self._made[key])

    async def handle(self, request: Request) -> Response:
        """Check who asks and from where, then answer."""
        response = await self._handle(request)
        if response.content_type.startswith("text/html"):
            response.headers.append(("Content-Security-Policy", pages.CSP))
        return response

    async def _handle(self, request: Request) -> Response:
        if not self.guard.host_ok(request):
            return Response.text(
                403, "this page answers to its own address only (http://127.0.0.1:PORT/)"
            )
        path = request.path
        if path == "/login":
            return await self._login(request)
        api = path.startswith(("/api/", "/metrics"))
        how = self.guard.session(request)
        if how is None:
            if api or path == "/events":
                return Response(
                    401,
                    b'{"error": "password required: Authorization: Bearer PASSWORD"}\n',
                    "application/json",
                    [("WWW-Authenticate", 'Bearer realm="dronesync"')],
                )
            return Response.redirect(_with_query("/login", next=request.target))
        if request.method == "POST":
            return await self._post(request)
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD, POST")])
        return await self._get(request, how)

    # -- reading ---------------------------------------------------------------------------

    async def _get(self, request: Request, how: str) -> Response:
        path = request.path
        if path == "/api/status":
            return await self._api_status(request)
        if path == "/metrics":
            body = await self.reader.call(lambda j: metrics.exposition(j, self.reader.live()))
            return Response(200, body, metrics.CONTENT_TYPE)
        if path == "/events":
            return self._events(request)
        fragment = await self.fragment(request)
        if fragment is None:
            return Response.html(404, pages.not_found("No such page or dataset."))
        title = "dronesync" if path == "/" else f"dronesync: {unquote(path[10:])}"
        logout = ""
        if how == "cookie":
            token = self.guard.csrf_token(request)
            logout = (
                '<form method=post action="/logout">'
                f"<input type=hidden name=csrf value={pages.e(token)}>"
                "<button>Log out</button></form>"
            )
        page = pages.layout(title, logout + pages.live_section(fragment))
        return Response.html(200, page)

    async def fragment(self, request: Request) -> str | None:
        """The live part of the page at ``request``'s path, or None if there is none."""
        csrf = self.guard.csrf_token(request)
        flash = request.query.get("done")
        if request.path == "/":
            document = await self.reader.status()
            return self._once(
                document,
                ("index", csrf, flash or ""),
                lambda: pages.index_fragment(document, csrf, flash),
            )
        if not request.path.startswith("/datasets/"):
            return None
        name = unquote(request.path.removeprefix("/datasets/"))
        status = request.query.get("status")
        status = status if status in pages.STATUSES else None
        page = _page_number(request.query.get("page"))
        live = self.reader.live()
        # The dataset's figures as the index shows them (at most a second old); its files fresh.
        known = [ds for ds in (await self.reader.status())["datasets"] if ds["name"] == name]

        def read(journal: Journal) -> str | None:
            row = journal.dataset_by_name(name)
            if row is None:
                return None
            dataset = known[0] if known else snapshot(journal, live, dataset=name)["datasets"][0]
            offset = (page - 1) * pages.PAGE_SIZE
            files = journal.files_page(row.id, status, offset, pages.PAGE_SIZE)
            rows = [file_entry(journal, f) for f in files]
            return pages.dataset_fragment(
                dataset, rows, status=status, page=page, csrf=csrf, flash=flash
            )

        return await self.reader.call(read)

    async def _api_status(self, request: Request) -> Response:
        dataset = request.query.get("dataset") or None
        files = request.query.get("files", "") not in ("", "0", "false")
        every = request.query.get("all", "") not in ("", "0", "false")
        if dataset is None and not files and not every:
            current = await self.reader.status()
            body = self._once(current, ("json",), lambda: Response.json(200, current).body)
            return Response(200, body, "application/json")
        live = self.reader.live()

        def read(journal: Journal) -> dict[str, Any] | None:
            if dataset is not None and journal.dataset_by_name(dataset) is None:
                return None
            return snapshot(journal, live, dataset=dataset, files=files, every=every)

        document = await self.reader.call(read)
        if document is None:
            return Response.json(404, {"error": f"no dataset named {dataset!r}"})
        return Response.json(200, document)

    def _events(self, request: Request) -> Response:
        view = request.query.get("view", "/")
        if not view.startswith("/") or view.startswith("//"):
            return Response.text(400, "view must be a path of this page")
        viewed = Request("GET", view, request.headers)

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            last: str | None = None
            quiet = 0
            while True:
                fragment = await self.fragment(viewed)
                if fragment is not None and fragment != last:
                    last = fragment
                    quiet = 0
                    yield "".join(f"data: {line}\n" for line in fragment.split("\n")).encode()
                    yield b"\n"
                else:
                    quiet += 1
                    if quiet >= KEEPALIVE_EVERY:
                        quiet = 0
                        yield b": still here\n\n"
                await asyncio.sleep(EVENT_S)

        return Response(200, content_type="text/event-stream", stream=stream())

    # -- acting ----------------------------------------------------------------------------

    async def _post(self, request: Request) -> Response:
        form = request.form() if request.is_form else {}
        if not self.guard.origin_ok(request):
            return Response.text(403, "refused: this request comes from another site's page")
        if not self.guard.csrf_ok(request, form):
            return Response.text(403, "refused: the form's token is missing or stale; reload")
        path = request.path
        if path == "/logout":
            return Response.redirect("/", [self.guard.cookie_header("")])
        action, dataset = self._action(path)
        if action is None:
            return Response.text(404, "no such action")
        status, answer = await self.act(action, dataset)
        if request.is_form:
            back = _local(form.get("next"))
            return Response.redirect(_with_query(back, done=answer["message"]))
        return Response.json(status, answer)

    @staticmethod
    def _action(path: str) -> tuple[str | None, str | None]:
        if path == "/api/retry":
            return "retry", None
        head, _, action = path.rpartition("/")
        if head.startswith("/api/datasets/") and action in ACTIONS:
            name = unquote(head.removeprefix("/api/datasets/"))
            if name:
                return action, name
        return None, None

    async def act(self, action: str, dataset: str | None) -> tuple[int, dict[str, Any]]:
        """What ``dronesync ACTION [DATASET]`` does; the HTTP status and the answer."""
        answer: dict[str, Any] = {"action": action, "dataset": dataset}
        if dataset is not None:
            exists = await self.reader.call(lambda j: j.dataset_by_name(dataset) is not None)
            if not exists:
                return 404, {**answer, "done": False, "message": f"no dataset named {dataset!r}"}
        kind = typing.cast(control.Action, action)
        request = await asyncio.to_thread(control.submit, self.state_dir, kind, dataset)
        message = await asyncio.to_thread(control.wait_answer, request, ANSWER_TIMEOUT_S)
        if message is None:
            queued = "queued: the daemon has not answered yet; it applies this shortly"
            return 202, {**answer, "done": False, "queued": True, "message": queued}
        if message.startswith("not done"):
            return 409, {**answer, "done": False, "queued": False, "message": message}
        return 200, {**answer, "done": True, "queued": False, "message": message}

    async def _login(self, request: Request) -> Response:
        if self.guard.password is None:
            return Response.redirect("/")
        form = request.form() if request.is_form else {}
        back = _local(form.get("next") or request.query.get("next"))
        if request.method != "POST":
            return Response.html(200, pages.login_page(None, back))
        if not self.guard.origin_ok(request):
            return Response.text(403, "refused: this request comes from another site's page")
        if self.guard.throttled():
            return Response.html(429, pages.login_page("Too many attempts: wait a minute.", back))
        cookie = self.guard.login(form.get("password", ""))
        if cookie is None:
            return Response.html(401, pages.login_page("Wrong password.", back))
        return Response.redirect(back, [self.guard.cookie_header(cookie)])
