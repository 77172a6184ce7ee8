"""A fault-injecting HTTP proxy in front of an S3 emulator (moto in server mode).

moto stores objects and speaks the S3 protocol well, but by default it accepts any
credentials. Real S3 behind PIX4Dcloud does not: the temporary credentials it hands out
expire, belong to one project's key prefix, and are checked on every request. This proxy
reproduces that part of S3 and forwards everything else to moto unchanged:

- authentication, from the ``Authorization`` header or a presigned URL: an unknown
  access key (or one sent without its session token) is ``403 InvalidAccessKeyId``, an
  expired one ``400 ExpiredToken``, a wrong session token ``400 InvalidToken``, a SigV4
  signature made with the wrong secret ``403 SignatureDoesNotMatch``, an expired
  presigned URL ``403 AccessDenied``. SigV2 presigned URLs (botocore's default for
  ``generate_presigned_url`` on S3) are checked for key, token and expiry only;
- scope: a key (or a listing prefix) outside the credential's prefix, or another bucket,
  is ``403 AccessDenied``; bucket-level calls other than a scoped listing are refused too;
- ``Transfer-Encoding: chunked`` without ``x-amz-decoded-content-length`` is
  ``411 MissingContentLength``, as S3 answers (aws-chunked uploads, which botocore sends
  over HTTPS, carry that header and are forwarded);
- ``Expect: 100-continue`` (botocore sets it on PutObject/UploadPart with a file body) is
  answered by the proxy itself, so a refusal reaches the client before it sends the body;
- checksums, which moto takes on trust: a PutObject or UploadPart body sent with
  ``x-amz-checksum-sha256`` is hashed on its way through, and one that does not match is
  ``400 BadDigest``, as S3 answers (``digest_code="XAmzContentChecksumMismatch"``: as MinIO
  answers, per its own tests and error table), and never stored: its last piece is held
  back until the hash is known, so on a mismatch moto sees the request cut short and drops
  it. A malformed value is ``400 InvalidRequest``. The reply of a checked request names the
  checksum of what was received (``x-amz-checksum-sha256``), as S3's does. Other algorithms
  (botocore adds a CRC32 unless told ``request_checksum_calculation="when_required"``) and
  aws-chunked bodies (signed chunks, checksum in a trailer) are forwarded unchecked.

Bodies are streamed both ways, never held in memory, so multi-gigabyte multipart uploads
work. Faults are injected on demand (:class:`FaultPlan`) to exercise a client's retry and
recovery paths: 5xx with S3 XML bodies, connections reset before a reply, reset in the
middle of a request body, a body altered on the way, a reply dropped after moto stored the
object, stalls.

Addressing must be path-style (``http://host:port/bucket/key``), which is what botocore
uses for an ``endpoint_url`` on 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import http.client
import logging
import random
import secrets
import socket
import string
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

CHUNK = 256 * 1024

#: Fault kinds of the S3 proxy: ``status503`` (SlowDown) and ``status500`` (InternalError)
#: with S3 XML bodies; ``reset`` (connection closed, no reply, nothing stored);
#: ``reset_mid_body`` (half the request body read, then RST; requests with a body only);
#: ``corrupt_body`` (one byte in the middle of a PutObject or UploadPart body flipped before
#: the proxy checks and forwards it, as a faulty network path would; plain bodies only);
#: ``drop_response`` (moto handled it, e.g. stored the object, but the reply is lost);
#: ``stall`` (``delay_s``, then forwarded).
S3_FAULT_KINDS = frozenset(
    {"status500", "status503", "reset", "reset_mid_body", "corrupt_body", "drop_response", "stall"}
)
#: Route names of S3 requests, derived from method and query (``"any"`` matches all).
S3_ROUTES = frozenset(
    {
        "any",
        "put_object",
        "upload_part",
        "create_multipart",
        "complete_multipart",
        "abort_multipart",
        "list_parts",
        "get_object",
        "head_object",
        "delete_object",
        "list_objects",
        "bucket",
    }
)
# Query parameters of ListObjects(V2) and ListMultipartUploads: nothing else is allowed
# at bucket level under a prefix-scoped credential.
_LISTING_PARAMS = frozenset(
    {
        "list-type", "prefix", "delimiter", "continuation-token", "max-keys", "start-after",
        "encoding-type", "fetch-owner", "marker", "uploads", "key-marker", "upload-id-marker",
        "max-uploads",
    }
)  # fmt: skip
S3_RANDOM_KINDS = ("status503", "status500", "reset", "reset_mid_body", "drop_response")
_CHECKSUM_HEADER = "x-amz-checksum-sha256"
# Requests whose body the proxy hashes against ``x-amz-checksum-sha256`` (and may corrupt).
_CHECKED_ROUTES = frozenset({"put_object", "upload_part"})

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each side.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)


# --------------------------------------------------------------------------- faults


@dataclasses.dataclass
class Fault:
    """One planned fault: ``kind`` on requests of ``route``, ``times`` times (None: always)."""

    kind: str
    route: str = "any"
    times: int | None = 1
    after: int = 0
    delay_s: float = 5.0
    retry_after: float = 1.0
    is_random: bool = False

    def matches(self, route: str) -> bool:
        return self.route in {"any", route}


class FaultPlan:
    """Thread-safe list of faults to inject, plus an optional random fault rate.

    Explicit faults (``add``) are used first, in the order added; ``after=N`` lets the
    first N matching requests through. ``random`` then turns a share of the remaining
    requests into faults drawn from ``kinds``. ``injected`` counts faults by kind as they
    are applied.
    """

    def __init__(
        self,
        kinds: frozenset[str],
        routes: frozenset[str],
        random_kinds: tuple[str, ...],
        fixed_routes: Mapping[str, str] | None = None,
    ) -> None:
        self._kinds = kinds
        self._routes = routes
        self._random_kinds = random_kinds
        self._fixed_routes = dict(fixed_routes or {})
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._rate = 0.0
        self._rng = random.Random()
        self._random_pool: tuple[str, ...] = ()
        self._random_route = "any"
        self._random_delay_s = 0.5
        self.injected: Counter[str] = Counter()
        self.injected_on: Counter[tuple[str, str]] = Counter()  # by (kind, route)

    def add(
        self,
        kind: str,
        route: str | None = None,
        times: int | None = 1,
        *,
        after: int = 0,
        delay_s: float = 5.0,
        retry_after: float = 1.0,
    ) -> Fault:
        """Plan ``kind`` for the next ``times`` requests of ``route`` (None: every one)."""
        if kind not in self._kinds:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(self._kinds)}")
        fixed = self._fixed_routes.get(kind)
        if route is None:
            route = fixed or "any"
        if fixed is not None and route != fixed:
            raise ValueError(f"fault {kind!r} only applies to route {fixed!r}")
        if route not in self._routes:
            raise ValueError(f"unknown route {route!r}; known: {sorted(self._routes)}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for every request")
        fault = Fault(kind, route, times, after, delay_s, retry_after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def random(
        self,
        rate: float,
        seed: int | None = None,
        *,
        kinds: tuple[str, ...] | None = None,
        route: str = "any",
        delay_s: float = 0.5,
    ) -> None:
        """Turn a share ``rate`` of requests of ``route`` into faults drawn from ``kinds``.

        The draw is reproducible for a given ``seed`` when requests arrive in the same
        order (one client thread). ``rate=0`` switches random faults off.
        """
        pool = kinds if kinds is not None else self._random_kinds
        for kind in pool:
            if kind not in self._kinds or kind in self._fixed_routes:
                raise ValueError(f"fault {kind!r} cannot be drawn at random")
        if route not in self._routes:
            raise ValueError(f"unknown route {route!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        with self._lock:
            self._rate = rate
            self._rng = random.Random(seed)
            self._random_pool = pool
            self._random_route = route
            self._random_delay_s = delay_s

    def clear(self) -> None:
        """Forget every planned fault and switch random faults off (counts are kept)."""
        with self._lock:
            self._faults.clear()
            self._rate = 0.0

    @property
    def pending(self) -> list[Fault]:
        """Explicit faults not yet used up."""
        with self._lock:
            return list(self._faults)

    def take(self, route: str, accept: Callable[[str], bool] | None = None) -> Fault | None:
        """The fault to apply to this request of ``route``, if any, and count it."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(route) or (accept is not None and not accept(fault.kind)):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                self.injected[fault.kind] += 1
                self.injected_on[fault.kind, route] += 1
                return fault
            if self._rate > 0 and self._random_route in {"any", route}:
                if self._rng.random() >= self._rate:
                    return None
                candidates = [k for k in self._random_pool if accept is None or accept(k)]
                if not candidates:
                    return None
                kind = self._rng.choice(candidates)
                self.injected[kind] += 1
                self.injected_on[kind, route] += 1
                return Fault(kind, route, 1, delay_s=self._random_delay_s, is_random=True)
            return None

    def restore(self, fault: Fault) -> None:
        """Put back a fault that was taken but turned out not to apply."""
        with self._lock:
            self.injected[fault.kind] -= 1
            if fault.is_random:
                self.injected_on[fault.kind, fault.route] -= 1  # its route is the request's
                return
            if fault.times is not None:
                fault.times += 1
                if fault not in self._faults:
                    self._faults.insert(0, fault)


