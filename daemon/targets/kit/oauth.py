"""OAuth2 client credentials: one access token shared by every worker, renewed before expiry.

A refused client (wrong id or secret, revoked access) is not a reason to fail files: it is
"sign-in needed", a pause that lasts until the operator fixes the secret and reloads. The
refusal is remembered for a while so that the workers do not hammer the token endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from daemon.errors import TargetPausedError, TransientTargetError
from daemon.targets.kit.http import json_body, status_error, transport_error

# Renew this long before the token expires, so no request carries a token about to lapse.
RENEW_MARGIN_S = 120.0
# After a refusal, ask again at most this often (a reload asks at once: new target objects).
REFUSED_RETRY_S = 300.0


class TokenSource:
    """Fetches and caches the bearer token of one API client."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        client_id: str,
        client_secret: str,
        *,
        path: str = "/oauth2/token/",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._client_id = client_id
        self._secret = client_secret
        self._path = path
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._refused: tuple[float, str] | None = None
        self.fetches = 0

    async def token(self) -> str:
        """A valid access token; one request renews it for every waiting worker."""
        async with self._lock:
            now = self._clock()
            if self._token is not None and now < self._renew_at:
                return self._token
            if self._refused is not None and now < self._refused[0] + REFUSED_RETRY_S:
                raise TargetPausedError(self._refused[1])
            return await self._fetch(now)

    def invalidate(self, token: str) -> None:
        """The API refused ``token`` before its time: the next call fetches a new one."""
        if self._token == token:
            self._token = None

    async def _fetch(self, now: float) -> str:
        route = f"POST {self._path}"
        try:
            response = await self._client.post(
                self._path,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._secret,
                    "token_format": "jwt",
                },
            )
        except httpx.TransportError as exc:
            raise transport_error(route, exc) from exc
        self.fetches += 1
        if response.status_code in (400, 401, 403):
            message = (
                "sign-in needed: the API refused the client credentials"
                f" (HTTP {response.status_code}); check client_id and the secret, then"
                " `systemctl reload dronesync`"
            )
            self._refused = (now, message)
            raise TargetPausedError(message)
        if response.status_code >= 300:
            raise status_error(route, response)
        body = json_body(route, response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientTargetError(f"{route}: no access_token in the reply")
        lifetime = body.get("expires_in", 3600)
        lifetime = float(lifetime) if isinstance(lifetime, int | float) else 3600.0
        self._token = token
        self._renew_at = now + lifetime - min(RENEW_MARGIN_S, lifetime / 4)
        self._refused = None
        return token
