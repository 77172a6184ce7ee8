"""One image as a one-file multipart request, streamed from disk, whole only if unchanged.

NodeODM and WebODM keep every file a request brings, so the bytes sent must be the bytes
recorded: :class:`~daemon.hashing.StableRead` hashes each chunk as it is read and raises before
handing out the last one when the content is not the recorded one. The body then ends without
its last chunk and closing boundary: the server sees a cut upload, never a whole file that is
not the recorded one. A file still sealed since it was hashed, and the spool's copy (which only
the read that hashed it wrote), are checked by size, mtime and seal alone
(:meth:`~daemon.targets.base.UploadItem.reading`).
"""

from __future__ import annotations

import contextlib
import threading
import uuid as uuidlib
from collections.abc import Generator, Mapping

import httpx

from daemon.hashing import StableRead
from daemon.targets.base import Transfer, UploadItem


def post_image(
    client: httpx.Client,
    path: str,
    name: str,
    item: UploadItem,
    transfer: Transfer,
    *,
    headers: Mapping[str, str] | None = None,
    started: threading.Event | None = None,
) -> httpx.Response:
    """POST ``item`` as the field ``images`` named ``name`` (worker thread); the reply, unread.

    ``started`` is set once a byte may be sent. Errors: :class:`~daemon.errors.FileChangedError`
    and :class:`~daemon.errors.SourceError` for the file, httpx's for the connection.
    """
    boundary = f"dronesync-{uuidlib.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="images"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sent = {
        **(headers or {}),
        "content-type": f"multipart/form-data; boundary={boundary}",
        "content-length": str(len(head) + item.size + len(tail)),
    }
    # Opened before the request: a file changed since it was hashed costs no request.
    with (
        item.reading() as read,
        # Closed here, not whenever it is collected: httpx stops reading a body when the
        # server answered early, and the file is closed right after.
        contextlib.closing(_body(read, head, tail, transfer, started)) as body,
    ):
        return client.post(path, content=body, headers=sent)


def _body(
    read: StableRead,
    head: bytes,
    tail: bytes,
    transfer: Transfer,
    started: threading.Event | None,
) -> Generator[bytes, None, None]:
    """The part's header, the file, then the closing boundary once the content matched."""
    if started is not None:
        started.set()
    yield head
    for chunk in read.chunks():
        transfer.progress(len(chunk))  # bandwidth limit, stall watch and abort, per chunk
        # A copy: the read's buffer is filled again for the next chunk, and h11 takes bytes.
        yield bytes(chunk)
    read.finish()
    yield tail
