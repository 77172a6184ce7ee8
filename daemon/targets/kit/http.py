"""What every HTTP target shares: one error vocabulary for replies and broken connections.

Messages name the route (``POST /task/new/init``), never the full URL: a NodeODM token travels
in the query string, and an error message ends up in logs and in ``dronesync status``.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx

from daemon.errors import PermanentTargetError, TargetError, TransientTargetError

# Statuses that say "try again later"; any other 4xx is the request's fault.
_TRANSIENT_STATUSES = {408, 409, 423, 425, 429}


def retry_after(response: httpx.Response) -> float | None:
    """The server's requested wait in seconds (delta or HTTP date), when it gave one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(route: str, response: httpx.Response, detail: str = "") -> TargetError:
    """The error for a non-2xx reply: transient for 5xx, 408, 429 and kin, else permanent."""
    text = f"{route}: HTTP {response.status_code}"
    if detail:
        text += f": {detail}"
    code = response.status_code
    if code >= 500 or code in _TRANSIENT_STATUSES:
        return TransientTargetError(text, retry_after=retry_after(response))
    return PermanentTargetError(text)


def transport_error(route: str, exc: httpx.TransportError) -> TransientTargetError:
    """A connection that failed, broke or timed out; always worth another attempt."""
    kind = type(exc).__name__
    reason = str(exc) or kind
    return TransientTargetError(f"{route}: {reason} ({kind})")


def never_sent(exc: BaseException) -> bool:
    """The request certainly did not reach the server (so nothing can have been stored)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def json_body(route: str, response: httpx.Response) -> Any:
    """The reply's JSON, or a transient error for a reply that is not JSON (a proxy page)."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        kind = response.headers.get("content-type", "no content type")
        raise TransientTargetError(
            f"{route}: the reply is not JSON ({kind}, {len(response.content)} bytes)"
        ) from exc
