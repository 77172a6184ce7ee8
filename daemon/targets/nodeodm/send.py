"""One image as one multipart request to ``/task/new/upload/<uuid>``, streamed from disk.

The node keeps every file it receives, so the bytes sent must be the bytes recorded:
:class:`~daemon.hashing.StableRead` hashes each chunk as it is read and raises before handing
out the last one when the content is not the recorded one. The body then ends without its
last chunk and closing boundary: the node sees a cut upload (and the task is replaced because
of it), never a whole file that is not the recorded one.

Reading, hashing and sending share the upload's worker thread: the engine runs several uploads
at a time, each in a thread of its own, and hashlib lets go of the GIL while it hashes.
"""

from __future__ import annotations

import contextlib
import threading
import uuid as uuidlib
from collections.abc import Generator

import httpx

from daemon.hashing import StableRead
from daemon.targets.base import Transfer, UploadItem
from daemon.targets.nodeodm.api import DroppedError, check_reply

# A request the node dropped before reading it is sent again at once, this many times.
RESENDS = 5


def send_image(
    client: httpx.Client,
    task: str,
    name: str,
    item: UploadItem,
    transfer: Transfer,
    started: threading.Event,
) -> None:
    """:func:`send_once`, again at once while the node drops the request before reading it."""
    for left in range(RESENDS, -1, -1):
        try:
            send_once(client, task, name, item, transfer, started)
        except DroppedError:
            if not left or transfer.aborted:
                raise
        else:
            return


def send_once(
    client: httpx.Client,
    task: str,
    name: str,
    item: UploadItem,
    transfer: Transfer,
    started: threading.Event,
) -> None:
    """One request with the image (worker thread); ``started`` is set once a byte may be sent.

    Errors: :class:`~daemon.errors.FileChangedError` and :class:`~daemon.errors.SourceError`
    for the file, httpx's for the connection, :func:`~daemon.targets.nodeodm.api.check_reply`'s
    for the reply.
    """
    boundary = f"dronesync-{uuidlib.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="images"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = {
        "content-type": f"multipart/form-data; boundary={boundary}",
        "content-length": str(len(head) + item.size + len(tail)),
    }
    path = f"/task/new/upload/{task}"
    # Opened before the request: a file changed since it was hashed costs no request.
    with (
        StableRead(
            item.path,
            item.size,
            item.mtime_ns,
            expect=item.sha256,
            seen="hashed",
            doing="uploaded",
        ) as read,
        # Closed here, not whenever it is collected: httpx stops reading a body when the
        # server answered early, and the file is closed right after.
        contextlib.closing(_body(read, head, tail, transfer, started)) as body,
    ):
        response = client.post(path, content=body, headers=headers)
    check_reply(f"POST {path}", response, upload=True)


def _body(
    read: StableRead, head: bytes, tail: bytes, transfer: Transfer, started: threading.Event
) -> Generator[bytes, None, None]:
    """The request body: the part's header, the file, then the closing boundary.

    The boundary follows only once the read found the recorded content, unchanged.
    """
    started.set()
    yield head
    for chunk in read.chunks():
        # Bandwidth limit, stall watch and abort, per chunk.
        transfer.progress(len(chunk))
        # A copy: the read's buffer is filled again for the next chunk, and h11 takes bytes.
        yield bytes(chunk)
    read.finish()
    yield tail