def s3_fault_plan() -> FaultPlan:
    """A fault plan for the S3 proxy."""
    return FaultPlan(S3_FAULT_KINDS, S3_ROUTES, S3_RANDOM_KINDS)


# --------------------------------------------------------------------------- credentials


@dataclasses.dataclass(frozen=True)
class S3Credential:
    """Temporary S3 credentials scoped to one key prefix of one bucket."""

    access_key: str
    secret_key: str
    session_token: str
    bucket: str
    prefix: str
    expires_at: float
    issued_at: float


class CredentialStore:
    """Temporary credentials the proxy accepts, issued the way STS issues them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[str, S3Credential] = {}

    def issue(self, bucket: str, prefix: str, ttl_s: float) -> S3Credential:
        """New credentials for keys under ``prefix`` (``""``: the whole bucket)."""
        now = self._clock()
        alphabet = string.ascii_uppercase + string.digits
        cred = S3Credential(
            # Temporary AWS access keys start with ASIA; long-term ones with AKIA.
            access_key="ASIA" + "".join(secrets.choice(alphabet) for _ in range(16)),
            secret_key=secrets.token_urlsafe(30)[:40],
            session_token=secrets.token_urlsafe(96),
            bucket=bucket,
            prefix=prefix,
            expires_at=now + ttl_s,
            issued_at=now,
        )
        with self._lock:
            self._by_key[cred.access_key] = cred
        return cred

    def get(self, access_key: str) -> S3Credential | None:
        with self._lock:
            return self._by_key.get(access_key)

    def expire_all(self) -> None:
        """Every credential issued so far is now expired."""
        now = self._clock()
        with self._lock:
            for key, cred in self._by_key.items():
                expires_at = min(cred.expires_at, now - 1.0)
                self._by_key[key] = dataclasses.replace(cred, expires_at=expires_at)

    def is_expired(self, cred: S3Credential) -> bool:
        return self._clock() >= cred.expires_at


# --------------------------------------------------------------------------- S3 requests


class S3Error(Exception):
    """An S3 error reply: HTTP status and the ``<Error>`` document's code and message."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def xml(self, request_id: str) -> bytes:
        fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in self.extra.items())
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(self.code)}</Code><Message>{escape(self.message)}</Message>"
            f"{fields}<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>"
        ).encode()


