"""A local NodeODM-compatible HTTP server, for tests and for trying a config by hand.

It reproduces the parts of NodeODM's REST API (github.com/OpenDroneMap/NodeODM: ``index.js``,
``libs/taskNew.js``, ``libs/Task.js``, ``libs/TaskManager.js``, ``libs/odmInfo.js``,
``libs/auth/*``) that an uploading client meets, with the same JSON shapes and error strings,
and above all with the same pitfalls:

* every application error is HTTP 200 with ``{"error": "..."}``;
* the token is read from the ``?token=`` query parameter only, headers are ignored;
* ``/task/new/init`` reads multipart fields only (``multer().none()``); an urlencoded body is
  silently ignored, so the task gets no name and no options;
* ``set-uuid`` is refused only while a *committed* task has that uuid; re-using it before commit
  is accepted and keeps every file already uploaded;
* a file name already in the task is stored as ``NAME_.EXT`` (then ``NAME__.EXT``...) and counts
  as an image; there is no call that lists uploaded files;
* an upload cut off mid-body (client gone, connection broken) leaves the truncated file in the
  task, under its final name, and commit processes it;
* after commit, or for an unknown uuid, uploads get ``Invalid uuid (not found)``; before commit
  the task manager does not know the uuid (``<uuid> not found``);
* commit answers ``{"uuid"}`` at once; setup, the max-images check and processing happen later:
  status 20 (setup) -> 10 (queued) -> 20 (running) -> 40, or 30 with ``errorMessage``; a
  finished or failed task reports progress 100;
* idle keep-alive connections are closed after 5 s, like Node's HTTP server.

What a real node (2.2.4, ``--test`` mode) was seen doing has switches of its own, named after
the node's: ``drop_uploads`` (``--test_drop_uploads``: ``preUpload`` in ``libs/taskNew.js``
answers about half the uploads ``res.sendStatus(500)`` before multer reads the body; nothing is
stored), ``max_images`` (``--max_images``: reported as ``maxImages`` by ``GET /info``, null
without a limit; a larger task fails only after commit) and ``fail_message=""`` with
``fail_processing`` (``--test_fail_tasks``: the task fails with an empty ``errorMessage``, its
output lines readable with ``GET /task/{uuid}/output?line=-N``, ``Task.getOutput`` slicing). How
Node's server ends a request whose body nobody read is not documented: ``drop_style`` answers
both ways a client may meet, ``"keepalive"`` (the body read and dropped after the answer, as
Node's ``req._dump()``) and ``"close"`` (``Connection: close``, the body drained, then closed).
``/task/remove`` knows committed tasks only (``TaskManager.remove``): for a task never
committed it answers ``{"success": false, "error": "<uuid> not found"}`` and ``tmp/<uuid>``
stays, as on the real node, until its hourly sweep (``removeStaleUploads``,
``cleanup_uploads_after``), which is not simulated.

Processing is simulated with configurable durations; the ``all.zip`` asset is a small real zip.
Faults (HTTP 500, ``{"error"}``, a connection cut mid-body or after the body, a stall, an HTML
page) can be injected per route, counted, and drawn at random for soak tests. Inspection
methods return copies, so tests can look at what the node really stored.

Run by hand: ``python -m tests.fakes.nodeodm --port 3000 [--token TOKEN] [--root DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import urllib.request
import uuid as uuidlib
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes import multipart
from tests.fakes.multipart import MultipartError, MultipartReader, Part, TruncatedBodyError

log = logging.getLogger(__name__)

QUEUED = 10
RUNNING = 20
FAILED = 30
COMPLETED = 40
CANCELED = 50

CHUNK = 1 << 20
ROUTES = (
    "node_info",
    "options",
    "list",
    "init",
    "upload",
    "commit",
    "new",
    "info",
    "output",
    "download",
    "cancel",
    "remove",
    "restart",
    "unknown",
)
FAULT_KINDS = (
    "status500",
    "error200",
    "error200_early",
    "cut_mid_body",
    "cut_after_body",
    "stall",
    "garbage",
)

# libs/taskNew.js assignUUID: only these uuids are accepted in set-uuid.
_SET_UUID = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I
)
# ODM's supported image extensions: other files do not count towards "enough images".
_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".raw", ".dng", ".nef"}
_GARBAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


# --------------------------------------------------------------------------- inspection views


@dataclass(frozen=True)
class FileView:
    """A file the node stored for a task (name on disk is the key in ``TaskView.files``)."""

    size: int
    sha256: str
    original_name: str
    truncated: bool


@dataclass(frozen=True)
class TaskView:
    """What the node holds for one uuid, from init on (uncommitted and removed tasks too)."""

    uuid: str
    name: str | None
    options: list[dict[str, Any]]
    committed: bool
    status_code: int | None
    progress: float
    error_message: str | None
    files: dict[str, FileView]
    commit_calls: int
    removed: bool
    init_calls: int = 0
    upload_calls: int = 0
    images_count: int | None = None
    webhook: str | None = None


# --------------------------------------------------------------------------- fault injection


@dataclass
class _Rule:
    kind: str
    route: str
    times: int | None
    skip: int
    delay_s: float
    at_bytes: int | None
    message: str
    before: bool


@dataclass(frozen=True)
class Fault:
    """One injected fault, as handed to the request that gets it."""

    kind: str
    delay_s: float = 5.0
    at_bytes: int | None = None
    message: str = "Injected error"
    before: bool = False


class Faults:
    """Thread-safe fault injection, per route (``"any"`` matches every route).

    Kinds: ``status500`` (HTTP 500, request not acted on), ``error200`` (200 ``{"error"}``,
    request not acted on), ``error200_early`` (the same, answered before reading the body, then
    the connection closed: the client's sending breaks off), ``cut_mid_body`` (read part of
    the body, keep what an upload stored so far, close with no reply), ``cut_after_body`` (act
    on the request, then close with no reply), ``stall`` (sleep ``delay_s`` after acting on the
    request, or before with ``before=True``; cut short when the server stops), ``garbage``
    (200 ``text/html``, not acted on).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._random: tuple[float, tuple[str, ...], tuple[str, ...], random.Random, Fault] | None
        self._random = None
        self._injected: Counter[str] = Counter()

    @staticmethod
    def _check(kind: str, route: str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if route != "any" and route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; known: any, {', '.join(ROUTES)}")

    def add(
        self,
        kind: str,
        route: str = "any",
        *,
        times: int | None = 1,
        skip: int = 0,
        delay_s: float = 5.0,
        at_bytes: int | None = None,
        message: str = "Injected error",
        before: bool = False,
    ) -> None:
        """Inject ``kind`` into the next ``times`` requests on ``route`` (``None``: all of them).

        ``skip`` lets that many matching requests through first. ``at_bytes`` is where
        ``cut_mid_body`` cuts (default: half the declared body, or 64 KiB when chunked).
        """
        self._check(kind, route)
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every request)")
        rule = _Rule(kind, route, times, skip, delay_s, at_bytes, message, before)
        with self._lock:
            self._rules.append(rule)

    def random(
        self,
        rate: float,
        kinds: Sequence[str] = ("status500", "error200", "cut_mid_body", "cut_after_body"),
        *,
        routes: Sequence[str] = ("any",),
        seed: int | None = None,
        delay_s: float = 1.0,
        at_bytes: int | None = None,
    ) -> None:
        """Give each request on ``routes`` a fault drawn from ``kinds`` with probability ``rate``.

        Rules added with :meth:`add` are served first. Calling again replaces the draw.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if not kinds:
            raise ValueError("kinds must not be empty")
        for kind in kinds:
            for route in routes:
                self._check(kind, route)
        template = Fault(kind="", delay_s=delay_s, at_bytes=at_bytes)
        with self._lock:
            self._random = (rate, tuple(kinds), tuple(routes), random.Random(seed), template)

    def clear(self) -> None:
        """Remove every rule and the random draw (the counts stay)."""
        with self._lock:
            self._rules.clear()
            self._random = None

    @property
    def injected(self) -> dict[str, int]:
        """How many faults of each kind were injected so far."""
        with self._lock:
            return dict(self._injected)

    @property
    def pending(self) -> int:
        """How many explicit rules are still waiting (rules with ``times=None`` count once)."""
        with self._lock:
            return len(self._rules)

    def take(self, route: str) -> Fault | None:
        """The fault for one request on ``route``, if any (consumes it)."""
        with self._lock:
            for rule in self._rules:
                if rule.route not in {"any", route}:
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                self._injected[rule.kind] += 1
                return Fault(rule.kind, rule.delay_s, rule.at_bytes, rule.message, rule.before)
            if self._random is not None:
                rate, kinds, routes, rng, template = self._random
                if ("any" in routes or route in routes) and rng.random() < rate:
                    kind = rng.choice(kinds)
                    self._injected[kind] += 1
                    return Fault(kind, template.delay_s, template.at_bytes)
        return None


# --------------------------------------------------------------------------- ODM options


@dataclass(frozen=True)
class _Option:
    name: str
    type: str
    value: str
    domain: str | list[str]
    help: str


# A few real ODM options, shaped as NodeODM's odmInfo.getOptions() builds them (values are
# strings; bool options have an empty domain, so no domain check applies to them).
_QUALITY = ["ultra", "high", "medium", "low", "lowest"]
_OPTIONS = (
    _Option("auto-boundary", "bool", "false", "", "Automatically set a boundary."),
    _Option("cog", "bool", "false", "", "Create Cloud-Optimized GeoTIFFs instead of GeoTIFFs."),
    _Option("crop", "float", "3", "positive float", "Crop image outputs by N meters."),
    _Option("dem-resolution", "float", "5", "float", "DSM/DTM resolution in cm / pixel."),
    _Option("dsm", "bool", "false", "", "Build a DSM (Digital Surface Model)."),
    _Option("dtm", "bool", "false", "", "Build a DTM (Digital Terrain Model)."),
    _Option("fast-orthophoto", "bool", "false", "", "Skip dense reconstruction and 3D model."),
    _Option("feature-quality", "enum", "high", _QUALITY, "Feature extraction quality."),
    _Option("max-concurrency", "int", "4", "positive integer", "Maximum number of processes."),
    _Option("mesh-size", "int", "200000", "positive integer", "Maximum vertex count of mesh."),
    _Option("orthophoto-resolution", "float", "5", "float > 0.0", "Orthophoto resolution."),
    _Option("pc-ept", "bool", "false", "", "Export the point cloud in EPT format."),
    _Option("pc-quality", "enum", "medium", _QUALITY, "Point cloud quality."),
    _Option("skip-3dmodel", "bool", "false", "", "Skip generation of a full 3D model."),
    _Option("skip-report", "bool", "false", "", "Skip generation of PDF report."),
)


class _OptionError(Exception):
    pass


def _js_str(value: Any) -> str:
    """``String(value)`` as JavaScript writes it, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list):
        return ",".join(_js_str(v) for v in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def _js_number(value: float) -> float | int | None:
    """A number as JSON.stringify writes it: integral floats without ``.0``, NaN as null."""
    if math.isnan(value) or math.isinf(value):
        return None
    return int(value) if float(value).is_integer() else value


def _js_parse_int(value: Any) -> float:
    match = re.match(r"\s*([+-]?\d+)", _js_str(value))
    return float(int(match.group(1))) if match else math.nan


def _js_parse_float(value: Any) -> float:
    text = _js_str(value)
    match = re.match(
        r"\s*([+-]?(?:Infinity|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))", text
    )
    return float(match.group(1).replace("Infinity", "inf")) if match else math.nan


def _convert(kind: str, value: Any) -> Any:
    if kind == "int":
        return _js_parse_int(value)
    if kind == "float":
        return _js_parse_float(value)
    if kind == "bool":
        if value in {"true", "1"}:
            return True
        if value in {"false", "0"}:
            return False
        if isinstance(value, bool):
            return value
        raise _OptionError(f"Cannot convert {_js_str(value)} to boolean")
    return value


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _bounds_ok(domain: str, number: float | None) -> bool | None:
    """The range and comparison domains (``float: 0 <= x <= 1``, ``float > 0.0``); None: other."""
    if match := re.fullmatch(r"(float|integer): ([\-+.\d]+) <= x <= ([\-+.\d]+)", domain):
        parse = _js_parse_float if match.group(1) == "float" else _js_parse_int
        lower, upper = parse(match.group(2)), parse(match.group(3))
        return number is not None and lower <= number <= upper
    if match := re.fullmatch(r"(float|integer) (>=|>|<|<=) ([\-+.\d]+)", domain):
        parse = _js_parse_float if match.group(1) == "float" else _js_parse_int
        bound = parse(match.group(3))
        if number is None:
            return False
        return {
            ">=": number >= bound,
            ">": number > bound,
            "<=": number <= bound,
            "<": number < bound,
        }[match.group(2)]
    return None


def _domain_ok(domain: str, value: Any) -> bool:
    """odmInfo.filterOptions' domain checks, for one converted value."""
    number = _num(value)
    if match := re.fullmatch(r"(positive |negative )?(integer|float)", domain):
        if number is None:
            return False
        if match.group(1) == "positive ":
            return number >= 0
        if match.group(1) == "negative ":
            return number <= 0
        if match.group(2) == "integer":
            return math.isfinite(number) and number.is_integer()
        return math.isfinite(number)
    if domain == "percent":
        return number is not None and 0 <= number <= 100
    if (bounded := _bounds_ok(domain, number)) is not None:
        return bounded
    if domain == "json":
        if not isinstance(value, str):
            return False
        try:
            json.loads(value)
        except ValueError:
            return False
        return True
    if domain in {"string", "path"}:
        return True
    raise _OptionError(f"Domain value cannot be handled: '{domain}' : '{_js_str(value)}'")


def _js_json_parse(text: str) -> Any:
    """``JSON.parse``, with Node's style of error message."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            raise _OptionError("Unexpected end of JSON input") from None
        raise _OptionError(
            f"Unexpected token {text[exc.pos]} in JSON at position {exc.pos}"
        ) from None


def filter_options(raw: Any) -> list[dict[str, Any]]:
    """NodeODM's odmInfo.filterOptions: keep known options, converted; raise on bad values.

    Unknown options are dropped silently; the result follows the catalogue's order.
    """
    options = _js_json_parse(raw) if isinstance(raw, str) else raw
    if not isinstance(options, list):
        options = []
    result: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for spec in _OPTIONS:
        chosen = next(
            (o for o in options if isinstance(o, dict) and o.get("name") == spec.name), None
        )
        if chosen is None:
            continue
        try:
            value = _convert(spec.type, chosen.get("value"))
            if isinstance(spec.domain, list):
                if value not in spec.domain or not isinstance(value, str):
                    raise _OptionError(f"Invalid value {_js_str(value)} (not in enum)")
            elif spec.domain and not _domain_ok(spec.domain, value):
                raise _OptionError(f"Invalid value {_js_str(value)} (out of range)")
            if isinstance(value, float):
                value = _js_number(value)
            result.append({"name": spec.name, "value": value})
        except _OptionError as exc:
            errors.append({"name": chosen.get("name"), "error": str(exc)})
    if errors:
        raise _OptionError(json.dumps(errors, separators=(",", ":")))
    return result


# --------------------------------------------------------------------------- HTTP plumbing


class _DropConnectionError(Exception):
    """Close the connection without answering."""


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None


def _json(obj: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def _error(message: str, **extra: Any) -> _Reply:
    return _json({"error": message, **extra})


class _BodyReader:
    """A request body, by Content-Length or chunked; never more than ``n`` bytes at a time.

    A connection that breaks (or a cut injected with ``limit``) reads as the end of the body,
    with ``interrupted`` set, which is how the upload handler tells a cut-off body from a
    complete but malformed one.
    """

    def __init__(self, rfile: io.BufferedIOBase, length: int, chunked: bool) -> None:
        self._rfile = rfile
        self._remaining = length
        self._chunked = chunked
        self._chunk_left = 0
        self.done = not chunked and length == 0
        self.declared = None if chunked else length
        self.limit: int | None = None
        self.consumed = 0
        self.cut = False
        self.broken = False

    @property
    def interrupted(self) -> bool:
        return self.cut or self.broken

    def read(self, n: int) -> bytes:
        if self.done or self.interrupted:
            return b""
        if self.limit is not None:
            left = self.limit - self.consumed
            if left <= 0:
                self.cut = True
                return b""
            n = min(n, left)
        try:
            data = self._read_chunked(n) if self._chunked else self._read_plain(n)
        except (OSError, ValueError):
            self.broken = True
            return b""
        self.consumed += len(data)
        return data

    def _read_plain(self, n: int) -> bytes:
        n = min(n, self._remaining)
        data = self._rfile.read(n)
        if len(data) < n:
            self.broken = True
        self._remaining -= len(data)
        if self._remaining == 0:
            self.done = True
        return data

    def _read_chunked(self, n: int) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise ConnectionError("connection closed inside a chunk header")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:
                    trailer = self._rfile.readline(65537)
                    if not trailer:
                        raise ConnectionError("connection closed inside the trailers")
                    if trailer in {b"\r\n", b"\n"}:
                        break
                self.done = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        if not data:
            raise ConnectionError("connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rfile.read(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        return data

    def drain(self) -> bool:
        """Read and drop what is left; true when the body ended cleanly."""
        while self.read(CHUNK):
            pass
        return self.done and not self.interrupted

    def read_small(self, limit: int = CHUNK) -> bytes:
        """A small body whole (urlencoded forms); the rest past ``limit`` is dropped."""
        out = bytearray()
        while data := self.read(CHUNK):
            if len(out) < limit:
                out += data[: limit - len(out)]
        return bytes(out)


@dataclass
class _Request:
    method: str
    path: str
    route: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Message
    body: _BodyReader


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    """Express's routing for NodeODM's paths (case-insensitive, one trailing slash allowed)."""
    segments = [unquote(s) for s in path.split("/")[1:]]
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    low = [s.lower() for s in segments]
    n = len(low)
    if method == "GET":
        if low == ["info"]:
            return "node_info", {}
        if low == ["options"]:
            return "options", {}
        if low == ["task", "list"]:
            return "list", {}
        if n == 3 and low[0] == "task" and low[2] in {"info", "output"}:
            return low[2], {"uuid": segments[1]}
        if n == 4 and low[0] == "task" and low[2] == "download":
            return "download", {"uuid": segments[1], "asset": segments[3]}
    elif method == "POST":
        if low == ["task", "new", "init"]:
            return "init", {}
        if low == ["task", "new"]:
            return "new", {}
        if n == 4 and low[:2] == ["task", "new"] and low[2] in {"upload", "commit"}:
            return low[2], {"uuid": segments[3]}
        if n == 2 and low[0] == "task" and low[1] in {"cancel", "remove", "restart"}:
            return low[1], {}
    return "unknown", {}


# --------------------------------------------------------------------------- task state


class _File:
    def __init__(self, name: str, original: str, *, digest: bool) -> None:
        self.name = name
        self.original = original
        self.size = 0
        self.hasher = hashlib.sha256() if digest else None
        self.truncated = False

    def view(self) -> FileView:
        sha256 = "" if self.hasher is None else self.hasher.copy().hexdigest()
        return FileView(self.size, sha256, self.original, self.truncated)


class _Task:
    """One uuid: its upload area (before commit) and its task-manager entry (after)."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.init_calls = 0
        self.upload_calls = 0
        self.commit_calls = 0
        self.body: dict[str, str] | None = None  # tmp/<uuid>/body.json while it exists
        self.files: dict[str, _File] = {}
        self.committed = False
        self.removed = False
        # Task-manager fields (libs/Task.js), set at commit.
        self.name: str | None = None
        self.date_created = 0
        self.date_started = 0
        self.processing_time = -1
        self.tracking = False
        self.code: int | None = None
        self.error_message: str | None = None
        self.options: list[dict[str, Any]] = []
        self.webhook: str | None = None
        self.skip_post_processing = False
        self.images: list[str] | None = None
        self.images_estimate = -1
        self.progress = 0.0
        self.output: list[str] = []
        self.initialized = False
        self.setup_started = 0.0
        self.queued_at = 0.0
        self.run_started = 0.0

    def set_status(self, code: int, error_message: str | None = None) -> None:
        self.code = code
        self.error_message = error_message


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso_now() -> str:
    """``new Date().toISOString()``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _unique_name(directory: Path, filename: str) -> str:
    """taskNew.js assureUniqueFilename: ``a.b.JPG`` -> ``a.b_.JPG``, ``README`` -> ``README_``."""
    while (directory / filename).exists():
        parts = filename.split(".")
        if len(parts) > 1:
            filename = ".".join(parts[:-1]) + "_." + parts[-1]
        else:
            filename += "_"
    return filename


def _node_error(exc: OSError) -> str:
    """An OSError worded roughly like Node's (``ENOENT: no such file or directory, ...``)."""
    code = {2: "ENOENT", 13: "EACCES", 17: "EEXIST", 21: "EISDIR", 28: "ENOSPC"}.get(
        exc.errno or 0, "EIO"
    )
    return f"{code}: {exc.strerror or exc}, {exc.filename or ''}".rstrip(", ")


# --------------------------------------------------------------------------- the server


class FakeNodeODM:
    """A NodeODM-compatible server on 127.0.0.1 in a background thread (see module docstring).

    ``root`` holds ``tmp/<uuid>`` (uploads before commit) and ``data/<uuid>`` (committed
    tasks), as NodeODM lays them out; ``None`` uses a temporary folder removed on stop. The
    timings, ``min_images``, ``fail_processing``, ``fail_message``, ``max_images`` and
    ``max_parallel`` may be changed while the server runs.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        token: str | None = None,
        setup_s: float = 0.1,
        queued_s: float = 0.1,
        running_s: float = 0.5,
        min_images: int = 2,
        fail_processing: bool = False,
        *,
        fail_message: str = "Cannot process dataset",
        max_images: int | None = None,
        max_parallel: int = 2,
        drop_uploads: float = 0.0,
        drop_style: str = "keepalive",
        drop_seed: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        keepalive_s: float = 5.0,
        io_timeout_s: float = 60.0,
        webhook_retry_s: float = 5.0,
        version: str = "2.2.1",
        engine_version: str = "3.5.5",
        digest: bool = True,
    ) -> None:
        self._own_root = root is None
        # SHA-256 of every stored file, for the tests' inspection; the real NodeODM does not
        # hash what it stores, and a benchmark measuring the clients can turn it off.
        self.digest = digest
        self.root = Path(tempfile.mkdtemp(prefix="fake-nodeodm-") if root is None else root)
        self.token = token
        self.setup_s = setup_s
        self.queued_s = queued_s
        self.running_s = running_s
        self.min_images = min_images
        self.fail_processing = fail_processing
        self.fail_message = fail_message
        self.max_images = max_images
        self.max_parallel = max_parallel
        if drop_style not in {"keepalive", "close"}:
            raise ValueError("drop_style is 'keepalive' or 'close'")
        self.drop_uploads = drop_uploads  # the share of uploads answered 500 unread
        self.drop_style = drop_style
        self._drops = random.Random(drop_seed)
        self.dropped = 0
        self.keepalive_s = keepalive_s
        self.io_timeout_s = io_timeout_s
        self.webhook_retry_s = webhook_retry_s
        self.version = version
        self.engine_version = engine_version
        self.faults = Faults()
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._records: dict[str, _Task] = {}
        self._manager: dict[str, _Task] = {}  # TaskManager.tasks: committed, not removed
        self._running: set[str] = set()
        self._requests: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeNodeODM:
        """Bind and serve in daemon threads (no-op when already started)."""
        if self._httpd is not None:
            return self
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        httpd = _Server((self._host, self._port), self)
        self._httpd = httpd
        self._threads = [
            threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-nodeodm-http",
                daemon=True,
            ),
            threading.Thread(target=self._schedule, name="fake-nodeodm-tasks", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections (and stalls), wait for the threads."""
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        deadline = time.monotonic() + 5.0
        for thread in [*self._threads, *httpd.handler_threads()]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._httpd = None
        self._threads = []
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FakeNodeODM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> Counter[str]:
        """How many requests each route got (faulted ones included)."""
        with self._lock:
            return Counter(self._requests)

    def tasks(self) -> dict[str, TaskView]:
        """Every uuid the node has seen, from init on."""
        with self._lock:
            return {uuid: self._view(t) for uuid, t in self._records.items()}

    def task(self, uuid: str) -> TaskView | None:
        with self._lock:
            record = self._records.get(uuid)
            return None if record is None else self._view(record)

    def file_path(self, uuid: str, name: str) -> Path | None:
        """Where a stored file is now (upload area, images or gcp folder), if still on disk."""
        for path in (
            self._data(uuid) / "images" / name,
            self._data(uuid) / "gcp" / name,
            self._tmp(uuid) / name,
        ):
            if path.is_file():
                return path
        return None

    def _view(self, t: _Task) -> TaskView:
        return TaskView(
            uuid=t.uuid,
            name=t.name if t.committed else (t.body or {}).get("name"),
            options=json.loads(json.dumps(t.options if t.committed else self._sent_options(t))),
            committed=t.committed,
            status_code=t.code,
            progress=t.progress,
            error_message=t.error_message,
            files={name: f.view() for name, f in t.files.items()},
            commit_calls=t.commit_calls,
            removed=t.removed,
            init_calls=t.init_calls,
            upload_calls=t.upload_calls,
            images_count=self._images_count(t) if t.committed else None,
            webhook=t.webhook if t.committed else (t.body or {}).get("webhook"),
        )

    @staticmethod
    def _sent_options(t: _Task) -> list[dict[str, Any]]:
        try:
            sent = json.loads((t.body or {}).get("options", "[]"))
        except ValueError:
            return []
        return sent if isinstance(sent, list) else []

    # ------------------------------------------------------------------ paths

    def _tmp(self, uuid: str) -> Path:
        return self.root / "tmp" / uuid

    def _data(self, uuid: str) -> Path:
        return self.root / "data" / uuid

    # ------------------------------------------------------------------ request entry point

    def handle(self, req: _Request) -> _Reply:
        """Act on one request (faults are applied by the HTTP handler around this)."""
        if req.route == "unknown":
            return self._not_found(req)
        # Every NodeODM route checks the token first (authCheck), except the cancel family,
        # which parses its urlencoded body first; the outcome is the same.
        if (denied := self._check_token(req)) is not None:
            return denied
        handler = getattr(self, f"_h_{req.route}")
        return cast(_Reply, handler(req))

    @staticmethod
    def _not_found(req: _Request) -> _Reply:
        page = (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>Error</title>\n</head>\n<body>\n<pre>Cannot {req.method} {req.path}</pre>\n"
            "</body>\n</html>\n"
        )
        return _Reply(404, page.encode(), "text/html; charset=utf-8")

    def _check_token(self, req: _Request) -> _Reply | None:
        if not self.token:
            return None
        if req.query.get("token") == [self.token]:
            return None
        # TokenAuthBase + SimpleTokenAuth: the same text for a missing and a wrong token.
        return _error("Invalid authentication token: token does not match.")

    # ------------------------------------------------------------------ server routes

    def count(self, route: str) -> None:
        """Count one request on ``route`` (see :attr:`requests`)."""
        with self._lock:
            self._requests[route] += 1

    def drops(self, req: _Request) -> bool:
        """Whether this upload is dropped (``--test_drop_uploads``): after the token and uuid
        checks, before the body is read."""
        if req.route != "upload" or not self.drop_uploads:
            return False
        if self._check_token(req) is not None:
            return False
        with self._lock:
            record = self._records.get(req.params["uuid"])
            if record is None or record.body is None:
                return False  # getUUID answers first
            if self._drops.random() >= self.drop_uploads:
                return False
            self.dropped += 1
            return True

    def _h_node_info(self, req: _Request) -> _Reply:
        with self._lock:
            queue = sum(1 for t in self._manager.values() if t.code in {QUEUED, RUNNING})
        return _json(
            {
                "version": self.version,
                "taskQueueCount": queue,
                "totalMemory": 16 * 1024**3,
                "availableMemory": 12 * 1024**3,
                "cpuCores": os.cpu_count() or 1,
                "maxImages": self.max_images,
                "maxParallelTasks": self.max_parallel,
                "engineVersion": self.engine_version,
                "engine": "odm",
            }
        )

    def _h_options(self, req: _Request) -> _Reply:
        return _json(
            [
                {
                    "name": o.name,
                    "type": o.type,
                    "value": o.value,
                    "domain": o.domain,
                    "help": o.help,
                }
                for o in _OPTIONS
            ]
        )

    def _h_list(self, req: _Request) -> _Reply:
        with self._lock:
            return _json([{"uuid": uuid} for uuid in self._manager])

    # ------------------------------------------------------------------ new task: init

    def _assign_uuid(self, req: _Request) -> str | _Reply:
        wanted = req.headers.get("set-uuid")
        if not wanted:
            return str(uuidlib.uuid4())
        with self._lock:
            # Only the task manager is consulted: a uuid that is initialised but not committed
            # (or one whose task was removed) is accepted again.
            if _SET_UUID.match(wanted) and wanted not in self._manager:
                return wanted
        return _error(f"Invalid set-uuid: {wanted}")

    def _read_fields(self, req: _Request) -> dict[str, str] | _Reply:
        """multer().none(): multipart fields only; a file part is an error."""
        try:
            boundary = multipart.boundary_of(req.headers.get("Content-Type", ""))
        except MultipartError as exc:
            return _error(str(exc))
        if boundary is None:
            return {}
        fields: dict[str, str] = {}
        reader = MultipartReader(req.body.read, boundary)
        try:
            while (part := reader.next_part()) is not None:
                if part.filename is not None:
                    return _error("Unexpected field")
                fields[part.name or ""] = part.read_all().decode("utf-8", errors="replace")
        except TruncatedBodyError:
            if req.body.interrupted:
                raise _DropConnectionError from None
            return _error("Unexpected end of multipart data")
        except MultipartError as exc:
            return _error(str(exc))
        return fields

    def _h_init(self, req: _Request) -> _Reply:
        uuid = self._assign_uuid(req)
        if isinstance(uuid, _Reply):
            return uuid
        fields = self._read_fields(req)
        if isinstance(fields, _Reply):
            return fields
        with self._lock:
            record = self._records.get(uuid)
            if record is None or record.removed:
                record = self._records[uuid] = _Task(uuid)
            record.init_calls += 1
            if fields.get("options"):
                try:
                    filter_options(fields["options"])
                except _OptionError as exc:
                    # die(): the upload folder goes, with any file already uploaded into it.
                    self._drop_upload_area(record)
                    return _error(str(exc))
            tmp = self._tmp(uuid)
            if not tmp.is_dir():
                record.files = {}
                tmp.mkdir(parents=True)
            (tmp / "body.json").write_text(json.dumps(fields), encoding="utf-8")
            record.body = fields
        return _json({"uuid": uuid})

    def _drop_upload_area(self, record: _Task) -> None:
        shutil.rmtree(self._tmp(record.uuid), ignore_errors=True)
        record.files = {}
        record.body = None

    # ------------------------------------------------------------------ new task: upload

    def _h_upload(self, req: _Request) -> _Reply:
        uuid = req.params["uuid"]
        with self._lock:
            record = self._records.get(uuid)
            if record is not None:
                record.upload_calls += 1
            if record is None or record.body is None:
                # getUUID: tmp/<uuid>/body.json is gone after commit, or never was.
                return _error("Invalid uuid (not found)")
        received = self._receive_files(record, req)
        if isinstance(received, _Reply):
            return received
        files, _ = received
        if not files:
            return _error("Need at least 1 file.", noRetry=True)
        return _json({"success": True})

    def _receive_files(
        self, record: _Task, req: _Request
    ) -> tuple[list[str], dict[str, str]] | _Reply:
        """multer's upload.array("images") with diskStorage into tmp/<uuid>/.

        A body cut off mid-way keeps what was written (no reply is possible then); a complete
        body that is malformed, or a file in another field, removes this request's files.
        """
        try:
            boundary = multipart.boundary_of(req.headers.get("Content-Type", ""))
        except MultipartError as exc:
            return _error(str(exc))
        if boundary is None:
            return [], {}
        stored: list[_File] = []
        fields: dict[str, str] = {}
        reader = MultipartReader(req.body.read, boundary)
        try:
            while (part := reader.next_part()) is not None:
                if part.filename is None:
                    fields[part.name or ""] = part.read_all().decode("utf-8", errors="replace")
                elif part.name != "images":
                    self._discard(record, stored)
                    return _error("Unexpected field")
                elif not part.filename:
                    self._discard(record, stored)
                    where = os.path.join("tmp", record.uuid)
                    return _error(f"EISDIR: illegal operation on a directory, open '{where}'")
                else:
                    self._store(record, part, stored)
        except TruncatedBodyError:
            if req.body.interrupted:
                raise _DropConnectionError from None
            self._discard(record, stored)
            return _error("Unexpected end of multipart data")
        except MultipartError as exc:
            self._discard(record, stored)
            return _error(str(exc))
        except OSError as exc:
            self._discard(record, stored)
            return _error(_node_error(exc))
        return [f.name for f in stored], fields

    def _store(self, record: _Task, part: Part, stored: list[_File]) -> None:
        original = part.filename or ""
        wanted = "_body.json" if original == "body.json" else original
        with self._lock:
            directory = self._tmp(record.uuid)
            directory.mkdir(parents=True, exist_ok=True)
            name = _unique_name(directory, wanted)
            # Created under the lock, so two concurrent uploads of one name cannot both take it.
            handle = (directory / name).open("xb", buffering=0)
            entry = _File(name, original, digest=self.digest)
            record.files[name] = entry
            stored.append(entry)
        with handle:
            try:
                hasher = entry.hasher
                for chunk in part.chunks():
                    handle.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    entry.size += len(chunk)
            except TruncatedBodyError:
                entry.truncated = True
                raise

    def _discard(self, record: _Task, stored: list[_File]) -> None:
        with self._lock:
            for entry in stored:
                with contextlib.suppress(OSError):
                    (self._tmp(record.uuid) / entry.name).unlink()
                if record.files.get(entry.name) is entry:
                    del record.files[entry.name]

    # ------------------------------------------------------------------ new task: commit

    def _h_commit(self, req: _Request) -> _Reply:
        uuid = req.params["uuid"]
        with self._lock:
            record = self._records.get(uuid)
            if record is not None:
                record.commit_calls += 1
            if record is None or record.body is None:
                return _error("Invalid uuid (not found)")
            body = record.body
            # handleCommit reads and deletes body.json first: from here on the uuid is spent for
            # uploads and for a second commit, whatever happens next.
            record.body = None
            tmp = self._tmp(uuid)
            with contextlib.suppress(OSError):
                (tmp / "body.json").unlink()
            try:
                entries = os.listdir(tmp)
            except OSError as exc:
                return _error(_node_error(exc))
            if not entries:
                self._drop_upload_area(record)
                return _error("Need at least 1 file.")
            return self._create_task(record, body, len(entries))

    def _h_new(self, req: _Request) -> _Reply:
        uuid = self._assign_uuid(req)
        if isinstance(uuid, _Reply):
            return uuid
        with self._lock:
            record = self._records.get(uuid)
            if record is None or record.removed:
                record = self._records[uuid] = _Task(uuid)
        received = self._receive_files(record, req)
        if isinstance(received, _Reply):
            return received
        files, fields = received
        with self._lock:
            problem = None
            if not files and not fields.get("zipurl"):
                problem = "Need at least 1 file or a zip file url."
            elif self.max_images and len(files) > self.max_images:
                problem = (
                    f"{len(files)} images uploaded, but this node can only process up to "
                    f"{self.max_images}."
                )
            if problem is not None:
                self._drop_upload_area(record)
                return _error(problem)
            return self._create_task(record, fields, len(files))

    def _create_task(self, record: _Task, body: dict[str, str], estimate: int) -> _Reply:
        """taskNew.createTask up to ``res.json({uuid})``; the rest runs in the scheduler."""
        try:
            options = filter_options(body.get("options"))
        except _OptionError as exc:
            self._drop_upload_area(record)
            return _error(str(exc))
        now = time.monotonic()
        name = body.get("name")
        # Task.js: an empty name gets a default; a missing one stays missing.
        record.name = f"Task of {_iso_now()}" if name == "" else name
        created = body.get("dateCreated", "")
        record.date_created = int(created) if created.strip().lstrip("-").isdigit() else _now_ms()
        record.options = options
        record.webhook = body.get("webhook")
        record.skip_post_processing = body.get("skipPostProcessing") == "true"
        record.images_estimate = estimate
        record.images = None
        record.progress = 0.0
        record.output = []
        record.processing_time = -1
        record.tracking = False
        record.set_status(RUNNING)  # the Task constructor's status, while it sets up
        record.initialized = False
        record.setup_started = now
        record.committed = True
        self._manager[record.uuid] = record
        return _json({"uuid": record.uuid})

    # ------------------------------------------------------------------ task routes

    def _find(self, uuid: str) -> _Task | None:
        return self._manager.get(uuid)

    def _images_count(self, t: _Task) -> int:
        return len(t.images) if t.images is not None else t.images_estimate

    def _processing_time(self, t: _Task) -> int:
        # Task.js measures from dateCreated, not from the start of processing.
        return _now_ms() - t.date_created if t.tracking else t.processing_time

    def _info(self, t: _Task) -> dict[str, Any]:
        info: dict[str, Any] = {"uuid": t.uuid}
        if t.name is not None:  # a task initialised without a name field has none at all
            info["name"] = t.name
        status: dict[str, Any] = {"code": t.code}
        if t.error_message is not None:
            status["errorMessage"] = t.error_message
        info.update(
            dateCreated=t.date_created,
            processingTime=self._processing_time(t),
            status=status,
            options=t.options,
            imagesCount=self._images_count(t),
            progress=_js_number(t.progress),
        )
        return info

    @staticmethod
    def _line(query: dict[str, list[str]], key: str) -> int:
        match = re.match(r"\s*([+-]?\d+)", (query.get(key) or ["0"])[0])
        return int(match.group(1)) if match else 0

    def _h_info(self, req: _Request) -> _Reply:
        uuid = req.params["uuid"]
        with self._lock:
            t = self._find(uuid)
            if t is None:
                return _error(f"{uuid} not found")
            info = self._info(t)
            if "with_output" in req.query:
                info["output"] = t.output[self._line(req.query, "with_output") :]
            return _json(info)

    def _h_output(self, req: _Request) -> _Reply:
        uuid = req.params["uuid"]
        with self._lock:
            t = self._find(uuid)
            if t is None:
                return _error(f"{uuid} not found")
            return _json(t.output[self._line(req.query, "line") :])

    def _h_download(self, req: _Request) -> _Reply:
        uuid = req.params["uuid"]
        with self._lock:
            if self._find(uuid) is None:
                return _error(f"{uuid} not found")
        if req.params["asset"] != "all.zip":
            return _error("Invalid asset")
        path = self._data(uuid) / "all.zip"
        if not path.is_file():
            return _error("Asset not ready")
        return _Reply(
            content_type="application/zip",
            headers=[("Content-Disposition", "attachment; filename=all.zip")],
            file=path,
        )

    def _form_uuid(self, req: _Request) -> tuple[str, dict[str, str]] | _Reply:
        """bodyParser.urlencoded then uuidCheck (a JSON or multipart body carries nothing)."""
        form: dict[str, str] = {}
        content_type = req.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            text = req.body.read_small().decode("utf-8", errors="replace")
            form = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
        if not form.get("uuid"):
            return _error("uuid param missing.")
        return form["uuid"], form

    def _h_cancel(self, req: _Request) -> _Reply:
        parsed = self._form_uuid(req)
        if isinstance(parsed, _Reply):
            return parsed
        uuid, _ = parsed
        hooks: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            problem = self._cancel(uuid, hooks)
        self._fire_webhooks(hooks)
        return _json({"success": False, "error": problem} if problem else {"success": True})

    def _cancel(self, uuid: str, hooks: list[tuple[str, dict[str, Any]]]) -> str | None:
        t = self._find(uuid)
        if t is None:
            return f"{uuid} not found"
        if t.code == CANCELED:
            return None
        processing = uuid in self._running
        t.set_status(CANCELED)
        t.tracking = False
        t.processing_time = -1
        if processing:
            # The killed ODM process still calls finished(): progress 100, time updated.
            self._running.discard(uuid)
            t.progress = 100.0
            t.processing_time = _now_ms() - t.date_created
            if t.webhook:
                hooks.append((t.webhook, {**self._info(t), "images": []}))
        return None

    def _h_remove(self, req: _Request) -> _Reply:
        parsed = self._form_uuid(req)
        if isinstance(parsed, _Reply):
            return parsed
        uuid, _ = parsed
        hooks: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            problem = self._cancel(uuid, hooks)
            if problem is None:
                t = self._manager.pop(uuid)
                t.removed = True
                shutil.rmtree(self._data(uuid), ignore_errors=True)
                shutil.rmtree(self._tmp(uuid), ignore_errors=True)
        self._fire_webhooks(hooks)
        return _json({"success": False, "error": problem} if problem else {"success": True})

    def _h_restart(self, req: _Request) -> _Reply:
        parsed = self._form_uuid(req)
        if isinstance(parsed, _Reply):
            return parsed
        uuid, form = parsed
        options: list[dict[str, Any]] | None = None
        if form.get("options"):
            try:
                options = filter_options(form["options"])
            except _OptionError as exc:
                return _error(str(exc))
        with self._lock:
            t = self._find(uuid)
            if t is None:
                return _json({"success": False, "error": f"{uuid} not found"})
            if not t.initialized and t.code == CANCELED:
                t.set_status(RUNNING)  # still setting up: setup finishes and queues it
            elif t.code in {CANCELED, FAILED, COMPLETED}:
                t.set_status(QUEUED)
                t.date_created = _now_ms()
                t.date_started = 0
                t.output = []
                t.progress = 0.0
                t.processing_time = -1
                t.tracking = False
                t.queued_at = time.monotonic()
            else:
                return _json({"success": False, "error": "Task cannot be restarted"})
            if options is not None:
                t.options = options
                self._add_post_processing_options(t)
        return _json({"success": True})

    # ------------------------------------------------------------------ processing

    def _schedule(self) -> None:
        while not self._stopping.wait(0.02):
            try:
                self._tick()
            except Exception:  # a bug here must not stop every later task
                log.exception("fake NodeODM scheduler failed")

    def _tick(self) -> None:
        now = time.monotonic()
        hooks: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            for t in list(self._manager.values()):
                if not t.initialized:
                    if now - t.setup_started >= self.setup_s:
                        self._initialize(t, now)
                elif t.code == RUNNING and t.uuid in self._running:
                    self._advance(t, now, hooks)
            # TaskManager.processNextTask: first QUEUED task in insertion order, up to the limit.
            for t in self._manager.values():
                if len(self._running) >= max(1, self.max_parallel):
                    break
                if t.initialized and t.code == QUEUED and now - t.queued_at >= self.queued_s:
                    self._start(t, now)
        self._fire_webhooks(hooks)

    def _add_post_processing_options(self, t: _Task) -> None:
        # Task.setPostProcessingOptsSteps: pc-ept and cog are added when ODM supports them.
        if t.skip_post_processing:
            return
        for name in ("pc-ept", "cog"):
            if not any(o.get("name") == name for o in t.options):
                t.options.append({"name": name, "value": True})

    def _initialize(self, t: _Task, now: float) -> None:
        """createTask's initSteps and Task.initialize: move files, check limits, queue."""
        src, dest = self._tmp(t.uuid), self._data(t.uuid)
        images, gcp = dest / "images", dest / "gcp"
        problem: str | None = None
        try:
            if dest.exists():
                # A previous attempt with the same set-uuid left it: NodeODM removes it.
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            gcp.mkdir()
            os.rename(src, images)
            for entry in os.listdir(images):
                # seed.zip and zipurl.zip would be extracted; any other .zip is deleted.
                if entry.lower().endswith(".zip"):
                    (images / entry).unlink()
            count = len(os.listdir(images))
            if self.max_images and count > self.max_images:
                problem = (
                    f"{count} images uploaded, but this node can only process up to "
                    f"{self.max_images}."
                )
            else:
                for entry in os.listdir(images):
                    if entry.lower().endswith(".txt"):
                        os.rename(images / entry, gcp / entry)
                t.images = sorted(os.listdir(images))
                self._add_post_processing_options(t)
        except OSError as exc:
            problem = _node_error(exc)
        if t.code == RUNNING:  # cancelled meanwhile: left as it is
            if problem is None:
                t.set_status(QUEUED)
                t.queued_at = now
            else:
                t.set_status(FAILED, problem)
        t.initialized = True
        if problem is not None:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)

    def _start(self, t: _Task, now: float) -> None:
        t.set_status(RUNNING)
        t.date_started = _now_ms()
        t.tracking = True
        t.run_started = now
        self._running.add(t.uuid)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        t.output += [
            f"[INFO]    Initializing ODM {self.engine_version} - {stamp}",
            "[INFO]    ==============",
            f"[INFO]    project_path: /var/www/data/{t.uuid}",
            "[INFO]    ==============",
        ]

    def _advance(self, t: _Task, now: float, hooks: list[tuple[str, dict[str, Any]]]) -> None:
        duration = max(self.running_s, 0.0)
        fraction = 1.0 if duration == 0 else min(1.0, (now - t.run_started) / duration)
        usable = [n for n in t.images or [] if os.path.splitext(n)[1].lower() in _IMAGE_EXTENSIONS]
        if len(usable) < self.min_images and fraction >= 0.1:
            # ODM's dataset stage stops early and exits 1, which Task.js words this way.
            t.output.append(
                f"[ERROR]   Not enough supported images in /var/www/data/{t.uuid}/images"
            )
            self._finish(t, FAILED, "Cannot process dataset", hooks)
        elif fraction >= 1.0:
            if self.fail_processing:
                t.output.append("[ERROR]   The program exited with a non-zero status")
                self._finish(t, FAILED, self.fail_message, hooks)
            else:
                t.output.append(f"[INFO]    Found {len(usable)} usable images")
                t.progress = 93.0  # after the post-processing script
                try:
                    self._write_assets(t)
                except OSError as exc:
                    self._finish(t, FAILED, _node_error(exc), hooks)
                else:
                    t.output.append("Compressing all.zip")
                    self._finish(t, COMPLETED, None, hooks)
        else:
            # ODM reports 0-100; TaskManager keeps the last 10% for post-processing.
            t.progress = max(t.progress, round(90.0 * fraction, 2))

    def _finish(
        self,
        t: _Task,
        code: int,
        message: str | None,
        hooks: list[tuple[str, dict[str, Any]]],
    ) -> None:
        t.set_status(code, message)
        t.progress = 100.0  # Task.start's finished(), also on failure
        t.processing_time = _now_ms() - t.date_created
        t.tracking = False
        self._running.discard(t.uuid)
        if t.webhook:
            hooks.append((t.webhook, {**self._info(t), "images": []}))

    def _write_assets(self, t: _Task) -> None:
        dest = self._data(t.uuid)
        partial = dest / "all.zip.part"
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("odm_orthophoto/odm_orthophoto.tif", b"II*\x00" + bytes(256))
            archive.writestr("images.json", json.dumps([{"filename": n} for n in t.images or []]))
            archive.writestr("task_output.txt", "\n".join(t.output))
        os.replace(partial, dest / "all.zip")

    def _fire_webhooks(self, hooks: list[tuple[str, dict[str, Any]]]) -> None:
        for url, payload in hooks:
            threading.Thread(
                target=self._call_webhook,
                args=(url, payload),
                name="fake-nodeodm-webhook",
                daemon=True,
            ).start()

    def _call_webhook(self, url: str, payload: dict[str, Any]) -> None:
        # Task.callWebhooks: POST the task info (plus images), retried up to 5 times with
        # waits growing by one step each time.
        if not url.startswith(("http://", "https://")) or len(url) <= 3:
            return
        data = json.dumps(payload).encode()
        for attempt in range(6):
            request = urllib.request.Request(  # noqa: S310 - scheme checked above
                url, data=data, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self._stopping.wait((attempt + 1) * self.webhook_retry_s):
                return


# --------------------------------------------------------------------------- HTTP handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], node: FakeNodeODM) -> None:
        self.node = node
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on a box
        # without DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._conns.add(request)
            self._handler_threads.add(threading.current_thread())
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._conns.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handler_threads(self) -> list[threading.Thread]:
        with self._conn_lock:
            return list(self._handler_threads)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went away is not a server error
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def node(self) -> FakeNodeODM:
        return cast(_Server, self.server).node

    def setup(self) -> None:
        super().setup()
        # Node disables Nagle on its sockets; without it every reply (headers, then body, in
        # two writes) waits for the client's delayed ACK, about 40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        # As the stdlib's, with Node's keep-alive timeout while idle between requests and a
        # longer one once a request has started.
        node = self.node
        try:
            self.connection.settimeout(node.keepalive_s)
            self.raw_requestline = self.rfile.readline(65537)
            self.connection.settimeout(node.io_timeout_s)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._dispatch()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        node = self.node
        url = urlsplit(self.path)
        route, params = _route(self.command, url.path)
        body = self._body()
        if body is None:
            return
        req = _Request(
            method=self.command,
            path=url.path,
            route=route,
            params=params,
            query=parse_qs(url.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
        )
        node.count(route)
        if node.drops(req):
            # Express's res.sendStatus(500): the answer goes before the body is read.
            self.close_connection = node.drop_style == "close"
            self._send(_Reply(500, b"Internal Server Error", "text/plain; charset=utf-8"))
            with contextlib.suppress(OSError, TimeoutError):
                body.drain()
            return
        fault = node.faults.take(route)
        if fault is not None and fault.kind == "error200_early":
            # As a proxy in front of a node may do: refuse at once, unread body and all.
            self.close_connection = True
            self._send(_error(fault.message))
            return
        try:
            reply = self._apply(fault, req) if fault is not None else self._handle(req)
        except _DropConnectionError:
            self.close_connection = True
            return
        if not body.drain():
            self.close_connection = True
        self._send(reply)

    def _handle(self, req: _Request) -> _Reply:
        try:
            return self.node.handle(req)
        except _DropConnectionError:
            raise
        except Exception:  # Express's error handler answers 200 {"error"} too
            log.exception("fake NodeODM handler failed")
            return _error("Internal error in the fake NodeODM")

    def _apply(self, fault: Fault, req: _Request) -> _Reply:
        node = self.node
        if fault.kind == "status500":
            return _Reply(500, b"Internal Server Error", "text/plain; charset=utf-8")
        if fault.kind == "error200":
            return _error(fault.message)
        if fault.kind == "garbage":
            return _Reply(200, _GARBAGE, "text/html")
        if fault.kind == "cut_mid_body":
            if fault.at_bytes is not None:
                req.body.limit = fault.at_bytes
            elif req.body.declared is not None:
                req.body.limit = req.body.declared // 2
            else:
                req.body.limit = 64 * 1024
            if req.route in {"upload", "new"}:
                # Stores what arrived before the cut, as the real node keeps a partial file.
                self._handle(req)
            req.body.drain()
            raise _DropConnectionError
        if fault.kind == "cut_after_body":
            self._handle(req)
            raise _DropConnectionError
        # stall
        if fault.before and node._stopping.wait(fault.delay_s):
            raise _DropConnectionError
        reply = self._handle(req)
        if not fault.before and node._stopping.wait(fault.delay_s):
            raise _DropConnectionError
        return reply

    def _body(self) -> _BodyReader | None:
        encoding = self.headers.get("Transfer-Encoding")
        length_header = self.headers.get("Content-Length")
        if encoding is not None:
            if encoding.split(",")[-1].strip().lower() != "chunked":
                self.close_connection = True
                self._send(_Reply(501, b"Not Implemented", "text/plain; charset=utf-8"))
                return None
            return _BodyReader(self.rfile, 0, chunked=True)
        length = 0
        if length_header is not None:
            try:
                length = int(length_header)
                if length < 0:
                    raise ValueError(length_header)
            except ValueError:
                self.close_connection = True
                self._send(_Reply(400, b"Bad Request", "text/plain; charset=utf-8"))
                return None
        return _BodyReader(self.rfile, length, chunked=False)

    def _send(self, reply: _Reply) -> None:
        try:
            size = reply.file.stat().st_size if reply.file is not None else len(reply.body)
            self.send_response_only(reply.status)
            self.send_header("Date", self.date_time_string())
            self.send_header("X-Powered-By", "Express")
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(size))
            for key, value in reply.headers:
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            else:
                self.send_header("Connection", "keep-alive")
                self.send_header("Keep-Alive", f"timeout={int(self.node.keepalive_s)}")
            self.end_headers()
            if reply.file is None:
                self.wfile.write(reply.body)
            else:
                with reply.file.open("rb") as source:
                    while chunk := source.read(CHUNK):
                        self.wfile.write(chunk)
        except OSError:
            self.close_connection = True

    do_POST = do_GET  # noqa: N815 - stdlib naming
    do_PUT = do_GET  # noqa: N815
    do_DELETE = do_GET  # noqa: N815
    do_PATCH = do_GET  # noqa: N815


# --------------------------------------------------------------------------- by hand


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C (or SIGTERM), printing the URL first."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.nodeodm", description="A local NodeODM-compatible server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000, help="0 picks a free port")
    parser.add_argument("--token", default=None, help="require ?token=TOKEN on every call")
    parser.add_argument("--root", default=None, help="where tasks are stored (default: temp)")
    parser.add_argument("--setup-s", type=float, default=1.0)
    parser.add_argument("--queued-s", type=float, default=1.0)
    parser.add_argument("--running-s", type=float, default=10.0)
    parser.add_argument("--min-images", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--fail-processing", action="store_true")
    parser.add_argument(
        "--test-drop-uploads",
        action="store_true",
        help="answer about half the uploads HTTP 500 before reading them, as the real node's"
        " --test_drop_uploads",
    )
    parser.add_argument(
        "--drop-rate",
        type=float,
        default=None,
        help="as --test-drop-uploads, with this share of the uploads dropped (0-1)",
    )
    parser.add_argument(
        "--test-fail-tasks",
        action="store_true",
        help="fail every task with an empty errorMessage, as the real node's --test_fail_tasks",
    )
    parser.add_argument(
        "--no-digest",
        dest="digest",
        action="store_false",
        help="store files without hashing them, as NodeODM does (inspection shows no sha256)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    node = FakeNodeODM(
        args.root,
        args.token,
        args.setup_s,
        args.queued_s,
        args.running_s,
        args.min_images,
        args.fail_processing or args.test_fail_tasks,
        fail_message="" if args.test_fail_tasks else "Cannot process dataset",
        max_images=args.max_images,
        drop_uploads=args.drop_rate
        if args.drop_rate is not None
        else (0.5 if args.test_drop_uploads else 0.0),
        host=args.host,
        port=args.port,
        digest=args.digest,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with node:
        print(node.url, flush=True)
        print(f"storing tasks in {node.root}", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
