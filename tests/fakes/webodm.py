"""A local WebODM-compatible HTTP server, for tests and for trying a config by hand.

It answers the part of WebODM's REST API (github.com/OpenDroneMap/WebODM) an uploading client
meets, with the same shapes, status codes and messages, taken from its source:

* ``app/api/urls.py``: ``/api/token-auth/`` (djangorestframework-jwt's ``obtain_jwt_token``),
  ``/api/projects/``, the nested ``/api/projects/{p}/tasks/`` router, ``.../download/{asset}``,
  ``.../images/download/{name}``, ``/api/processingnodes/``;
* ``webodm/settings.py``: tokens last ``JWT_EXPIRATION_DELTA`` (6 h) and go in
  ``Authorization: JWT <token>``; ``SessionAuthentication`` is the first authentication class,
  so a missing, bad or lapsed token is HTTP **403** (``{"detail": "Signature has expired."}``),
  never 401; wrong credentials at ``token-auth`` are HTTP 400 ``{"non_field_errors": [...]}``;
* ``app/api/projects.py``: ``filter_fields`` (``?name=``), a plain list when no ``page`` is
  asked; ``app/api/tasks.py`` (``TaskViewSet``): ``create`` with ``partial`` makes an empty
  task (201, the task's JSON, its id a uuid WebODM chooses), ``upload`` takes every file of the
  body (``flatten_files``; none: 400 ``["No files uploaded"]``), ``commit`` clears
  ``partial`` (no image: 400), ``list`` is not paginated; the task JSON carries ``status``
  (``nodeodm/status_codes.py``: 10 queued, 20 running, 30 failed, 40 completed, 50 canceled;
  null before a node took it), ``last_error``, ``running_progress`` (0-1), ``partial``,
  ``images_count``, ``name``, ``options``, ``processing_node``, ``created_at``;
* ``app/models/task.py`` (``handle_images_upload``): each file is written under its file name
  in the task's folder, opened ``wb+``, after Django read the whole body: a request cut short
  stores nothing.

Where versions differ there is a switch: ``collision="replace"`` (current: a name sent again
replaces the file) or ``"keep"`` (older versions stored an ``ImageUpload`` whose storage gives
the second file of a name a suffix, ``NAME_abc1234.JPG``: both are kept).

Faults, per route, counted, or drawn at random: ``status500`` and ``status502`` (not acted on),
``cut_mid_body`` (the connection closed half-way through the request; nothing stored),
``lost_reply`` (acted on, then closed without a reply), ``expired_token`` (403 "Signature has
expired." for that request). :meth:`FakeWebODM.expire_tokens` lapses every token given so far.

Run by hand: ``python -m tests.fakes.webodm --port 8000 --user admin --password admin``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import io
import json
import random
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import uuid as uuidlib
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.multipart import MultipartError, MultipartReader, boundary_of

QUEUED, RUNNING, FAILED, COMPLETED, CANCELED = 10, 20, 30, 40, 50
ROUTES = ("token", "projects", "tasks", "task", "create", "upload", "commit", "image", "other")
FAULT_KINDS = ("status500", "status502", "cut_mid_body", "lost_reply", "expired_token")
JWT_LIFETIME_S = 6 * 3600.0  # JWT_EXPIRATION_DELTA in webodm/settings.py
_CHUNK = 1 << 20


class _DropError(Exception):
    """Close the connection without a reply."""


@dataclass
class _Task:
    id: str
    project: int
    name: str
    options: Any
    processing_node: int | None
    created_at: str
    folder: Path
    partial: bool = True
    committed_at: float | None = None
    commits: int = 0
    fails: bool = False
    canceled: bool = False

    def files(self) -> dict[str, Path]:
        if not self.folder.is_dir():
            return {}
        return {p.name: p for p in sorted(self.folder.iterdir()) if p.is_file()}


@dataclass
class Faults:
    """Faults per route (``"any"``: every route), served in order, then a random draw."""

    _rules: list[list[Any]] = field(default_factory=list)  # [kind, route, times left]
    _random: tuple[float, tuple[str, ...], tuple[str, ...], random.Random] | None = None
    injected: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, route: str = "any", *, times: int | None = 1) -> None:
        """The next ``times`` requests on ``route`` (None: all of them) meet ``kind``."""
        if kind not in FAULT_KINDS or (route != "any" and route not in ROUTES):
            raise ValueError(f"unknown fault {kind!r} or route {route!r}")
        with self._lock:
            self._rules.append([kind, route, times])

    def random(
        self, rate: float, kinds: Sequence[str], routes: Sequence[str] = ("any",), seed: int = 0
    ) -> None:
        """Each request on ``routes`` meets one of ``kinds`` with probability ``rate``."""
        with self._lock:
            self._random = (rate, tuple(kinds), tuple(routes), random.Random(seed))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._random = None

    def take(self, route: str) -> str | None:
        with self._lock:
            for rule in self._rules:
                if rule[1] in ("any", route):
                    if rule[2] is not None:
                        rule[2] -= 1
                        if rule[2] == 0:
                            self._rules.remove(rule)
                    self.injected[rule[0]] += 1
                    return str(rule[0])
            if self._random is not None:
                rate, kinds, routes, rng = self._random
                if ("any" in routes or route in routes) and rng.random() < rate:
                    kind = rng.choice(kinds)
                    self.injected[kind] += 1
                    return kind
        return None


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    file: Path | None = None


def _json(obj: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(obj).encode())


def _detail(status: int, text: str) -> _Reply:
    return _json({"detail": text}, status)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeWebODM:
    """The server; its state is read by tests through the inspection methods."""

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        users: dict[str, str] | None = None,
        collision: Literal["replace", "keep"] = "replace",
        queued_s: float = 0.05,
        running_s: float = 0.2,
        nodes: dict[int, dict[str, Any]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="webodm-")
        self.root = Path(root if root is not None else cast(Any, self._tmp).name)
        self.users = dict(users or {"admin": "admin"})
        self.collision = collision
        self.queued_s = queued_s
        self.running_s = running_s
        self.nodes: dict[int, dict[str, Any]] = (
            nodes if nodes is not None else {1: {"online": True, "max_images": None}}
        )
        self.fail_processing = False
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self.sign_ins = 0
        self._key = secrets.token_bytes(16)
        self._expired_before = 0.0
        self._lock = threading.RLock()
        self._projects: dict[int, dict[str, Any]] = {}
        self._tasks: dict[str, _Task] = {}
        self._server = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------------

    def __enter__(self) -> FakeWebODM:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- inspection and switches --------------------------------------------------------

    def tasks_named(self, name: str) -> list[str]:
        with self._lock:
            return [t.id for t in self._tasks.values() if t.name == name]

    def files(self, task_id: str) -> dict[str, bytes]:
        """What the task holds, by file name."""
        with self._lock:
            task = self._tasks.get(task_id)
        return {} if task is None else {n: p.read_bytes() for n, p in task.files().items()}

    def task_info(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            return self._serialize(self._tasks[task_id])

    def commits(self, task_id: str) -> int:
        with self._lock:
            return self._tasks[task_id].commits

    def projects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._projects.values())

    def delete_task(self, task_id: str) -> None:
        """As the WebODM user who removes a task by hand."""
        with self._lock:
            self._tasks.pop(task_id)

    def expire_tokens(self) -> None:
        """Every token given so far has lapsed (as after ``JWT_EXPIRATION_DELTA``)."""
        with self._lock:
            self._expired_before = time.time() + 0.001
        time.sleep(0.002)

    # -- JWT (djangorestframework-jwt: HS256, payload with user_id, username, exp) --------

    def _token(self, username: str) -> str:
        now = time.time()
        head = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
        payload = {"user_id": 1, "username": username, "exp": int(now + JWT_LIFETIME_S)}
        body = _b64(json.dumps({**payload, "orig_iat": now}).encode())
        sig = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return f"{head}.{body}.{sig}"

    def _auth(self, header: str | None) -> _Reply | None:
        """None when the token is good; else DRF's 403 (see the module docstring)."""
        if not header or not header.startswith("JWT "):
            return _detail(403, "Authentication credentials were not provided.")
        token = header[4:].strip()
        try:
            head, body, sig = token.split(".")
            good = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest())
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return _detail(403, "Error decoding signature.")
        if not hmac.compare_digest(sig, good):
            return _detail(403, "Error decoding signature.")
        if payload["exp"] < time.time() or payload["orig_iat"] < self._expired_before:
            return _detail(403, "Signature has expired.")
        return None

    # -- requests ----------------------------------------------------------------------

    def route(self, method: str, path: str) -> tuple[str, list[str]]:
        """The route's name and its path parameters."""
        table = (
            ("POST", r"/api/token-auth/", "token"),
            ("GET|POST", r"/api/projects/", "projects"),
            ("GET", r"/api/projects/(\d+)/", "projects"),
            ("GET", r"/api/processingnodes/(\d+)/", "other"),
            ("GET", r"/api/projects/(\d+)/tasks/", "tasks"),
            ("POST", r"/api/projects/(\d+)/tasks/", "create"),
            ("GET", r"/api/projects/(\d+)/tasks/([^/]+)/", "task"),
            ("POST", r"/api/projects/(\d+)/tasks/([^/]+)/(upload|commit|cancel|restart)/", ""),
            ("GET", r"/api/projects/(\d+)/tasks/([^/]+)/images/download/(.+)", "image"),
            ("GET", r"/api/projects/(\d+)/tasks/([^/]+)/download/(.+)", "other"),
        )
        for methods, pattern, name in table:
            match = re.fullmatch(pattern, path)
            if method in methods.split("|") and match:
                groups = [unquote(g) for g in match.groups()]
                return (name or (groups[2] if groups[2] != "cancel" else "other")), groups
        return "unknown", []

    def handle(self, method: str, path: str, query: dict[str, list[str]], req: _Request) -> _Reply:
        route, args = self.route(method, path)
        if route == "unknown":
            return _detail(404, "Not found.")
        if route == "token":
            return self._sign_in(req)
        refused = self._auth(req.headers.get("authorization"))
        if refused is not None:
            return refused
        with self._lock:
            if path.startswith("/api/processingnodes/"):
                node = self.nodes.get(int(args[0]))
                return _detail(404, "Not found.") if node is None else _json({"id": 1, **node})
            if route == "projects":
                return self._projects_route(method, args, query, req)
            project = self._projects.get(int(args[0]))
            if project is None:
                return _detail(404, "Not found.")
            if route == "tasks":
                rows = [t for t in self._tasks.values() if t.project == project["id"]]
                return _json([self._serialize(t) for t in rows])
            if route == "create":
                return self._create(project["id"], req.json())
            task = self._tasks.get(args[1])
            if task is None or task.project != project["id"]:
                return _detail(404, "Not found.")
        if route == "upload":
            return self._upload(task, req)
        with self._lock:
            return self._task_route(route, task, args)

    def _sign_in(self, req: _Request) -> _Reply:
        form = req.form()
        if self.users.get(form.get("username", "")) != form.get("password") or not form.get(
            "password"
        ):
            return _json({"non_field_errors": ["Unable to log in with provided credentials."]}, 400)
        self.sign_ins += 1
        return _json({"token": self._token(form["username"])})

    def _projects_route(
        self, method: str, args: list[str], query: dict[str, list[str]], req: _Request
    ) -> _Reply:
        if args:
            project = self._projects.get(int(args[0]))
            return _detail(404, "Not found.") if project is None else _json(project)
        if method == "POST":
            name = req.json().get("name")
            if not name:
                return _json({"name": ["This field is required."]}, 400)
            pid = max(self._projects, default=0) + 1
            self._projects[pid] = {"id": pid, "name": name, "tasks": [], "created_at": _now()}
            return _json(self._projects[pid], 201)
        rows = list(self._projects.values())
        if "name" in query:
            rows = [p for p in rows if p["name"] == query["name"][0]]
        return _json(rows)

    def _create(self, project: int, body: dict[str, Any]) -> _Reply:
        if not body.get("partial"):
            return _json(["Cannot create task, you need at least 2 images"], 400)
        node = body.get("processing_node")
        if node is not None and node not in self.nodes:
            return _json(
                {"processing_node": [f'Invalid pk "{node}" - object does not exist.']}, 400
            )
        options = body.get("options", [])
        if isinstance(options, str):
            options = json.loads(options)  # a multipart form sends it as JSON text
        task_id = str(uuidlib.uuid4())
        folder = self.root / "project" / str(project) / "task" / task_id
        task = _Task(task_id, project, str(body.get("name") or ""), options, node, _now(), folder)
        self._tasks[task_id] = task
        return _json(self._serialize(task), 201)

    def _upload(self, task: _Task, req: _Request) -> _Reply:
        # Django reads the whole body (into FILE_UPLOAD_TEMP_DIR) before the view runs.
        staged = self.root / "tmp" / uuidlib.uuid4().hex
        staged.mkdir(parents=True)
        try:
            received = req.files(staged)
            if received is None:
                raise _DropError  # cut short: Django never calls the view
            if not received:
                return _json(["No files uploaded"], 400)
            with self._lock:
                if not task.partial:
                    pass  # WebODM takes files into any task; processing ignores late ones
                task.folder.mkdir(parents=True, exist_ok=True)
                uploaded = {}
                for name, path in received:
                    dest = task.folder / name
                    if self.collision == "keep" and dest.exists():
                        # Django's FileSystemStorage.get_available_name: an underscore and 7
                        # random characters before the extension.
                        stem, dot, ext = name.rpartition(".")
                        suffix = secrets.token_hex(4)[:7]
                        dest = task.folder / (
                            f"{stem}_{suffix}.{ext}" if dot else f"{name}_{suffix}"
                        )
                    path.replace(dest)
                    uploaded[dest.name] = dest.stat().st_size
            return _json({"success": True, "uploaded": uploaded})
        finally:
            for leftover in staged.iterdir():
                leftover.unlink()
            staged.rmdir()

    def _task_route(self, route: str, task: _Task, args: list[str]) -> _Reply:
        if route == "task":
            return _json(self._serialize(task))
        if route == "commit":
            if not task.files():
                return _json(["You need to upload at least 1 file before commit"], 400)
            task.commits += 1
            if task.partial:
                task.partial = False
                task.committed_at = time.monotonic()
                node = self.nodes.get(task.processing_node or 1, {})
                limit = node.get("max_images")
                task.fails = self.fail_processing or (
                    limit is not None and len(task.files()) > limit
                )
            return _json(self._serialize(task))
        if route == "restart":
            task.committed_at, task.fails, task.canceled = time.monotonic(), False, False
            return _json({"success": True})
        if args[2] == "cancel":
            task.canceled = True
            return _json({"success": True})
        if route == "image":
            path = task.files().get(args[2])
            return (
                _detail(404, "Not found.") if path is None else _Reply(200, b"", "image/jpeg", path)
            )
        # download/<asset>
        if self._status(task)[0] != COMPLETED or args[2] != "all.zip":
            return _detail(404, "Asset does not exist")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("odm_orthophoto/odm_orthophoto.tif", b"fake orthophoto")
        return _Reply(200, buf.getvalue(), "application/zip")

    def _status(self, task: _Task) -> tuple[int | None, float, str | None]:
        """(status, running_progress, last_error), from the time since commit."""
        if task.committed_at is None:
            return None, 0.0, None
        if task.canceled:
            return CANCELED, 0.0, None
        elapsed = time.monotonic() - task.committed_at
        if elapsed < self.queued_s:
            return QUEUED, 0.0, None
        running = elapsed - self.queued_s
        if running < self.running_s:
            return RUNNING, round(running / self.running_s, 3), None
        if task.fails:
            limit = self.nodes.get(task.processing_node or 1, {}).get("max_images")
            if limit is not None and len(task.files()) > limit:
                return FAILED, 1.0, f"Cannot process dataset: more than {limit} images"
            return FAILED, 1.0, "Cannot process dataset"
        return COMPLETED, 1.0, None

    def _serialize(self, task: _Task) -> dict[str, Any]:
        status, progress, error = self._status(task)
        return {
            "id": task.id,
            "project": task.project,
            "processing_node": task.processing_node,
            "name": task.name,
            "status": status,
            "last_error": error,
            "options": task.options,
            "partial": task.partial,
            "images_count": len(task.files()),
            "running_progress": progress,
            "upload_progress": 0.0,
            "created_at": task.created_at,
            "available_assets": ["all.zip"] if status == COMPLETED else [],
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- HTTP plumbing


class _Request:
    """The request's headers and body, read as the route needs it."""

    def __init__(self, handler: _Handler) -> None:
        self.headers = handler.headers
        self._rfile = handler.rfile
        self.left = int(handler.headers.get("content-length") or 0)
        self.limit: int | None = None  # cut_mid_body: the connection ends here

    def read(self, n: int) -> bytes:
        if self.limit is not None:
            n = min(n, self.limit)
        data = self._rfile.read(min(n, self.left)) if self.left and n else b""
        self.left -= len(data)
        if self.limit is not None:
            self.limit -= len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def complete(self) -> bool:
        return self.left == 0

    def raw(self) -> bytes:
        out = bytearray()
        while data := self.read(_CHUNK):
            out += data
        return bytes(out)

    def json(self) -> dict[str, Any]:
        if "json" not in self.headers.get("content-type", ""):
            return self.form()
        body = json.loads(self.raw() or b"{}")
        return body if isinstance(body, dict) else {}

    def form(self) -> dict[str, Any]:
        if "json" in self.headers.get("content-type", ""):
            return self.json()
        return {k: v[0] for k, v in parse_qs(self.raw().decode()).items()}

    def files(self, folder: Path) -> list[tuple[str, Path]] | None:
        """Every file part saved in ``folder``; None when the body was cut short."""
        boundary = boundary_of(self.headers.get("content-type", ""))
        if boundary is None:
            self.drain()
            return []
        reader = MultipartReader(self.read, boundary)
        out: list[tuple[str, Path]] = []
        try:
            while (part := reader.next_part()) is not None:
                if not part.filename:
                    part.read_all()
                    continue
                path = folder / f"{len(out)}.upload"
                with path.open("wb") as fh:
                    for chunk in part.chunks():
                        fh.write(chunk)
                out.append((part.filename, path))
        except MultipartError:
            return None if not self.complete() else []
        return out if self.complete() else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: FakeWebODM) -> None:
        self.app = app
        super().__init__(address, _Handler)


