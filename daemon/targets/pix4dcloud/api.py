"""The PIX4Dcloud API: calls with one bearer token shared by every worker, errors translated.

The token comes from OAuth2 client credentials (``kit.oauth``). A token refused before its time
is renewed once; a fresh one refused too means the API client lost its access: a pause until
the operator acts, not a failure of the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from daemon.errors import TargetPausedError
from daemon.targets.kit.http import json_body, status_error, transport_error
from daemon.targets.kit.oauth import TokenSource
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig

PROJECTS = "/project/api/v3/projects/"


def project_path(project: int | str) -> str:
    """The route of one project, without its trailing slash (``…/projects/12``)."""
    return f"{PROJECTS}{project}"


class Pix4DApi:
    """The API client of one target: its HTTP connections and its token."""

    def __init__(
        self,
        config: Pix4DCloudTargetConfig,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = config.url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=config.url, timeout=httpx.Timeout(config.timeout_s), follow_redirects=False
        )
        self._tokens = TokenSource(self._http, config.client_id, client_secret, clock=clock)

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call with the shared token; a token refused early is renewed once."""
        route = f"{method} {path}"
        for attempt in (1, 2):
            token = await self._tokens.token()
            try:
                response = await self._http.request(
                    method, path, headers={"authorization": f"Bearer {token}"}, **kwargs
                )
            except httpx.TransportError as exc:
                raise transport_error(route, exc) from exc
            if response.status_code == 401 and attempt == 1:
                self._tokens.invalidate(token)
                continue
            if response.status_code == 401:
                raise TargetPausedError(
                    "sign-in needed: PIX4Dcloud refuses fresh tokens of this API client;"
                    " check its access, then `systemctl reload dronesync`"
                )
            if response.status_code >= 300:
                raise status_error(route, response, _error_text(response))
            return json_body(route, response) if response.content else {}
        raise AssertionError("unreachable")  # pragma: no cover

    def route_of(self, url: Any) -> str | None:
        """The route of a URL the API sent (a next page), when it is on this server.

        The token never goes anywhere else.
        """
        if isinstance(url, str) and url.startswith(self._base + "/"):
            return url.removeprefix(self._base)
        if isinstance(url, str) and url.startswith("/"):
            return url
        return None

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()


def _error_text(response: httpx.Response) -> str:
    """A short message from an API error body (JSON ``detail``/``error``/``message``)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for name in ("detail", "error", "message", "non_field_errors"):
            if name in body:
                return str(body[name])[:200]
        return str(body)[:200]
    return str(body)[:200]
