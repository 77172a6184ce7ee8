"""The node's HTTP API: one httpx client, and what a reply means.

NodeODM answers its errors as HTTP 200 with ``{"error": ...}``, so every body is read. Whether
a refused upload left part of the image on the node depends on who refused it and when:

- ``{"error"}`` for an unknown uuid, or a request without a file, comes from ``preUpload`` or
  the upload handler before the body is read (:class:`RefusedError` with ``unread``); any other
  ``{"error"}`` to an upload may come after multer wrote part of the file;
- the bare HTTP 500 of Express's ``res.sendStatus(500)`` is ``preUpload`` dropping the request
  unread (:class:`DroppedError`); a gateway's 5xx stays ambiguous;
- "Invalid authentication token" is a wrong or missing token: the target pauses.

Messages name routes, never URLs: the token travels in the query string.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from daemon.errors import TargetError, TargetPausedError, TransientTargetError
from daemon.targets.kit.http import json_body, status_error, transport_error

SIGN_IN_NEEDED = (
    "NodeODM refused the token (Invalid authentication token): put the node's token in"
    " token_file (or the credential), then reload the service"
)
# What NodeODM answers on the upload route before the body is read or stored (preUpload and
# the upload handler in libs/taskNew.js): an unknown or missing uuid, no file in the request.
_UNREAD_REFUSALS = ("invalid uuid", "not found", "need at least 1 file")
# Express's res.sendStatus(500): the one HTTP 500 the node's upload route answers by itself.
_EXPRESS_500 = b"Internal Server Error"


class RefusedError(TargetError):
    """The node answered ``{"error": ...}``: the request was refused.

    ``unread``: the node said it before its upload handler read the body, so nothing of the
    file was stored. Its error handler answers every other error the same way, some of them
    after a part of the file was written (a full disk while multer writes it, say).
    """

    def __init__(self, message: str, *, unread: bool = True) -> None:
        super().__init__(message)
        self.unread = unread


class DroppedError(TransientTargetError):
    """HTTP 500 to an upload: the node's own refusal before its upload handler ran.

    NodeODM answers its errors as 200 ``{"error"}`` (its Express error handler); the one 500 on
    this route is ``res.sendStatus(500)`` in ``preUpload`` (``libs/taskNew.js``), before multer
    reads the body, so nothing was stored. A gateway's 502/503/504 stays ambiguous.
    """


def nothing_stored(exc: BaseException) -> bool:
    """The node's reply shows that nothing of the upload was stored."""
    if isinstance(exc, RefusedError):
        return exc.unread
    return isinstance(exc, DroppedError | TargetPausedError)


def check_reply(route: str, response: httpx.Response, *, upload: bool = False) -> Any:
    """The reply's JSON object, or the error it stands for (``upload``: to an image upload)."""
    if upload and response.status_code == 500 and response.content.strip() == _EXPRESS_500:
        # A proxy's or a front end's 500 looks otherwise: it stays ambiguous (below).
        raise DroppedError(f"{route}: HTTP 500: the node dropped the upload unread")
    if response.status_code >= 400:
        raise status_error(route, response)
    body = json_body(route, response)
    if isinstance(body, dict) and "error" in body:
        if "authentication token" in str(body["error"]).lower():
            # libs/auth/TokenAuthBase.js: the same words for a missing and a wrong token.
            raise TargetPausedError(SIGN_IN_NEEDED)
        said = str(body["error"])
        unread = not upload or any(words in said.lower() for words in _UNREAD_REFUSALS)
        raise RefusedError(f"{route}: the node says: {said}", unread=unread)
    if not isinstance(body, dict):
        raise TransientTargetError(f"{route}: unexpected reply {str(body)[:80]!r}")
    return body


class NodeAPI:
    """The node at ``url``: requests in worker threads, replies checked."""

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        # The token goes in the query string (the node ignores headers); httpx adds it to
        # every request, and messages name routes, never URLs.
        self.client = httpx.Client(
            base_url=url,
            params={"token": token} if token else None,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
        )

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the reply's JSON object (see :func:`check_reply`)."""
        return await asyncio.to_thread(self._call, method, path, **kwargs)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        route = f"{method} {path}"
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error(route, exc) from exc
        return check_reply(route, response)

    async def call_list(self, path: str, params: dict[str, str]) -> list[Any]:
        """A GET whose reply is a JSON list (a task's output lines)."""

        def call() -> list[Any]:
            route = f"GET {path}"
            try:
                response = self.client.get(path, params=params)
            except httpx.TransportError as exc:
                raise transport_error(route, exc) from exc
            if response.status_code >= 400:
                raise status_error(route, response)
            body = json_body(route, response)
            if not isinstance(body, list):
                check_reply(route, response)  # an {"error"}
                raise TransientTargetError(f"{route}: unexpected reply")
            return body

        return await asyncio.to_thread(call)

    async def known(self, task: str) -> bool:
        """Whether the node knows ``task`` (it lists committed tasks only)."""
        try:
            await self.call("GET", f"/task/{task}/info")
        except TargetError:
            return False
        return True

    def close(self) -> None:
        """Close the connections."""
        self.client.close()