@dataclasses.dataclass
class S3Request:
    """What the proxy understands of one request before forwarding it."""

    method: str
    raw_path: str
    raw_query: str
    bucket: str
    key: str
    query: dict[str, list[str]]
    headers: Message[str, str]
    route: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.route = s3_route(self.method, self.bucket, self.key, self.query)

    @classmethod
    def parse(cls, method: str, target: str, headers: Message[str, str]) -> S3Request:
        raw_path, _, raw_query = target.partition("?")
        parts = urllib.parse.unquote(raw_path).lstrip("/").split("/", 1)
        bucket = parts[0]
        key = parts[1] if len(parts) > 1 else ""
        query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
        return cls(method, raw_path, raw_query, bucket, key, query, headers)


def s3_route(method: str, bucket: str, key: str, query: Mapping[str, object]) -> str:
    """Name of the S3 operation, coarse enough to aim faults at."""
    if not key:
        return "list_objects" if method == "GET" and bucket else "bucket"
    if method == "PUT":
        return "upload_part" if "partNumber" in query and "uploadId" in query else "put_object"
    if method == "POST":
        if "uploads" in query:
            return "create_multipart"
        return "complete_multipart" if "uploadId" in query else "bucket"
    if method == "DELETE":
        return "abort_multipart" if "uploadId" in query else "delete_object"
    if method == "GET":
        return "list_parts" if "uploadId" in query else "get_object"
    if method == "HEAD":
        return "head_object"
    return "bucket"


