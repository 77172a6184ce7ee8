"""A local PIX4Dcloud-compatible server (the PIX4Dengine Cloud API), with real S3 behind it.

Reproduced: the calls the official demo client (github.com/Pix4D/demo-pix4d-cloud-api)
makes, in the same order and shapes, plus the reply fields other clients read:

- ``POST /oauth2/token/``: OAuth2 client credentials, read from the form body or, as the
  demo sends them, from the query string; ``token_format=jwt`` gives a JWT. Every other
  call needs ``Authorization: Bearer <token>``; an unknown or expired token is a 401.
- ``POST /project/api/v3/projects/`` creates a project (integer ``id``, ``bucket_name``,
  ``s3_base_path``); ``GET .../projects/{id}/`` reads it, with ``public_status``.
- ``GET /project/api/v3/projects/`` lists the projects. The API is Django REST Framework
  (its browsable root answers an unauthenticated call), but neither the demo client nor the
  documentation shows the list: whether it is paged, and which query parameters filter it,
  is unknown. ``project_list`` answers each plausible way: ``"paged"`` (DRF's page-number
  pagination, ``{"count", "next", "previous", "results"}``, ``page_size`` per page,
  ``?page=N``) or ``"plain"`` (a JSON list, DRF without pagination). Query parameters other
  than ``page`` are ignored, as DRF ignores those it has no filter for.
- ``GET .../projects/{id}/s3_credentials/`` issues fresh temporary S3 credentials scoped to
  the project's key prefix (``key``), with the ``endpoint_override`` clients must use: an
  :class:`~tests.fakes.s3proxy.S3FaultProxy` in front of moto that checks them the way S3
  checks STS credentials (expiry, prefix, signature).
- ``POST .../inputs/bulk_register/`` registers keys (idempotent) and answers
  ``nb_images_registered`` (third-party clients read it; PIX4D does not document it). How a
  key registered before is counted is not documented: ``register_counts`` answers each
  plausible way, ``"sent"`` (every distinct key sent) or ``"new"`` (only keys the project
  did not have).
- ``POST .../start_processing/`` (no body: default template; or a custom template) starts
  processing; the project then goes WAITING, PROCESSING, DONE (or ERROR).
- ``GET .../outputs/`` lists outputs (``result_type``, ``output_type``, ``availability``,
  ``s3_bucket``, ``s3_key``); once DONE, two small output objects exist in S3.

Inferred, not confirmed by PIX4D, and deliberately strict so that a client relying on
leniency fails here first: registering a key that is not an object under the project's
prefix is refused (400 naming the key); inputs cannot be added once processing started;
start_processing needs 6 to 4000 registered images (the product's limits) and a second
call is refused, while a project at ERROR may be started again; error bodies are
DRF-style ``{"detail": ...}`` JSON, and injected 5xx are HTML pages as a Django site
behind a load balancer answers; ``progress_percent``, ``estimated_time`` as remaining
seconds, the S3 credentials' ``expiration`` format, the JWT claims, the GET redirect for
a missing trailing slash.

Faults can be injected on both sides (``api_faults``, ``s3_faults``) to exercise a
client's retries and its handling of ambiguous outcomes: for example ``reset_after`` on
``projects`` (a project created, its reply lost), on ``register`` (keys registered, the
reply lost), or ``status503`` on ``start`` (refused before it acts). Run by hand with
``python -m tests.fakes.pix4dcloud --port 8000``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import itertools
import json
import logging
import math
import re
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from tests.fakes.s3proxy import (
    CredentialStore,
    Fault,
    FaultPlan,
    S3FaultProxy,
    ServerThread,
    TrackedHandler,
    TrackingHTTPServer,
    s3_fault_plan,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

REGION = "us-east-1"
API_PREFIX = "/project/api/v3/projects/"

#: Route names for API faults and request counts (``"any"`` matches every route);
#: ``projects`` is the creation (POST), ``list`` the listing (GET) of the same path.
API_ROUTES = frozenset(
    {
        "any",
        "token",
        "projects",
        "list",
        "credentials",
        "register",
        "start",
        "project",
        "outputs",
    }
)
#: Fault kinds of the API side. Before the request takes effect: ``status500/502/503``
#: (HTML error page), ``status429`` (JSON, ``Retry-After: retry_after``), ``reset``
#: (connection closed, no reply), ``stall`` (``delay_s``, then the normal reply),
#: ``garbage`` (200 text/html). After it took effect: ``reset_after`` (connection closed,
#: no reply), ``truncated_json`` (the JSON cut in half, in a well-framed reply),
#: ``start_ambiguous`` (``reset_after`` on a start_processing that succeeded).
API_FAULT_KINDS = frozenset(
    {
        "status500",
        "status502",
        "status503",
        "status429",
        "reset",
        "stall",
        "garbage",
        "truncated_json",
        "reset_after",
        "start_ambiguous",
    }
)
API_RANDOM_KINDS = (
    "status500",
    "status503",
    "status429",
    "reset",
    "garbage",
    "truncated_json",
    "reset_after",
)

_ROUTES: list[tuple[re.Pattern[str], str, frozenset[str]]] = [
    (re.compile(r"^/oauth2/token/$"), "token", frozenset({"POST"})),
    (re.compile(r"^/project/api/v3/projects/$"), "projects", frozenset({"GET", "POST"})),
    (re.compile(r"^/project/api/v3/projects/(\d+)/$"), "project", frozenset({"GET"})),
    (
        re.compile(r"^/project/api/v3/projects/(\d+)/s3_credentials/$"),
        "credentials",
        frozenset({"GET"}),
    ),
    (
        re.compile(r"^/project/api/v3/projects/(\d+)/inputs/bulk_register/$"),
        "register",
        frozenset({"POST"}),
    ),
    (
        re.compile(r"^/project/api/v3/projects/(\d+)/start_processing/$"),
        "start",
        frozenset({"POST"}),
    ),
    (re.compile(r"^/project/api/v3/projects/(\d+)/outputs/$"), "outputs", frozenset({"GET"})),
]


class QuickMotoServer(ThreadedMotoServer):
    """moto's threaded server, polling for shutdown every 50 ms instead of 500 ms.

    Same set-up as ``ThreadedMotoServer._server_entry``; only the poll interval differs,
    which makes each fixture teardown about half a second shorter.
    """

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        if self._thread is None:
            return
        super().stop()
        # ThreadedMotoServer.stop() leaves its listening socket open.
        if self._server is not None:
            self._server.server_close()


def api_fault_plan() -> FaultPlan:
    """A fault plan for the API side; ``start_ambiguous`` always targets ``start``."""
    return FaultPlan(
        API_FAULT_KINDS, API_ROUTES, API_RANDOM_KINDS, fixed_routes={"start_ambiguous": "start"}
    )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclasses.dataclass
class Reply:
    """An API reply before it is written (faults may still change it)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def json(cls, status: int, obj: Any, *headers: tuple[str, str]) -> Reply:
        return cls(status, json.dumps(obj).encode(), headers=list(headers))

    @classmethod
    def detail(cls, status: int, message: str, **extra: Any) -> Reply:
        return cls.json(status, {"detail": message, **extra})