_PAGES = {500: b"<h1>Server Error (500)</h1>", 502: b"<html><h1>502 Bad Gateway</h1></html>"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        app = cast(_Server, self.server).app
        url = urlsplit(self.path)
        route, _ = app.route(self.command, url.path)
        app.requests[route] += 1
        req = _Request(self)
        fault = app.faults.take(route)
        try:
            if fault == "cut_mid_body":
                req.limit = req.left // 2
                req.drain()
                raise _DropError
            if fault in ("status500", "status502"):
                req.drain()
                status = 500 if fault == "status500" else 502
                reply = _Reply(status, _PAGES[status], "text/html")
            elif fault == "expired_token":
                req.drain()
                reply = _detail(403, "Signature has expired.")
            else:
                reply = app.handle(self.command, url.path, parse_qs(url.query), req)
                req.drain()
            if fault == "lost_reply":
                raise _DropError
        except _DropError:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        with contextlib.suppress(OSError):
            size = reply.file.stat().st_size if reply.file is not None else len(reply.body)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if reply.file is not None:
                with reply.file.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        self.wfile.write(chunk)
            else:
                self.wfile.write(reply.body)

    do_GET = do_POST = _dispatch  # noqa: N815 - stdlib naming


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C (or SIGTERM), printing the URL first."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.webodm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--root", default=None, help="where tasks are stored (default: temp)")
    parser.add_argument("--collision", choices=("replace", "keep"), default="replace")
    parser.add_argument("--running-s", type=float, default=10.0)
    parser.add_argument(
        "--upload-fault-rate", type=float, default=0.0, help="share of uploads meeting a fault"
    )
    parser.add_argument("--upload-fault", choices=FAULT_KINDS, default="status502")
    args = parser.parse_args(argv)
    app = FakeWebODM(
        args.root,
        users={args.user: args.password},
        collision=args.collision,
        queued_s=1.0,
        running_s=args.running_s,
        host=args.host,
        port=args.port,
    )
    if args.upload_fault_rate:
        app.faults.random(args.upload_fault_rate, [args.upload_fault], ["upload"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with app:
        print(app.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