def expected_sha256(req: S3Request) -> bytes | None:
    """The SHA-256 a PutObject or UploadPart says its body has (None: nothing to check).

    Raises ``400 InvalidRequest`` for a value that is not the base64 of 32 bytes, as S3 does.
    """
    value = req.headers.get(_CHECKSUM_HEADER)
    if value is None or req.route not in _CHECKED_ROUTES or not is_plain_body(req.headers):
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise S3Error(400, "InvalidRequest", "Value for x-amz-checksum-sha256 header is invalid.")
    return digest


def is_plain_body(headers: Message[str, str]) -> bool:
    """A body framed by Content-Length that is the content itself (not aws-chunked)."""
    return (
        not body_is_chunked(headers)
        and "aws-chunked" not in headers.get("Content-Encoding", "").lower()
        and "x-amz-decoded-content-length" not in headers
    )


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


@dataclasses.dataclass(frozen=True)
class Signature:
    """The parts of an AWS request signature that the proxy checks.

    Version 4 is checked in full. Version 2 (what botocore still uses for presigned S3
    URLs unless told ``signature_version="s3v4"``) is checked for access key, session
    token and expiry only.
    """

    version: int
    access_key: str
    session_token: str | None
    signature: str
    presigned: bool
    expires_at: float | None = None
    date: str = ""
    region: str = ""
    service: str = ""
    signed_headers: tuple[str, ...] = ()
    amz_date: str = ""

    @classmethod
    def from_request(cls, req: S3Request) -> Signature | None:
        """Parse the header or presigned-URL signature; None for an unsigned request."""
        first = {k: v[0] for k, v in req.query.items()}
        auth = req.headers.get("Authorization")
        if auth:
            algorithm, _, rest = auth.partition(" ")
            token = req.headers.get("X-Amz-Security-Token")
            if algorithm == "AWS":
                access_key, _, signature = rest.partition(":")
                return cls(2, access_key.strip(), token, signature, presigned=False)
            if algorithm != "AWS4-HMAC-SHA256":
                raise S3Error(400, "InvalidArgument", "Unsupported Authorization Type")
            items = {}
            for part in rest.split(","):
                name, _, value = part.strip().partition("=")
                items[name] = value
            return cls._v4(
                items.get("Credential", ""),
                items.get("SignedHeaders", ""),
                items.get("Signature", ""),
                req.headers.get("X-Amz-Date", ""),
                token,
                None,
            )
        if "X-Amz-Credential" in first:
            try:
                expires_s = int(first.get("X-Amz-Expires", "0"))
                signed_at = dt.datetime.strptime(
                    first.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ"
                ).replace(tzinfo=dt.UTC)
            except ValueError as exc:
                raise S3Error(
                    400,
                    "AuthorizationQueryParametersError",
                    "X-Amz-Date and X-Amz-Expires must be valid.",
                ) from exc
            return cls._v4(
                first["X-Amz-Credential"],
                first.get("X-Amz-SignedHeaders", ""),
                first.get("X-Amz-Signature", ""),
                first.get("X-Amz-Date", ""),
                first.get("X-Amz-Security-Token"),
                signed_at.timestamp() + expires_s,
            )
        if "AWSAccessKeyId" in first:
            try:
                expires_at = float(first.get("Expires", "0"))
            except ValueError:
                expires_at = 0.0
            return cls(
                2,
                first["AWSAccessKeyId"],
                first.get("x-amz-security-token"),
                first.get("Signature", ""),
                presigned=True,
                expires_at=expires_at,
            )
        return None

    @classmethod
    def _v4(
        cls,
        credential: str,
        signed: str,
        signature: str,
        amz_date: str,
        token: str | None,
        expires_at: float | None,
    ) -> Signature:
        scope = credential.split("/")
        if len(scope) != 5 or scope[4] != "aws4_request" or not signature:
            raise S3Error(400, "AuthorizationHeaderMalformed", "Malformed credential scope.")
        return cls(
            4,
            scope[0],
            token,
            signature,
            presigned=expires_at is not None,
            expires_at=expires_at,
            date=scope[1],
            region=scope[2],
            service=scope[3],
            signed_headers=tuple(signed.split(";")) if signed else (),
            amz_date=amz_date,
        )

    def expected_signature(self, req: S3Request, secret_key: str) -> str:
        """The SigV4 signature of this request with ``secret_key``."""
        # Decode then re-encode each pair, as SigV4 specifies; '+' is a literal here.
        pairs = []
        for pair in req.raw_query.split("&") if req.raw_query else []:
            raw_name, _, raw_value = pair.partition("=")
            name = urllib.parse.unquote(raw_name)
            if self.presigned and name == "X-Amz-Signature":
                continue
            pairs.append((_quote(name), _quote(urllib.parse.unquote(raw_value))))
        canonical_query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
        header_lines = []
        for name in self.signed_headers:
            values = req.headers.get_all(name) or []
            header_lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
        if self.presigned:
            payload_hash = "UNSIGNED-PAYLOAD"
        else:
            payload_hash = req.headers.get("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")
        canonical = "\n".join(
            [
                req.method,
                req.raw_path,
                canonical_query,
                "".join(header_lines),
                ";".join(self.signed_headers),
                payload_hash,
            ]
        )
        scope = f"{self.date}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                self.amz_date,
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        key = _hmac(("AWS4" + secret_key).encode(), self.date)
        for part in (self.region, self.service, "aws4_request"):
            key = _hmac(key, part)
        return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def authorize(
    req: S3Request,
    store: CredentialStore,
    *,
    verify_signatures: bool = True,
    clock: Callable[[], float] = time.time,
) -> None:
    """Raise the :class:`S3Error` that S3 would answer, or return if the request may go."""
    sig = Signature.from_request(req)
    if sig is None:
        raise S3Error(403, "AccessDenied", "Access Denied")
    cred = store.get(sig.access_key)
    # A temporary access key without its session token is unknown to S3 as well.
    if cred is None or sig.session_token is None:
        raise S3Error(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            AWSAccessKeyId=sig.access_key,
        )
    if not hmac.compare_digest(sig.session_token, cred.session_token):
        raise S3Error(400, "InvalidToken", "The provided token is malformed or otherwise invalid.")
    if store.is_expired(cred):
        raise S3Error(400, "ExpiredToken", "The provided token has expired.")
    if verify_signatures and sig.version == 4:
        expected = sig.expected_signature(req, cred.secret_key)
        if not hmac.compare_digest(expected, sig.signature):
            raise S3Error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.",
                AWSAccessKeyId=sig.access_key,
            )
    if sig.expires_at is not None and clock() > sig.expires_at:
        raise S3Error(403, "AccessDenied", "Request has expired")
    _check_scope(req, cred)