@dataclasses.dataclass
class _Token:
    client_id: str
    expires_at: float


@dataclasses.dataclass
class _Project:
    id: int
    name: str
    prefix: str
    created_at: float
    registered: dict[str, None] = dataclasses.field(default_factory=dict)
    start_calls: int = 0
    started_at: float | None = None
    will_fail: bool = False
    failure_reason: str = ""
    template: dict[str, str] | None = None
    outputs_written: bool = False


@dataclasses.dataclass(frozen=True)
class ProjectView:
    """A snapshot of one project, for assertions."""

    id: int
    name: str
    prefix: str
    registered: set[str]
    start_calls: int
    public_status: str
    error_reason: str | None
    template: dict[str, str] | None


@dataclasses.dataclass(frozen=True)
class ApiRequest:
    """One API request, read whole (API bodies are small)."""

    method: str
    path: str
    query: str
    headers: Message[str, str]
    body: bytes


class FakePix4DCloud:
    """The API server, the S3 proxy and moto, started together (a context manager).

    Endpoints: ``url`` (API base, no trailing slash), ``s3_url`` (the proxy, handed out
    as ``endpoint_override``), ``moto_url`` (moto itself, unchecked); ``bucket``.

    ``processing_s`` is (seconds WAITING, seconds PROCESSING) after start_processing.
    Projects started while ``fail_processing`` is true end at ERROR with
    ``failure_reason``. ``verify_signatures=False`` lets the S3 proxy accept any SigV4
    signature from a known, valid credential.

    Faults: ``api_faults`` takes :data:`API_FAULT_KINDS` on :data:`API_ROUTES`;
    ``s3_faults`` takes :data:`~tests.fakes.s3proxy.S3_FAULT_KINDS` on
    :data:`~tests.fakes.s3proxy.S3_ROUTES`. Inspection: ``projects()``, ``project(id)``,
    ``objects(prefix)``, ``requests`` and ``s3_requests`` (counts per route).
    """

    def __init__(
        self,
        client_id: str = "dronesync-test",
        client_secret: str | None = None,
        *,
        token_ttl_s: float = 36000.0,
        s3_credentials_ttl_s: float = 3600.0,
        processing_s: tuple[float, float] = (0.2, 0.5),
        host: str = "127.0.0.1",
        port: int = 0,
        s3_port: int = 0,
        bucket: str | None = None,
        user_id: int = 1,
        min_images: int = 6,
        max_images: int = 4000,
        verify_signatures: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(processing_s) < 0:
            raise ValueError("processing_s must be two non-negative durations")
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.token_ttl_s = token_ttl_s
        self.s3_credentials_ttl_s = s3_credentials_ttl_s
        self.processing_s = processing_s
        self.user_id = user_id
        self.min_images = min_images
        self.max_images = max_images
        self.fail_processing = False
        self.register_counts: Literal["sent", "new"] = "sent"
        self.project_list: Literal["paged", "plain"] = "paged"
        self.page_size = 10
        self.failure_reason = "Not enough matches between images: calibration failed."
        self.clock = clock
        # moto's state is per process: a bucket per instance keeps instances apart.
        self.bucket = bucket or f"fake-pix4d-cloud-{secrets.token_hex(4)}"
        self.api_faults = api_fault_plan()
        self.s3_faults = s3_fault_plan()
        self.requests: Counter[str] = Counter()
        self.s3_credentials = CredentialStore(clock)
        self._host = host
        self._port = port
        self._s3_port = s3_port
        self._verify_signatures = verify_signatures
        self._lock = threading.RLock()
        self._jwt_key = secrets.token_bytes(32)
        self._tokens: dict[str, _Token] = {}
        self._refresh_tokens: dict[str, str] = {}
        self._projects: dict[int, _Project] = {}
        self._ids = itertools.count(250001)
        self._moto: QuickMotoServer | None = None
        self._s3: S3Client | None = None
        self._proxy: S3FaultProxy | None = None
        self._api: ServerThread | None = None
        self.url = ""
        self.s3_url = ""
        self.moto_url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        # moto's werkzeug server logs every request to stderr unless someone configured
        # its logger; a test run or a terminal has no use for those lines.
        werkzeug_log = logging.getLogger("werkzeug")
        if werkzeug_log.level == logging.NOTSET:
            werkzeug_log.setLevel(logging.WARNING)
        try:
            self._moto = QuickMotoServer(ip_address=self._host, port=0, verbose=False)
            self._moto.start()
            moto_host, moto_port = self._moto.get_host_and_port()
            self.moto_url = f"http://{moto_host}:{moto_port}"
            self._s3 = boto3.client(
                "s3",
                endpoint_url=self.moto_url,
                region_name=REGION,
                aws_access_key_id="fake-pix4d-cloud",
                aws_secret_access_key="fake-pix4d-cloud",
                config=Config(s3={"addressing_style": "path"}),
            )
            self._s3.create_bucket(Bucket=self.bucket)
            self._proxy = S3FaultProxy(
                self.moto_url,
                credentials=self.s3_credentials,
                faults=self.s3_faults,
                host=self._host,
                port=self._s3_port,
                verify_signatures=self._verify_signatures,
                clock=self.clock,
            ).start()
            self.s3_url = self._proxy.url
            server = _ApiServer((self._host, self._port), _ApiHandler)
            server.cloud = self
            self._api = ServerThread(server, "fake-pix4d-cloud-api")
            self._api.start()
            self.url = self._api.url
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._api is not None:
            self._api.stop()
            self._api = None
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        if self._s3 is not None:
            with contextlib.suppress(ClientError, OSError):
                self._delete_bucket(self._s3)
            self._s3.close()
            self._s3 = None
        if self._moto is not None:
            moto, self._moto = self._moto, None
            moto.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _delete_bucket(self, s3: S3Client) -> None:
        # Deleting releases moto's temporary files now rather than at interpreter exit.
        for uploads in s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket):
            for upload in uploads.get("Uploads", []):
                s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": obj["Key"]} for obj in page.get("Contents", [])
            ]
            if keys:
                s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=self.bucket)

    # ------------------------------------------------------------------ test controls

    @property
    def moto_s3(self) -> S3Client:
        """A boto3 client straight to moto (no checks, no faults); owned by this object."""
        if self._s3 is None:
            raise RuntimeError("FakePix4DCloud is not running")
        return self._s3

    @property
    def s3_requests(self) -> Counter[str]:
        """S3 requests seen by the proxy, per S3 route."""
        return self._proxy.requests if self._proxy is not None else Counter()

    @property
    def s3_most_at_once(self) -> Counter[str]:
        """The most S3 requests of each route the proxy served at the same time."""
        return self._proxy.most_at_once if self._proxy is not None else Counter()

    def expire_tokens(self) -> None:
        """Every access token issued so far is now expired."""
        now = self.clock()
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = min(token.expires_at, now - 1.0)

    def expire_s3_credentials(self) -> None:
        """Every S3 credential issued so far is now expired."""
        self.s3_credentials.expire_all()

    def rotate_secret(self, secret: str) -> None:
        """The client's secret changed on the account: every token and refresh token is void."""
        with self._lock:
            self.client_secret = secret
            self._tokens.clear()
            self._refresh_tokens.clear()

    def projects(self) -> dict[int, ProjectView]:
        with self._lock:
            return {pid: self._view(p) for pid, p in self._projects.items()}

    def project(self, project_id: int) -> ProjectView:
        with self._lock:
            return self._view(self._projects[project_id])

    def backdate(self, project_id: int, seconds: float) -> None:
        """Make a project look created ``seconds`` earlier (another client's, made before)."""
        with self._lock:
            self._projects[project_id].created_at -= seconds

    def objects(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        """Objects in the bucket under ``prefix``: key -> (size, sha256 hex), read from moto."""
        s3 = self.moto_s3
        found: dict[str, tuple[int, str]] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                digest = hashlib.sha256()
                body = s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"]
                with contextlib.closing(body):
                    for chunk in body.iter_chunks(1 << 20):
                        digest.update(chunk)
                found[obj["Key"]] = (obj["Size"], digest.hexdigest())
        return found

    def _view(self, p: _Project) -> ProjectView:
        status, _ = self._status(p)
        return ProjectView(
            id=p.id,
            name=p.name,
            prefix=p.prefix,
            registered=set(p.registered),
            start_calls=p.start_calls,
            public_status=status,
            error_reason=p.failure_reason if status == "ERROR" else None,
            template=p.template,
        )

    # ------------------------------------------------------------------ processing model

    def _status(self, p: _Project) -> tuple[str, float]:
        """(public_status, progress 0..1) now; writes the outputs on reaching DONE."""
        if p.started_at is None:
            return "NEW", 0.0
        waiting, running = self.processing_s
        elapsed = self.clock() - p.started_at
        if elapsed < waiting:
            return "WAITING", 0.0
        if elapsed < waiting + running:
            return "PROCESSING", (elapsed - waiting) / running if running else 1.0
        if p.will_fail:
            return "ERROR", 1.0
        if not p.outputs_written:
            self._write_outputs(p)
        return "DONE", 1.0

    def _output_specs(self, p: _Project) -> list[tuple[str, str, str, bytes]]:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", p.name).strip("_").lower() or "project"
        tif = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 24 + slug.encode()
        pdf = b"%PDF-1.4\n% quality report of " + slug.encode() + b"\n%%EOF\n"
        return [
            (
                "ortho",
                "ortho",
                f"{p.prefix}/{slug}/3_dsm_ortho/2_mosaic/{slug}_transparent_mosaic_group1.tif",
                tif,
            ),
            (
                "quality_report",
                "quality_report",
                f"{p.prefix}/{slug}/1_initial/report/{slug}_report.pdf",
                pdf,
            ),
        ]

    def _write_outputs(self, p: _Project) -> None:
        for _, _, key, data in self._output_specs(p):
            self.moto_s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        p.outputs_written = True

    def _project_json(self, p: _Project) -> dict[str, Any]:
        status, progress = self._status(p)
        waiting, running = self.processing_s
        if p.started_at is None:
            remaining: int | None = None
        else:
            remaining = max(0, math.ceil(p.started_at + waiting + running - self.clock()))
        detailed = {
            "NEW": "Waiting for images and start of processing",
            "WAITING": "Waiting for processing to start",
            "PROCESSING": f"Processing ({round(progress * 100)}%)",
            "DONE": "Processed",
            "ERROR": "Processing failed",
        }[status]
        return {
            "id": p.id,
            "name": p.name,
            "display_name": p.name,
            "bucket_name": self.bucket,
            "s3_base_path": p.prefix,
            "detail_url": f"{self.url}{API_PREFIX}{p.id}/",
            "create_date": _iso(p.created_at),
            "public_status": status,
            "display_detailed_status": detailed,
            "progress_percent": round(progress * 100),
            "error_reason": p.failure_reason if status == "ERROR" else None,
            "estimated_time": remaining,
        }

    # ------------------------------------------------------------------ routing

    @staticmethod
    def resolve(method: str, path: str) -> tuple[str | None, int | None, Reply | None]:
        """(route, project id, or the reply for a path or method the API does not have)."""
        for pattern, route, methods in _ROUTES:
            m = pattern.match(path)
            if m is None:
                continue
            if method not in methods:
                return route, None, Reply.detail(405, f'Method "{method}" not allowed.')
            named = "list" if route == "projects" and method == "GET" else route
            return named, int(m.group(1)) if m.groups() else None, None
        # Django's APPEND_SLASH redirects GETs (it cannot redirect a POST body).
        if (
            method in {"GET", "HEAD"}
            and not path.endswith("/")
            and any(p.match(path + "/") for p, _, _ in _ROUTES)
        ):
            return None, None, Reply(301, b"", headers=[("Location", path + "/")])
        return None, None, Reply.detail(404, "Not found.")

    def dispatch(self, route: str, project_id: int | None, req: ApiRequest) -> Reply:
        if route == "token":
            return self._token(req)
        auth_error = self._authenticate(req)
        if auth_error is not None:
            return auth_error
        if route == "projects":
            return self._create_project(req)
        if route == "list":
            return self._list_projects(req)
        with self._lock:
            project = self._projects.get(project_id) if project_id is not None else None
        if project is None:
            return Reply.detail(404, "Not found.")
        handler = {
            "project": self._get_project,
            "credentials": self._credentials,
            "register": self._register,
            "start": self._start,
            "outputs": self._outputs,
        }[route]
        return handler(project, req)

    def count(self, route: str) -> None:
        with self._lock:
            self.requests[route] += 1

    # ------------------------------------------------------------------ auth

    def _token(self, req: ApiRequest) -> Reply:
        params = dict(urllib.parse.parse_qsl(req.query, keep_blank_values=True))
        ctype = req.headers.get("Content-Type", "")
        if "json" in ctype:
            with contextlib.suppress(ValueError):
                loaded = json.loads(req.body or b"{}")
                if isinstance(loaded, dict):
                    params.update({str(k): str(v) for k, v in loaded.items()})
        elif req.body:
            params.update(urllib.parse.parse_qsl(req.body.decode(errors="replace")))
        basic = req.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
                params.setdefault("client_id", urllib.parse.unquote(user))
                params.setdefault("client_secret", urllib.parse.unquote(password))
        grant = params.get("grant_type", "")
        if grant == "refresh_token":
            with self._lock:
                client = self._refresh_tokens.pop(params.get("refresh_token", ""), None)
            if client is None:
                return Reply.json(400, {"error": "invalid_grant"})
        elif grant == "client_credentials":
            ok_id = hmac.compare_digest(params.get("client_id", ""), self.client_id)
            ok_secret = hmac.compare_digest(params.get("client_secret", ""), self.client_secret)
            if not (ok_id and ok_secret):
                return Reply.json(401, {"error": "invalid_client"})
            client = self.client_id
        else:
            return Reply.json(400, {"error": "unsupported_grant_type"})
        now = self.clock()
        expires_at = now + self.token_ttl_s
        if params.get("token_format") == "jwt":
            header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
            claims = {
                "sub": client,
                "iat": int(now),
                "exp": int(expires_at),
                "jti": secrets.token_hex(8),
            }
            payload = _b64url(json.dumps(claims).encode())
            sig = hmac.new(self._jwt_key, f"{header}.{payload}".encode(), "sha256").digest()
            access = f"{header}.{payload}.{_b64url(sig)}"
        else:
            access = secrets.token_urlsafe(30)
        refresh = secrets.token_urlsafe(30)
        with self._lock:
            self._tokens[access] = _Token(client, expires_at)
            self._refresh_tokens[refresh] = client
        return Reply.json(
            200,
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": math.ceil(self.token_ttl_s),
                "refresh_token": refresh,
                "scope": "read write",
            },
        )

    def _authenticate(self, req: ApiRequest) -> Reply | None:
        challenge = ("WWW-Authenticate", 'Bearer realm="api"')
        scheme, _, value = req.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return Reply.json(
                401, {"detail": "Authentication credentials were not provided."}, challenge
            )
        with self._lock:
            token = self._tokens.get(value.strip())
        if token is None:
            return Reply.json(
                401, {"detail": "Invalid token.", "code": "token_not_valid"}, challenge
            )
        if self.clock() >= token.expires_at:
            return Reply.json(
                401, {"detail": "Token has expired.", "code": "token_not_valid"}, challenge
            )
        return None

    # ------------------------------------------------------------------ project routes

    @staticmethod
    def _json_body(req: ApiRequest) -> tuple[dict[str, Any] | None, Reply | None]:
        if not req.body.strip():
            return {}, None
        try:
            data = json.loads(req.body)
        except ValueError:
            return None, Reply.detail(400, "JSON parse error.")
        if not isinstance(data, dict):
            return None, Reply.detail(400, "Expected a JSON object.")
        return data, None

    def _create_project(self, req: ApiRequest) -> Reply:
        data, error = self._json_body(req)
        if error is not None or data is None:
            return error or Reply.detail(400, "Bad request.")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            return Reply.json(400, {"name": ["This field is required."]})
        with self._lock:
            pid = next(self._ids)
            project = _Project(pid, name, f"user-{self.user_id}/project-{pid}", self.clock())
            self._projects[pid] = project
            return Reply.json(201, self._project_json(project))

    def _list_projects(self, req: ApiRequest) -> Reply:
        with self._lock:
            results = [self._project_json(p) for p in self._projects.values()]
        if self.project_list == "plain":
            return Reply.json(200, results)
        params = urllib.parse.parse_qs(req.query)
        try:
            page = int(params.get("page", ["1"])[0])
        except ValueError:
            page = 0
        pages = max(1, math.ceil(len(results) / self.page_size))
        if not 1 <= page <= pages:
            return Reply.detail(404, "Invalid page.")

        def link(number: int) -> str | None:
            return f"{self.url}{API_PREFIX}?page={number}" if 1 <= number <= pages else None

        return Reply.json(
            200,
            {
                "count": len(results),
                "next": link(page + 1),
                "previous": link(page - 1),
                "results": results[(page - 1) * self.page_size : page * self.page_size],
            },
        )

    def _get_project(self, project: _Project, req: ApiRequest) -> Reply:
        with self._lock:
            return Reply.json(200, self._project_json(project))

    def _credentials(self, project: _Project, req: ApiRequest) -> Reply:
        cred = self.s3_credentials.issue(self.bucket, project.prefix, self.s3_credentials_ttl_s)
        return Reply.json(
            200,
            {
                "access_key": cred.access_key,
                "secret_key": cred.secret_key,
                "session_token": cred.session_token,
                "bucket": cred.bucket,
                "key": cred.prefix,
                "region": REGION,
                "endpoint_override": self.s3_url,
                "is_bucket_accelerated": False,
                "expiration": _iso(cred.expires_at),
            },
        )

    def _existing_keys(self, prefix: str) -> set[str]:
        keys: set[str] = set()
        for page in self.moto_s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.update(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def _register(self, project: _Project, req: ApiRequest) -> Reply:
        data, error = self._json_body(req)
        if error is not None or data is None:
            return error or Reply.detail(400, "Bad request.")
        keys = data.get("input_file_keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            return Reply.json(400, {"input_file_keys": ["Expected a list of strings."]})
        with self._lock:
            if project.started_at is not None:
                status, _ = self._status(project)
                return Reply.detail(400, f"Inputs cannot be added to a project in status {status}.")
        scope = project.prefix + "/"
        existing = self._existing_keys(scope)
        invalid = [k for k in dict.fromkeys(keys) if not k.startswith(scope) or k not in existing]
        if invalid:
            shown = ", ".join(repr(k) for k in invalid[:5])
            more = f" (and {len(invalid) - 5} more)" if len(invalid) > 5 else ""
            return Reply.detail(
                400,
                f"Input file keys not found in bucket {self.bucket} under {scope}: {shown}{more}",
                invalid_keys=invalid,
            )
        with self._lock:
            new = [k for k in dict.fromkeys(keys) if k not in project.registered]
            for key in keys:
                project.registered[key] = None
        counted = len(new) if self.register_counts == "new" else len(set(keys))
        return Reply.json(200, {"nb_images_registered": counted})

    def _start(self, project: _Project, req: ApiRequest) -> Reply:
        data, error = self._json_body(req)
        with self._lock:
            project.start_calls += 1
        if error is not None or data is None:
            return error or Reply.detail(400, "Bad request.")
        template: dict[str, str] | None = None
        if data.get("custom_template_s3_key"):
            key = str(data["custom_template_s3_key"])
            bucket = str(data.get("custom_template_s3_bucket") or self.bucket)
            try:
                self.moto_s3.head_object(Bucket=bucket, Key=key)
            except ClientError:
                return Reply.detail(400, f"Custom template s3://{bucket}/{key} does not exist.")
            template = {"s3_bucket": bucket, "s3_key": key}
        with self._lock:
            status, _ = self._status(project)
            if status not in {"NEW", "ERROR"}:
                return Reply.detail(
                    400, f"Processing already started for project {project.id} ({status})."
                )
            count = len(project.registered)
            if count < self.min_images:
                return Reply.detail(
                    400,
                    f"At least {self.min_images} images are required to start processing; "
                    f"{count} registered.",
                )
            if count > self.max_images:
                return Reply.detail(
                    400, f"At most {self.max_images} images can be processed; {count} registered."
                )
            project.started_at = self.clock()
            project.will_fail = self.fail_processing
            project.failure_reason = self.failure_reason if self.fail_processing else ""
            project.template = template
            project.outputs_written = False
            return Reply.json(
                200,
                {
                    "id": project.id,
                    "public_status": "WAITING",
                    "estimated_time": math.ceil(sum(self.processing_s)),
                },
            )

    def _outputs(self, project: _Project, req: ApiRequest) -> Reply:
        with self._lock:
            status, _ = self._status(project)
            availability = {"PROCESSING": "in_progress", "DONE": "done"}.get(
                status, "not available"
            )
            outputs: list[dict[str, Any]] = []
            for n, (result_type, output_type, key, _) in enumerate(self._output_specs(project)):
                entry: dict[str, Any] = {
                    "result_type": result_type,
                    "output_type": output_type,
                    "availability": availability,
                }
                if status == "DONE":
                    entry.update(
                        s3_key=key,
                        s3_bucket=self.bucket,
                        s3_region=REGION,
                        output_id=project.id * 100 + n,
                    )
                outputs.append(entry)
            # Real listings mix in outputs that can be requested but do not exist yet.
            outputs.append(
                {"result_type": "dsm", "output_type": "dsm_bundle", "availability": "requestable"}
            )
            return Reply.json(200, {"outputs": outputs})


# ---------------------------------------------------------------------- HTTP side


class _ApiServer(TrackingHTTPServer):
    cloud: FakePix4DCloud


_HTML_ERROR = (
    '<!doctype html>\n<html lang="en"><head><title>Server Error ({code})</title></head>'
    "<body><h1>Server Error ({code})</h1><p></p></body></html>\n"
)
_GARBAGE = (
    b"<!DOCTYPE html><html><head><title>Maintenance</title></head>"
    b"<body><h1>We'll be back soon.</h1></body></html>"
)


class _ApiHandler(TrackedHandler):
    server: _ApiServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    do_POST = do_GET  # noqa: N815
    do_PUT = do_GET  # noqa: N815
    do_PATCH = do_GET  # noqa: N815
    do_DELETE = do_GET  # noqa: N815

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in {b"\r\n", b"\n", b""}:
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length > 0 else b""
        if len(data) < length:
            raise EOFError("client closed the connection mid-body")
        return bytes(data)

    def _handle(self) -> None:
        cloud = self.server.cloud
        try:
            body = self._read_body()
        except (EOFError, OSError, ValueError):
            self.abort_connection()
            return
        path, _, query = self.path.partition("?")
        route, project_id, early = cloud.resolve(self.command, path)
        cloud.count(route or "unknown")
        if route is None or early is not None:
            self._send(early or Reply.detail(404, "Not found."))
            return
        fault = cloud.api_faults.take(route)
        if fault is not None and self._fault_before(fault):
            return
        request = ApiRequest(self.command, path, query, self.headers, body)
        reply = cloud.dispatch(route, project_id, request)
        if fault is not None and self._fault_after(fault, reply):
            return
        self._send(reply)

    def _fault_before(self, fault: Fault) -> bool:
        """Apply a fault that strikes before the request takes effect; True if it replied."""
        kind = fault.kind
        if kind == "stall":
            if self.stall(fault.delay_s):
                self.abort_connection()
                return True
            return False
        if kind in {"status500", "status502", "status503"}:
            code = int(kind.removeprefix("status"))
            html = _HTML_ERROR.format(code=code).encode()
            self._send(Reply(code, html, "text/html; charset=utf-8"))
            return True
        if kind == "status429":
            wait = math.ceil(fault.retry_after)
            message = f"Request was throttled. Expected available in {wait} seconds."
            self._send(Reply.json(429, {"detail": message}, ("Retry-After", str(wait))))
            return True
        if kind == "reset":
            self.abort_connection()
            return True
        if kind == "garbage":
            self._send(Reply(200, _GARBAGE, "text/html; charset=utf-8"))
            return True
        return False

    def _fault_after(self, fault: Fault, reply: Reply) -> bool:
        """Apply a fault that strikes after the request took effect; True if it replied."""
        if fault.kind == "start_ambiguous" and reply.status >= 300:
            # Processing did not start: nothing ambiguous to simulate this time.
            self.server.cloud.api_faults.restore(fault)
            return False
        if fault.kind in {"start_ambiguous", "reset_after"}:
            self.abort_connection()
            return True
        if fault.kind == "truncated_json":
            # A complete HTTP reply whose JSON is cut short.
            reply.body = reply.body[: max(1, len(reply.body) // 2)]
        return False

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()


# ---------------------------------------------------------------------- by hand


def main(argv: list[str] | None = None) -> int:
    """Serve a local PIX4Dcloud until Ctrl-C, printing what a config needs."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.pix4dcloud",
        description="A local PIX4Dcloud-compatible API with an S3 emulator behind it.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="API port (0: any free port)")
    parser.add_argument("--s3-port", type=int, default=0, help="S3 endpoint port")
    parser.add_argument("--client-id", default="dronesync-local")
    parser.add_argument(
        "--client-secret-file", type=Path, help="file holding the client secret (else generated)"
    )
    parser.add_argument("--token-ttl", type=float, default=36000.0, help="seconds")
    parser.add_argument("--s3-credentials-ttl", type=float, default=3600.0, help="seconds")
    parser.add_argument(
        "--processing-s",
        type=float,
        nargs=2,
        default=(5.0, 30.0),
        metavar=("WAITING", "PROCESSING"),
        help="seconds spent WAITING, then PROCESSING, after start_processing",
    )
    parser.add_argument("--fail-processing", action="store_true", help="end projects at ERROR")
    parser.add_argument(
        "--s3-public-url",
        default=None,
        help="the S3 endpoint handed to clients, when they reach it through a proxy",
    )
    parser.add_argument(
        "--s3-fault-rate",
        type=float,
        default=0.0,
        help="share of PutObject requests answered 503 SlowDown",
    )
    args = parser.parse_args(argv)
    secret = None
    if args.client_secret_file is not None:
        secret = args.client_secret_file.read_text(encoding="utf-8").strip()
        if not secret:
            parser.error(f"{args.client_secret_file} is empty")
    cloud = FakePix4DCloud(
        args.client_id,
        secret,
        token_ttl_s=args.token_ttl,
        s3_credentials_ttl_s=args.s3_credentials_ttl,
        processing_s=(args.processing_s[0], args.processing_s[1]),
        host=args.host,
        port=args.port,
        s3_port=args.s3_port,
    )
    cloud.fail_processing = args.fail_processing
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with cloud:
        if args.s3_public_url:
            cloud.s3_url = args.s3_public_url
        if args.s3_fault_rate:
            cloud.s3_faults.random(args.s3_fault_rate, kinds=("status503",), route="put_object")
        print(f"PIX4Dcloud API:  {cloud.url}")
        print(f"client id:       {cloud.client_id}")
        print(f"client secret:   {cloud.client_secret}")
        print(f"S3 endpoint:     {cloud.s3_url} (bucket {cloud.bucket}, region {REGION})")
        print("Serving; Ctrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
