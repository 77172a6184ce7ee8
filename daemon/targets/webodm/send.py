"""One image into a task: ``POST /api/projects/{p}/tasks/{t}/upload/``, streamed from disk.

WebODM's ``upload`` (``app/api/tasks.py``) takes every file of the multipart body
(``flatten_files``: any field name) and ``Task.handle_images_upload`` (``app/models/task.py``)
writes each under its file name in the task's folder, opened ``wb+``: a name sent again
replaces the earlier file. Django has read the whole body before the view runs, so a request
cut short stores nothing. Older versions kept each file as an ``ImageUpload`` whose storage
gives a second file of one name another name: both are kept. Either way the client never sends
a file twice into a task without first asking whether it is there (:func:`stored_size`).

As for NodeODM, :func:`~daemon.targets.kit.imagepost.post_image` holds back the last chunk,
and the closing boundary, until the content is the recorded one.
"""

from __future__ import annotations

import httpx

from daemon.errors import TransientTargetError
from daemon.targets.base import Transfer, UploadItem
from daemon.targets.kit.http import transport_error
from daemon.targets.kit.imagepost import post_image
from daemon.targets.webodm.api import WebODMAPI, check, token_refused


def task_path(task: str) -> str:
    """The task's API path from ``<project>/<task id>``."""
    project, _, task_id = task.partition("/")
    return f"/api/projects/{project}/tasks/{task_id}/"


def send_image(api: WebODMAPI, task: str, name: str, item: UploadItem, transfer: Transfer) -> None:
    """One request with the image (worker thread); again once with a new token if refused.

    Errors: :class:`~daemon.errors.FileChangedError` and :class:`~daemon.errors.SourceError`
    for the file, the target's errors for the connection and the reply.
    """
    path = f"{task_path(task)}upload/"
    route = f"POST {path}"
    for last in (False, True):
        token = api.token()
        try:
            response = post_image(
                api.client, path, name, item, transfer, headers={"authorization": f"JWT {token}"}
            )
        except httpx.TransportError as exc:
            raise transport_error(route, exc) from exc
        if not token_refused(response) or last:
            break
        # Refused before the view read the files: nothing stored, the body is sent again.
        api.invalidate(token)
    check(route, response)


def stored_size(api: WebODMAPI, task: str, name: str) -> int | None:
    """The size of the task's image ``name`` (``images/download/``), None when it has none.

    ``ImageDownload`` (``app/api/imageuploads.py``) answers the file with its
    ``Content-Length`` (``download_file_response``), or 404; only the headers are read.
    """
    path = f"{task_path(task)}images/download/{name}"
    route = f"GET {path}"
    token = api.token()
    try:
        with api.client.stream("GET", path, headers={"authorization": f"JWT {token}"}) as reply:
            if reply.status_code == 404:
                return None
            if reply.status_code != 200:
                reply.read()
                if token_refused(reply):
                    api.invalidate(token)
                    raise TransientTargetError(f"{route}: the token lapsed; asked again")
                check(route, reply)
            length = reply.headers.get("content-length")
    except httpx.TransportError as exc:
        raise transport_error(route, exc) from exc
    return int(length) if length is not None and length.isdigit() else None
