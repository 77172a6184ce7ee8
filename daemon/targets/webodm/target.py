"""The WebODM target: each dataset one task in a WebODM project, each image in it once.

WebODM stores an uploaded image under its file name only once the whole request arrived, so
a cut request leaves nothing, and a name sent again replaces the earlier file (current
versions) or is kept beside it under another name (older ones). The journal keeps the books
either way (``TargetState`` memos): the task, and each file as ``sending`` before its request
and ``sent`` after a clear reply. A file still ``sending`` (a lost reply, a stop, a crash) is
looked for in the task before it is sent again, so it is never there twice.

Two files of one name in a dataset (``100MEDIA/DJI_0001.JPG`` and ``101MEDIA/DJI_0001.JPG``)
would land on one name: the second one gets a short hash of its path in its name, only where
names collide (:mod:`daemon.targets.nodeodm.names`' rules, kept under WebODM's own memos).

``commit`` starts processing; its status, progress and ``last_error`` are polled. Processing
again (``dronesync process``) after a failure makes a new task and sends the images to it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import structlog

from daemon.errors import PermanentTargetError, TransientTargetError
from daemon.hashing import CHUNK
from daemon.targets.base import (
    DatasetRef,
    ProcessingStatus,
    Staging,
    TargetState,
    Transfer,
    UploadItem,
)
from daemon.targets.kit.http import status_error, transport_error
from daemon.targets.nodeodm.names import hashed_name, plain_name
from daemon.targets.webodm import WebODMTargetConfig
from daemon.targets.webodm.api import NotFoundError, WebODMAPI
from daemon.targets.webodm.send import send_image, stored_size, task_path
from daemon.targets.webodm.tasks import Tasks, file_memo

log = structlog.get_logger("dronesync.webodm")

# nodeodm/status_codes.py (pyodm's TaskStatus): WebODM's task status codes.
QUEUED, RUNNING, FAILED, COMPLETED, CANCELED = 10, 20, 30, 40, 50
_NAME = "webodm.name:"  # memo per plain name: the key (hex) of the file that has it


class WebODMTarget:
    """Uploads each dataset into its own WebODM task and follows its processing."""

    def __init__(
        self, name: str, config: WebODMTargetConfig, state: TargetState, *, password: str
    ) -> None:
        self.name = name
        self.config = config
        self.poll_interval_s = config.poll_s
        self.staging: Staging | None = None  # uploads read the source (or the spool)
        self._state = state
        self.api = WebODMAPI(config.url, config.username, password, config.timeout_s)
        self._tasks = Tasks(name, config, state, self.api)

    def current_task(self, dataset: DatasetRef) -> str | None:
        """``<project>/<task id>`` of the dataset's task (None before it was made)."""
        return self._tasks.current(dataset)

    def name_of(self, dataset: DatasetRef, key: bytes) -> str:
        """The name the file has (or will have) in the task."""
        plain = plain_name(key)
        if plain is not None:
            owner = self._state.get_memo(dataset.id, f"{_NAME}{plain}")
            if owner is None or owner == key.hex():
                return plain
        return hashed_name(key)

    def _claim(self, dataset: DatasetRef, key: bytes) -> str:
        """The file's own name unless another file of the dataset has it (then hashed)."""
        plain = plain_name(key)
        if plain is None:
            return hashed_name(key)
        memo = f"{_NAME}{plain}"
        owner = self._state.get_memo(dataset.id, memo)
        if owner is None:
            self._state.put_memo(dataset.id, memo, key.hex())
            return plain
        return plain if owner == key.hex() else hashed_name(key)

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Find (or make) the project; the task is made with the first upload."""
        await self._tasks.project()

    async def make_durable(self) -> None:
        """Nothing to do: WebODM stored each file before answering."""

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Send one image into the dataset's task; its key is the dataset key."""
        # Claimed before anything is awaited: two files of one name never both take it.
        name = self._claim(dataset, item.key)
        memo = file_memo(name)
        task = await self._tasks.ready(dataset)
        previous = self._state.get_memo(dataset.id, memo)
        if previous == f"{task} sent":
            return item.key
        if previous == f"{task} sending":
            # An earlier request's end was not seen: it may have stored the file whole.
            size = await asyncio.to_thread(stored_size, self.api, task, name)
            if size == item.size:
                log.info("found in the task after a lost reply", dataset=dataset.name, name=name)
                self._state.put_memo(dataset.id, memo, f"{task} sent")
                return item.key
        self._state.put_memo(dataset.id, memo, f"{task} sending")
        try:
            await asyncio.to_thread(send_image, self.api, task, name, item, transfer)
        except NotFoundError as exc:
            self._tasks.lost(dataset, task)
            raise TransientTargetError(f"{exc}; a new task is made") from exc
        if task != self.current_task(dataset):
            raise TransientTargetError("the task was replaced meanwhile; this file is sent again")
        self._state.put_memo(dataset.id, memo, f"{task} sent")
        return item.key

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Commit the task: WebODM queues its processing. Returns ``<project>/<task id>``."""
        await self._preflight(dataset)
        names = [self.name_of(dataset, key) for key in keys]
        task = await self._tasks.commit(dataset, names)
        log.info("task committed", dataset=dataset.name, task=task, images=len(keys))
        return task

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """The task's status, progress and ``last_error``, as WebODM reports them."""
        path = task_path(handle)
        try:
            info = await asyncio.to_thread(self.api.call, "GET", path)
        except NotFoundError:
            return ProcessingStatus("failed", f"task {handle} is no longer in WebODM")
        info = info if isinstance(info, dict) else {}
        code = info.get("status")
        progress = info.get("running_progress")
        pct = 100.0 * progress if isinstance(progress, int | float) else None
        error = info.get("last_error")
        if code == COMPLETED:
            return await self._completed(dataset, handle)
        if code == FAILED:
            return ProcessingStatus("failed", f"WebODM failed the task: {error or 'no reason'}")
        if code == CANCELED:
            return ProcessingStatus("failed", "the task was cancelled in WebODM")
        if error:
            # WebODM keeps the task and says why it waits (no node online, say).
            return ProcessingStatus("running", f"WebODM says: {error}", pct)
        if code is None or code == QUEUED:
            return ProcessingStatus("running", "queued in WebODM", pct)
        detail = "running in WebODM" + (f", {pct:.0f} %" if pct is not None else "")
        return ProcessingStatus("running", detail, pct)

    async def _completed(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        folder = self.config.download_dir
        if folder is None:
            return ProcessingStatus("done", f"task {handle} completed in WebODM", 100.0)
        dest = folder / f"{dataset.name}.zip"
        await asyncio.to_thread(self._download, handle, dest)
        return ProcessingStatus("done", f"task {handle} completed; outputs in {dest}", 100.0)

    def _download(self, handle: str, dest: Path) -> None:
        """``GET .../download/all.zip`` (``TaskDownloads``) into ``dest``, whole or not at all."""
        path = f"{task_path(handle)}download/all.zip"
        route = f"GET {path}"
        part = dest.with_name(dest.name + ".part")
        headers = {"authorization": f"JWT {self.api.token()}"}
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.api.client.stream("GET", path, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise status_error(route, response)
                with part.open("wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            part.replace(dest)
        except httpx.TransportError as exc:
            raise transport_error(route, exc) from exc
        except OSError as exc:
            raise TransientTargetError(f"{dest}: cannot save outputs ({exc.strerror})") from exc

    async def _preflight(self, dataset: DatasetRef) -> None:
        """The configured node (``GET /api/processingnodes/{id}/``) is online and takes them all.

        ``online`` and ``max_images`` are the node's fields in ``app/api/processingnodes.py``.
        """
        node = self.config.processing_node
        if node is None:
            return
        try:
            info = await asyncio.to_thread(self.api.call, "GET", f"/api/processingnodes/{node}/")
        except NotFoundError as exc:
            raise PermanentTargetError(
                f"WebODM has no processing node {node}: check [targets.{self.name}] processing_node"
            ) from exc
        info = info if isinstance(info, dict) else {}
        if info.get("online") is False:
            raise TransientTargetError(f"WebODM says processing node {node} is offline")
        limit = info.get("max_images")
        count = self._state.file_count(dataset.id)
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < count:
            raise PermanentTargetError(
                f"{count} files in the dataset, but processing node {node} takes at most"
                f" {limit}: split the folder into datasets of at most {limit} images"
            )

    async def aclose(self) -> None:
        """Close connections."""
        self.api.close()
