"""WebODM's REST API: one httpx client, one JSON Web Token shared by every upload.

From WebODM's source (github.com/OpenDroneMap/WebODM):

- ``POST /api/token-auth/`` (``app/api/urls.py``: djangorestframework-jwt's
  ``obtain_jwt_token``) takes ``username`` and ``password`` and answers ``{"token"}``; wrong
  credentials are HTTP 400 ``{"non_field_errors": [...]}``. The token goes in
  ``Authorization: JWT <token>`` and lapses after ``JWT_EXPIRATION_DELTA``, six hours in
  ``webodm/settings.py``; its payload's ``exp`` says when.
- A lapsed or bad token is HTTP 403, not 401: ``SessionAuthentication`` comes first in
  ``DEFAULT_AUTHENTICATION_CLASSES`` and gives no ``WWW-Authenticate`` header, so Django REST
  framework turns ``AuthenticationFailed`` into 403 (``{"detail": "Signature has expired."}``).
  A 401 or 403 whose detail is about the token is answered by fetching a new one, once.
- Errors are Django REST framework's: ``{"detail": ...}`` (403, 404), a list or a dict of
  field errors (400).

The token is never logged: messages name routes, and it travels in a header.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from daemon.errors import PermanentTargetError, TargetPausedError, TransientTargetError
from daemon.targets.kit.http import json_body, status_error, transport_error

SIGN_IN_PATH = "/api/token-auth/"
# Renew this long before the token lapses (WebODM's last six hours by default).
RENEW_MARGIN_S = 300.0
# A token whose payload gives no usable ``exp`` is renewed after this long.
DEFAULT_LIFETIME_S = 3600.0
# After a refused sign-in, ask again at most this often (a reload asks at once).
REFUSED_RETRY_S = 300.0
# Words of djangorestframework-jwt's refusals (``authentication.py``): the token, not a right.
_TOKEN_WORDS = ("signature", "token", "credentials were not provided", "authentication")


class TokenRefusedError(TransientTargetError):
    """WebODM refused the token itself (expired, or signed with another key)."""


def detail(response: httpx.Response) -> str:
    """Django REST framework's error text of a reply, short (empty when there is none)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:200]
    if isinstance(body, dict | list):
        return json.dumps(body, ensure_ascii=False)[:200]
    return ""


def token_refused(response: httpx.Response) -> bool:
    """The reply refuses the token (as opposed to a right the user lacks)."""
    if response.status_code not in (401, 403):
        return False
    said = detail(response).lower()
    return any(words in said for words in _TOKEN_WORDS)


def expiry(token: str) -> float | None:
    """The ``exp`` of a JWT's payload (not verified: only to know when to renew)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = data.get("exp") if isinstance(data, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class WebODMAPI:
    """WebODM at ``url``, signed in as ``username``; requests run in worker threads."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        timeout_s: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = httpx.Client(
            base_url=url, timeout=httpx.Timeout(timeout_s), follow_redirects=False
        )
        self._username = username
        self._password = password
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._refused: tuple[float, str] | None = None
        self.sign_ins = 0

    def token(self) -> str:
        """A valid token; one sign-in renews it for every waiting thread."""
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._renew_at:
                return self._token
            if self._refused is not None and now < self._refused[0] + REFUSED_RETRY_S:
                raise TargetPausedError(self._refused[1])
            return self._sign_in(now)

    def invalidate(self, token: str) -> None:
        """WebODM refused ``token`` before its time: the next call signs in again."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _sign_in(self, now: float) -> str:
        route = f"POST {SIGN_IN_PATH}"
        try:
            response = self.client.post(
                SIGN_IN_PATH, data={"username": self._username, "password": self._password}
            )
        except httpx.TransportError as exc:
            raise transport_error(route, exc) from exc
        self.sign_ins += 1
        if response.status_code in (400, 401, 403):
            message = (
                f"sign-in needed: WebODM refused user {self._username!r} (HTTP"
                f" {response.status_code}: {detail(response) or 'no reason given'}); check"
                " username and the password, then `systemctl reload dronesync`"
            )
            self._refused = (now, message)
            raise TargetPausedError(message)
        if response.status_code >= 300:
            raise status_error(route, response)
        body = json_body(route, response)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientTargetError(f"{route}: no token in the reply")
        exp = expiry(token)
        lifetime = DEFAULT_LIFETIME_S if exp is None or exp <= now else exp - now
        self._token = token
        self._renew_at = now + lifetime - min(RENEW_MARGIN_S, lifetime / 4)
        self._refused = None
        return token

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with the token; a refused token is renewed and the request sent again.

        The reply is returned whatever its status; :func:`check` reads it.
        """
        route = f"{method} {path}"
        extra = kwargs.pop("headers", {})
        for last in (False, True):
            token = self.token()
            headers = {**extra, "authorization": f"JWT {token}"}
            try:
                response = self.client.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                raise transport_error(route, exc) from exc
            if not token_refused(response):
                return response
            self.invalidate(token)
            if last:
                break
        raise TargetPausedError(
            f"sign-in needed: WebODM refuses a token it has just given ({route}:"
            f" {detail(response)}); check the server's clock and SECRET_KEY, then reload"
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`send`, then the reply's JSON (see :func:`check`)."""
        return check(f"{method} {path}", self.send(method, path, **kwargs))

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


def check(route: str, response: httpx.Response) -> Any:
    """The reply's JSON, or the error it stands for.

    403 that is not about the token: the user lacks a right on the project, which only the
    WebODM administrator can give (the target pauses, as for a refused sign-in).
    """
    if response.status_code == 403:
        raise TargetPausedError(
            f"{route}: WebODM says: {detail(response) or 'forbidden'}; give the user the right"
            " to change the project, then reload"
        )
    if response.status_code == 404:
        raise NotFoundError(f"{route}: HTTP 404: {detail(response) or 'not found'}")
    if response.status_code >= 400:
        raise status_error(route, response, detail(response))
    return json_body(route, response)


class NotFoundError(PermanentTargetError):
    """HTTP 404: the project or the task is not (or no longer) in WebODM."""
