"""One image as one multipart request to ``/task/new/upload/<uuid>``, streamed from disk.

The node keeps every file it receives: :func:`~daemon.targets.kit.imagepost.post_image` sends
the bytes recorded, or a cut upload (and the task is replaced because of it).

Reading, hashing and sending share the upload's worker thread: the engine runs several uploads
at a time, each in a thread of its own, and hashlib lets go of the GIL while it hashes.
"""

from __future__ import annotations

import threading

import httpx

from daemon.targets.base import Transfer, UploadItem
from daemon.targets.kit.imagepost import post_image
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
    path = f"/task/new/upload/{task}"
    response = post_image(client, path, name, item, transfer, started=started)
    check_reply(f"POST {path}", response, upload=True)