def _check_scope(req: S3Request, cred: S3Credential) -> None:
    denied = S3Error(403, "AccessDenied", "Access Denied")
    if req.bucket != cred.bucket:
        raise denied
    if not cred.prefix:
        return
    scope = cred.prefix.rstrip("/") + "/"
    if req.key:
        if not req.key.startswith(scope):
            raise denied
        return
    # Bucket level: only a listing restricted to the prefix is allowed, as an STS
    # session policy with an s3:prefix condition would.
    listed = req.query.get("prefix", [""])[0]
    if req.method != "GET" or not (listed + "/").startswith(scope):
        raise denied
    if not set(req.query) <= _LISTING_PARAMS:
        raise denied


# --------------------------------------------------------------------------- servers


class TrackingHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that can close its open keep-alive connections on stop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__(address, handler)

    def track(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.discard(conn)

    def close_connections(self, wait_s: float = 2.0) -> None:
        """Wake every handler blocked on a connection, and wait for them to let go."""
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with self._conn_lock:
                if not self._connections:
                    return
            time.sleep(0.01)


class TrackedHandler(BaseHTTPRequestHandler):
    """Request handler base: HTTP/1.1 keep-alive, quiet logs, tracked connections."""

    protocol_version = "HTTP/1.1"
    server: TrackingHTTPServer
    # Without a timeout a client that goes silent would hold a thread forever.
    timeout = 120

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def abort_connection(self, *, rst: bool = False) -> None:
        """Close this connection without a reply (RST when ``rst``)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            if rst:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            else:
                self.connection.shutdown(socket.SHUT_RDWR)

    def stall(self, delay_s: float) -> bool:
        """Wait ``delay_s`` unless the server stops first; True if it stopped."""
        return self.server.stopping.wait(delay_s)


class ServerThread:
    """Runs a :class:`TrackingHTTPServer` on a daemon thread."""

    def __init__(self, server: TrackingHTTPServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        # A short poll interval makes stop() prompt.
        self.server.serve_forever(poll_interval=0.05)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.stopping.set()
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join()
        self.server.close_connections()
        self.server.server_close()


# --------------------------------------------------------------------------- body framing


class BodyReader:
    """Reads a request body framed by Content-Length or chunked encoding, raw bytes out.

    The raw framing is what goes upstream, so moto sees exactly what the client sent.
    """

    def __init__(self, rfile: Any, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._left = length or 0
        self._chunked = chunked
        self._chunk_left = 0
        self._done = not chunked and not length
        self._trailers = False
        self.consumed = 0

    @property
    def done(self) -> bool:
        return self._done

    def read(self, limit: int = CHUNK) -> bytes:
        """The next raw bytes of the body (b"" at its end); raises EOFError if cut off."""
        if self._done:
            return b""
        data = self._read_chunked(limit) if self._chunked else self._read_plain(limit)
        self.consumed += len(data)
        return data

    def _read_plain(self, limit: int) -> bytes:
        data = self._rfile.read(min(limit, self._left))
        if not data:
            raise EOFError("client closed the connection mid-body")
        self._left -= len(data)
        if self._left == 0:
            self._done = True
        return bytes(data)

    def _readline(self) -> bytes:
        line = bytes(self._rfile.readline(65537))
        if not line.endswith(b"\n"):
            raise EOFError("client closed the connection mid-body")
        return line

    def _read_chunked(self, limit: int) -> bytes:
        if self._trailers:
            line = self._readline()
            if line in {b"\r\n", b"\n"}:
                self._done = True
            return line
        if self._chunk_left == 0:
            line = self._readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise EOFError("malformed chunk size") from exc
            if size == 0:
                self._trailers = True
                return line
            self._chunk_left = size + 2  # the data and its CRLF
            return line
        data = self._rfile.read(min(limit, self._chunk_left))
        if not data:
            raise EOFError("client closed the connection mid-body")
        self._chunk_left -= len(data)
        return bytes(data)

    def drain(self) -> None:
        while not self._done:
            self.read()


# --------------------------------------------------------------------------- the proxy


class _ProxyHandler(TrackedHandler):
    server: _ProxyServer

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_GET  # noqa: N815
    do_POST = do_GET  # noqa: N815
    do_DELETE = do_GET  # noqa: N815
    do_HEAD = do_GET  # noqa: N815

    # BaseHTTPRequestHandler answers "100 Continue" as soon as it parses the headers;
    # the proxy decides itself, after checking credentials and faults.
    def handle_expect_100(self) -> bool:
        return True

    def _handle(self) -> None:
        proxy = self.server.proxy
        request_id = secrets.token_hex(8).upper()
        self._expecting = self.headers.get("Expect", "").lower() == "100-continue"
        self._continued = False
        te = self.headers.get("Transfer-Encoding", "").lower()
        chunked = "chunked" in te
        try:
            length = None if chunked else int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = BodyReader(self.rfile, length, chunked)
        req = S3Request.parse(self.command, self.path, self.headers)
        proxy.count(req.route)
        proxy.enter(req.route)
        try:
            self._serve(req, body, request_id, length=length, chunked=chunked)
        finally:
            proxy.leave(req.route)

    def _serve(
        self,
        req: S3Request,
        body: BodyReader,
        request_id: str,
        *,
        length: int | None,
        chunked: bool,
    ) -> None:
        proxy = self.server.proxy
        try:
            if chunked and "x-amz-decoded-content-length" not in self.headers:
                raise S3Error(
                    411, "MissingContentLength", "You must provide the Content-Length HTTP header."
                )
            checksum = expected_sha256(req)
            if proxy.credentials is not None:
                authorize(
                    req,
                    proxy.credentials,
                    verify_signatures=proxy.verify_signatures,
                    clock=proxy.clock,
                )
        except S3Error as err:
            self._reply_error(err, body, request_id)
            return

        def applies(kind: str) -> bool:
            if kind == "corrupt_body":
                return (
                    req.route in _CHECKED_ROUTES and not body.done and is_plain_body(self.headers)
                )
            return kind != "reset_mid_body" or not body.done

        fault = proxy.faults.take(req.route, applies)
        kind = fault.kind if fault else None
        if fault is not None and kind == "stall" and self.stall(fault.delay_s):
            self.abort_connection()
            return
        if kind in {"status500", "status503"}:
            fault_error = (
                S3Error(503, "SlowDown", "Please reduce your request rate.")
                if kind == "status503"
                else S3Error(
                    500, "InternalError", "We encountered an internal error. Please try again."
                )
            )
            self._reply_error(fault_error, body, request_id)
            return
        if kind == "reset":
            self.abort_connection(rst=True)
            return
        if kind == "reset_mid_body":
            self._continue()
            with contextlib.suppress(EOFError, OSError):
                target = max(1, (length or CHUNK) // 2)
                while body.consumed < target and not body.done:
                    body.read(target - body.consumed)
            self.abort_connection(rst=True)
            return
        self._forward(
            body,
            request_id,
            checksum=checksum,
            corrupt_at=(length or 0) // 2 if kind == "corrupt_body" else None,
            drop_response=kind == "drop_response",
        )

    def _continue(self) -> None:
        if self._expecting and not self._continued:
            self._continued = True
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()

    def _reply_error(self, err: S3Error, body: BodyReader, request_id: str) -> None:
        linger = False
        if not body.done:
            if self._expecting and not self._continued:
                # The client holds the body back until it sees 100 or a final status;
                # answer now and close, reading whatever it sent anyway.
                linger = True
            else:
                try:
                    body.drain()
                except (EOFError, OSError):
                    self.abort_connection()
                    return
        payload = err.xml(request_id)
        self.send_response_only(err.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", str(len(payload)))
        if linger:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()
        if linger:
            self._lingering_close()

    def _lingering_close(self) -> None:
        # Closing with unread data makes the kernel send RST, which can destroy the
        # reply before the client reads it; read until the client closes instead.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2.0)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.connection.recv(CHUNK):
                pass

    def _forward(
        self,
        body: BodyReader,
        request_id: str,
        *,
        checksum: bytes | None,
        corrupt_at: int | None,
        drop_response: bool,
    ) -> None:
        proxy = self.server.proxy
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
        digest = hashlib.sha256() if checksum is not None else None
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            if not body.done and body_is_chunked(self.headers):
                upstream.putheader("Transfer-Encoding", "chunked")
            # One upstream connection per request: nothing to go stale between requests.
            upstream.putheader("Connection", "close")
            upstream.endheaders()
            if not body.done:
                self._continue()
            last = self._send_all_but_last(upstream, body, digest, corrupt_at)
            if digest is not None and digest.digest() != checksum:
                # moto never gets the whole body: the request dies unstored when it closes.
                upstream.close()
                self._reply_error(
                    S3Error(
                        400,
                        proxy.digest_code,
                        "The SHA256 you specified did not match the calculated checksum.",
                    ),
                    body,
                    request_id,
                )
                return
            upstream.send(last)
            proxy.add_bytes_in(len(last))
            resp = upstream.getresponse()
            if drop_response:
                resp.read()
                self.abort_connection(rst=True)
                return
            received = None if digest is None else base64.b64encode(digest.digest()).decode()
            self._relay_response(resp, checksum=received)
        except (EOFError, OSError, http.client.HTTPException) as exc:
            log.debug("proxying %s %s failed: %s", self.command, self.path, exc)
            self.abort_connection()
        finally:
            upstream.close()

    def _send_all_but_last(
        self,
        upstream: http.client.HTTPConnection,
        body: BodyReader,
        digest: hashlib._Hash | None,
        corrupt_at: int | None,
    ) -> bytes:
        """Forward the body, hashing it into ``digest``, except its last piece: returned."""
        held = b""
        while not body.done:
            offset = body.consumed
            data = body.read()
            if corrupt_at is not None and offset <= corrupt_at < offset + len(data):
                i = corrupt_at - offset
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            if digest is not None:
                digest.update(data)
            if held:
                upstream.send(held)
                self.server.proxy.add_bytes_in(len(held))
            held = data
        return held

    def _relay_response(self, resp: http.client.HTTPResponse, *, checksum: str | None) -> None:
        proxy = self.server.proxy
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if checksum is not None and resp.status < 300 and not resp.getheader(_CHECKSUM_HEADER):
            self.send_header(_CHECKSUM_HEADER, checksum)  # S3 names what it received
        no_body = self.command == "HEAD" or resp.status in {204, 304}
        length = resp.getheader("Content-Length")
        rechunk = not no_body and length is None
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            self.wfile.flush()
            return
        while data := resp.read(CHUNK):
            proxy.add_bytes_out(len(data))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if rechunk else data)
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def body_is_chunked(headers: Message[str, str]) -> bool:
    return "chunked" in headers.get("Transfer-Encoding", "").lower()


class _ProxyServer(TrackingHTTPServer):
    proxy: S3FaultProxy


class S3FaultProxy:
    """HTTP proxy in front of an S3 endpoint: checks credentials, injects faults.

    ``credentials=None`` skips every credential check (a plain fault proxy in front of
    moto, for a target that talks to any S3-compatible store). Usable as a context
    manager; ``url`` is the endpoint clients use.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        credentials: CredentialStore | None = None,
        faults: FaultPlan | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        verify_signatures: bool = True,
        clock: Callable[[], float] = time.time,
        digest_code: str = "BadDigest",
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        if parsed.scheme != "http" or parsed.hostname is None:
            raise ValueError(f"upstream must be an http:// URL, got {upstream_url!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.credentials = credentials
        self.faults = faults if faults is not None else s3_fault_plan()
        self.verify_signatures = verify_signatures
        self.clock = clock
        self.digest_code = digest_code
        self.requests: Counter[str] = Counter()
        # The most requests of each route served at the same time.
        self.most_at_once: Counter[str] = Counter()
        self._at_once: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self._lock = threading.Lock()
        server = _ProxyServer((host, port), _ProxyHandler)
        server.proxy = self
        self._thread = ServerThread(server, "s3-fault-proxy")
        self.url = self._thread.url

    def count(self, route: str) -> None:
        with self._lock:
            self.requests[route] += 1

    def enter(self, route: str) -> None:
        """A request of ``route`` is being served: counted in ``most_at_once``."""
        with self._lock:
            self._at_once[route] += 1
            self.most_at_once[route] = max(self.most_at_once[route], self._at_once[route])

    def leave(self, route: str) -> None:
        """A request of ``route`` was answered (or its connection dropped)."""
        with self._lock:
            self._at_once[route] -= 1

    def add_bytes_in(self, n: int) -> None:
        with self._lock:
            self.bytes_in += n

    def add_bytes_out(self, n: int) -> None:
        with self._lock:
            self.bytes_out += n

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
