"""A small HTTP/1.1 server on asyncio streams: enough for one page, its API and its events.

Requests are read with strict limits (head size, header count, body size, idle time) and
handed to one handler coroutine; keep-alive is honoured, bodies are sized by Content-Length
only. A response either has a body or streams one (server-sent events) until the client goes
or the server closes. :meth:`HttpServer.close` ends every connection, streams included.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

log = structlog.get_logger("dronesync.web")

HEAD_LIMIT = 16 * 1024  # request line and headers
MAX_HEADERS = 64
MAX_BODY = 64 * 1024  # forms and JSON actions are tiny
IDLE_S = 30.0  # a kept-alive connection with no new request is closed after this
READ_S = 10.0  # a request's head and body must arrive within this
MAX_CONNECTIONS = 64
# Sent with every answer: no caching of live figures, no sniffing, no framing.
COMMON_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


class RequestError(ValueError):
    """The request cannot be read: it is answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One request as the handler sees it; header names are lower case."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""
    path: str = field(init=False)
    query: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        split = urlsplit(self.target)
        self.path = split.path or "/"
        self.query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}

    @property
    def is_form(self) -> bool:
        """The body is an HTML form's (what a page on any origin can send)."""
        kind = self.headers.get("content-type", "").split(";")[0].strip().lower()
        return kind in {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}

    def form(self) -> dict[str, str]:
        """The fields of an url-encoded form body (first value of each)."""
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}

    def cookies(self) -> dict[str, str]:
        """The request's cookies, by name."""
        found: dict[str, str] = {}
        for part in self.headers.get("cookie", "").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                found.setdefault(name, value)
        return found


@dataclass
class Response:
    """An answer: a body, or a stream of chunks (the connection closes after a stream)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def text(cls, status: int, message: str) -> Response:
        """A plain-text answer."""
        return cls(status, (message + "\n").encode())

    @classmethod
    def json(cls, status: int, document: Any) -> Response:
        """A JSON answer."""
        body = json.dumps(document, indent=1).encode()
        return cls(status, body, "application/json")

    @classmethod
    def html(cls, status: int, page: str, headers: list[tuple[str, str]] | None = None) -> Response:
        """An HTML answer."""
        return cls(status, page.encode(), "text/html; charset=utf-8", headers or [])

    @classmethod
    def redirect(cls, location: str, headers: list[tuple[str, str]] | None = None) -> Response:
        """303 See Other: after a form's POST, the browser GETs ``location``."""
        return cls(303, b"", headers=[("Location", location), *(headers or [])])


Handler = Callable[[Request], Awaitable[Response]]


def parse_head(head: bytes) -> Request:
    """The request line and headers of one request (without its body)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover (latin-1 decodes every byte)
        raise RequestError(400, "undecodable request") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise RequestError(400, "malformed request line")
    method, target, _ = parts
    if not target.startswith("/"):
        raise RequestError(400, "the target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise RequestError(400, "malformed header")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if len(headers) > MAX_HEADERS:
        raise RequestError(431, "too many headers")
    if parts[2] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        headers["connection"] = "close"  # HTTP/1.0 closes after each answer unless asked
    if "transfer-encoding" in headers:
        raise RequestError(501, "chunked request bodies are not accepted; send Content-Length")
    return Request(method.upper(), target, headers)


def _head_bytes(response: Response, *, keep_alive: bool) -> bytes:
    phrase = HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {phrase}", f"Date: {email.utils.formatdate(usegmt=True)}"]
    lines.append(f"Content-Type: {response.content_type}")
    if response.stream is None:
        lines.append(f"Content-Length: {len(response.body)}")
    lines.extend(f"{name}: {value}" for name, value in (*COMMON_HEADERS, *response.headers))
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """Connections, requests and answers; what each request means is the handler's."""

    def __init__(self, handler: Handler, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self._handler = handler
        self._max = max_connections
        self._connections: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen on ``host:port``; the addresses bound (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=HEAD_LIMIT)
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def close(self) -> None:
        """Stop listening and end every connection, open streams included."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 (a callback of start_server runs in a task)
        self._connections.add(task)
        try:
            if len(self._connections) > self._max:
                await self._send(writer, Response.text(503, "too many connections"), False)
                return
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # close() ends it. Ended as cancelled, the task would be reported by asyncio's
            # stream callback on Python 3.11 as an error with a traceback.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection, one after the other, until either side closes."""
        while True:
            try:
                async with asyncio.timeout(IDLE_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._send(writer, Response.text(431, "request head too large"), False)
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            try:
                request = parse_head(head)
                request.body = await self._body(reader, request)
            except RequestError as exc:
                await self._send(writer, Response.text(exc.status, str(exc)), False)
                return
            response = await self._answer(request)
            keep_alive = (
                response.stream is None
                and "close" not in request.headers.get("connection", "").lower()
            )
            await self._send(writer, response, keep_alive, head_only=request.method == "HEAD")
            if not keep_alive:
                return

    @staticmethod
    async def _body(reader: asyncio.StreamReader, request: Request) -> bytes:
        length_text = request.headers.get("content-length", "0")
        if not length_text.isdigit():
            raise RequestError(400, "Content-Length is not a number")
        length = int(length_text)
        if length > MAX_BODY:
            raise RequestError(413, f"request body over {MAX_BODY} bytes")
        if not length:
            return b""
        async with asyncio.timeout(READ_S):
            return await reader.readexactly(length)

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception as exc:  # an answer is owed whatever went wrong
            log.exception("status page request failed", path=request.path, error=str(exc))
            return Response.text(500, "internal error; see the daemon's log")

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        response: Response,
        keep_alive: bool,
        *,
        head_only: bool = False,
    ) -> None:
        writer.write(_head_bytes(response, keep_alive=keep_alive))
        if not head_only:
            writer.write(response.body)
        await writer.drain()
        if response.stream is None or head_only:
            return
        try:
            async for chunk in response.stream:
                writer.write(chunk)
                await writer.drain()
        finally:
            close = getattr(response.stream, "aclose", None)
            if close is not None:
                await close()
