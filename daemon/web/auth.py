"""Who may see the status page and act on it, and which requests a browser may have forged.

- With no password (the page listens on loopback only), anyone on this machine may use it. A
  browser is still a way in from any web site: the ``Host`` must then name this machine, so a
  site whose name was pointed at 127.0.0.1 (DNS rebinding) reads nothing.
- With a password, a request shows it as ``Authorization: Bearer PASSWORD`` (scripts,
  Prometheus), or carries the session cookie that the login form sets: ``expiry.nonce.mac``,
  an HMAC under a key made of a per-process secret and the password (a restart or a new
  password asks again), HttpOnly and SameSite=Strict.
- Every action is a POST. One whose ``Origin`` (or, without it, ``Referer``) is another
  origin is refused; a form body, or a cookie session, must also carry the CSRF token that
  the page's own forms hold.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from daemon.config import WebSettings
from daemon.secrets import read_secret, secret_path
from daemon.web.http import Request

COOKIE = "dronesync_session"
SESSION_S = 7 * 86_400.0
# Wrong passwords, for the whole server: beyond this many in a minute, logins wait.
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 60.0
LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

_PROCESS_KEY = secrets.token_bytes(32)  # sessions outlive a reload, not the process


def _host_name(host_header: str) -> str:
    """The host of a ``Host`` header value, without its port or IPv6 brackets."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def is_loopback_host(host_header: str) -> bool:
    """Whether a ``Host`` header names this machine."""
    name = _host_name(host_header).lower()
    if name in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """The page's password, sessions and CSRF tokens, and the checks every request passes."""

    def __init__(self, password: str | None, *, loopback: bool) -> None:
        self.password = password
        self._loopback = loopback
        seed = (password or "").encode()
        self._key = hmac.new(_PROCESS_KEY, b"session:" + seed, hashlib.sha256).digest()
        self._failures: deque[float] = deque()

    @classmethod
    def from_settings(cls, web: WebSettings) -> Guard:
        """The guard the configuration asks for (reads the password's secret)."""
        path: Path | None = secret_path(web.password_file, web.password_credential)
        password = read_secret(path) if path is not None else None
        return cls(password, loopback=web.on_loopback)

    # -- checks ----------------------------------------------------------------------------

    def host_ok(self, request: Request) -> bool:
        """False for a page reached through a foreign name while no password guards it."""
        if self.password is not None or not self._loopback:
            return True
        return is_loopback_host(request.headers.get("host", ""))

    def session(self, request: Request) -> str | None:
        """How the request is let in ("open", "bearer", "cookie"), or None: ask to log in."""
        if self.password is None:
            return "open"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.password.encode()
        ):
            return "bearer"
        if self._nonce(request) is not None:
            return "cookie"
        return None

    def origin_ok(self, request: Request) -> bool:
        """The POST comes from this server's own pages, or from no browser page at all."""
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if origin is not None:
            return origin != "null" and urlsplit(origin).netloc == host
        referer = request.headers.get("referer")
        if referer is not None:
            return urlsplit(referer).netloc == host
        return True  # curl, scripts: no browser forges these

    def csrf_ok(self, request: Request, form: dict[str, str]) -> bool:
        """A form or a cookie session shows the page's CSRF token; other callers need none."""
        how = self.session(request)
        if how == "bearer" or (how == "open" and not request.is_form):
            return True
        given = form.get("csrf") or request.headers.get("x-csrf-token", "")
        return hmac.compare_digest(given.encode(), self.csrf_token(request).encode())

    # -- tokens ----------------------------------------------------------------------------

    def csrf_token(self, request: Request) -> str:
        """The token this request's forms carry: tied to its session (or to the server)."""
        nonce = self._nonce(request) or "open"
        return hmac.new(self._key, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]

    def login(self, password: str, now: float | None = None) -> str | None:
        """A new session cookie's value for the right password; None for a wrong one."""
        now = time.time() if now is None else now
        if self.password is None or not hmac.compare_digest(
            password.encode(), self.password.encode()
        ):
            self._failures.append(time.monotonic())
            return None
        value = f"{int(now + SESSION_S)}.{secrets.token_hex(16)}"
        return f"{value}.{self._mac(value)}"

    def throttled(self) -> bool:
        """Too many wrong passwords in the last minute: logins wait."""
        horizon = time.monotonic() - LOGIN_WINDOW_S
        while self._failures and self._failures[0] < horizon:
            self._failures.popleft()
        return len(self._failures) >= LOGIN_FAILURES

    @staticmethod
    def cookie_header(value: str) -> tuple[str, str]:
        """The Set-Cookie header of a session (an empty value ends it)."""
        age = int(SESSION_S) if value else 0
        return (
            "Set-Cookie",
            f"{COOKIE}={value}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict",
        )

    def _mac(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()

    def _nonce(self, request: Request, now: float | None = None) -> str | None:
        """The nonce of a valid, unexpired session cookie."""
        cookie = request.cookies().get(COOKIE, "")
        expiry, _, rest = cookie.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (expiry.isdigit() and nonce and mac):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(f"{expiry}.{nonce}").encode()):
            return None
        if int(expiry) < (time.time() if now is None else now):
            return None
        return nonce
