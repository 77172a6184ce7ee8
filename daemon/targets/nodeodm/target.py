"""The NodeODM target: one OpenDroneMap task per dataset, never a duplicate or truncated image.

NodeODM keeps every file it receives: a name sent twice is stored twice (``NAME_.JPG``), an
upload cut off mid-body leaves a truncated image, nothing lists what a task holds, and nothing
can be deleted from it. So the daemon keeps the books, in the journal (``TargetState``):

- the task uuid is chosen here and stored *before* ``/task/new/init`` (``set-uuid``), so a crash
  resumes into the same task;
- each file is recorded as ``sending`` before its request and ``sent`` after a clear reply;
- a refusal that shows nothing was stored (``{"error"}`` in a 200, or the HTTP 500 the node
  answers before its upload handler reads the body) is sent again into the same task;
- an upload that ended ambiguously (the connection broke, a gateway's 5xx, a stall, a stop, a
  crash with a file still ``sending``) *taints* the task. A tainted task is never committed:
  the next call for the dataset chooses a new task and puts every file already uploaded back
  to waiting, with "task replaced N times: reason" as its last error. Replacements back off
  (the wait doubles, kept in the journal) and after ``max_task_replacements`` the dataset's
  files fail with a message saying what to do; ``dronesync retry`` gives a fresh budget.
  Nothing reaches a committed task twice or truncated.

The node cannot remove a task that was never committed (``/task/remove`` knows committed
tasks only): an abandoned task's uploads stay on the node until its ``cleanup_uploads_after``.
Each replacement says so once, with the bytes sent into the old task.

An image keeps its file name unless another file of the dataset already has it; such a file
gets a short hash of its path in its name (recorded when sent, so the choice holds across
restarts). ODM's ancillary files (``gcp_list.txt``, ``geo.txt``, ``image_groups.txt``) go into
the task too; one that names a renamed image is reported in the dataset's detail.

A wrong token pauses the target (``TargetPausedError``): files wait with their attempts kept
until the token file is fixed and the service reloaded. A dataset with more files than the
node's ``maxImages`` fails before its first upload.

``commit`` starts processing. Files found after it go to the folder's next dataset (a new task).
A task that failed or was cancelled on the node is shown with the node's message; processing it
again (``dronesync process``) creates a new task and sends the images again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import httpx
import structlog

from daemon.errors import PermanentTargetError, TargetError, TargetPausedError, TransientTargetError
from daemon.targets.base import (
    DatasetRef,
    ProcessingStatus,
    Staging,
    TargetState,
    Transfer,
    UploadItem,
)
from daemon.targets.kit.http import transport_error
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.nodeodm.api import NodeAPI, RefusedError
from daemon.targets.nodeodm.names import Names, file_memo
from daemon.targets.nodeodm.processing import Processing
from daemon.targets.nodeodm.send import send_image
from daemon.targets.nodeodm.tasks import Tasks

log = structlog.get_logger("dronesync.nodeodm")

# How long the node's /info (maxImages) is trusted before it is read again.
_INFO_TTL_S = 30.0


class NodeODMTarget:
    """Uploads each dataset into its own NodeODM task and follows its processing."""

    def __init__(
        self,
        name: str,
        config: NodeODMTargetConfig,
        state: TargetState,
        *,
        token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self.poll_interval_s = config.poll_s
        self.staging: Staging | None = None  # uploads read the source (or the spool)
        self._state = state
        self._api = NodeAPI(config.url, token, config.timeout_s)
        self._names = Names(state)
        self._tasks = Tasks(name, config, state, self._api, clock)
        self._processing = Processing(self._api, config.download_dir)
        self._info: tuple[float, int | None] | None = None  # (monotonic time, maxImages)
        self._counts: dict[int, tuple[float, int]] = {}  # dataset id -> (when, files)

    def current_task(self, dataset: DatasetRef) -> str | None:
        """The uuid of the dataset's current task (None before the first upload)."""
        return self._tasks.current(dataset)

    def tainted(self, dataset: DatasetRef) -> bool:
        """The current task may hold a bad copy: it will be replaced, never committed."""
        return self._tasks.tainted(dataset)

    def resets(self, dataset: DatasetRef) -> int:
        """How many times the dataset had to start over in a new task."""
        return self._tasks.resets(dataset)

    def name_of(self, dataset: DatasetRef, key: bytes) -> str:
        """The name the file has (or will have) on the node."""
        return self._names.name_of(dataset, key)

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Create the dataset's task on the node (once; a crash resumes into it).

        A spent replacement budget is left to :meth:`upload`, which renews it for a file that
        `dronesync retry` sent again.
        """
        with contextlib.suppress(PermanentTargetError):
            await self._tasks.ready(dataset)

    async def make_durable(self) -> None:
        """Nothing to do: the node stored each file before answering."""

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Send one image into the dataset's task; its key is the dataset key."""
        # Claimed before anything is awaited: two files of one name sent at the same time
        # then never both take it.
        name = self._names.claim(dataset, item.key)
        memo = file_memo(name)
        task = await self._tasks.ready_for(dataset, memo)
        await self._preflight(dataset)
        previous = self._state.get_memo(dataset.id, memo)
        if previous == f"{task} sent":
            return item.key
        if previous == f"{task} sending":
            self._tasks.taint(dataset, task, f"{name} may have reached the task already")
            task = await self._tasks.ready(dataset)
        self._state.put_memo(dataset.id, memo, f"{task} sending")
        started = threading.Event()
        with self._tasks.sending(dataset, task, name, transfer, item.size):
            try:
                await asyncio.to_thread(
                    send_image, self._api.client, task, name, item, transfer, started
                )
            except BaseException as exc:
                sent_any = started.is_set()
                self._tasks.failed(dataset, task, name, exc, sent_any=sent_any, size=item.size)
                if isinstance(exc, httpx.TransportError):
                    raise transport_error(f"POST /task/new/upload/{task}", exc) from exc
                if isinstance(exc, RefusedError):
                    raise TransientTargetError(str(exc)) from exc
                raise
        if task != self.current_task(dataset):
            # Sent into a task that was replaced meanwhile; the requeue has the file again.
            raise TransientTargetError(
                f"task replaced {self.resets(dataset)} times; this file is sent again"
            )
        self._state.put_memo(dataset.id, memo, f"{task} sent")
        await self._names.sent(dataset, name, item)
        return item.key

    async def _preflight(self, dataset: DatasetRef) -> None:
        """Refuse a dataset the node would refuse after commit (more files than maxImages)."""
        now = time.monotonic()
        if self._info is None or now - self._info[0] > _INFO_TTL_S:
            try:
                info = await self._api.call("GET", "/info")
            except TargetPausedError:
                raise
            except TargetError:
                info = {}  # unreadable now: the upload itself says what is wrong
            limit = info.get("maxImages")
            valid = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
            if info or self._info is None:
                self._info = (now if info else now - _INFO_TTL_S, limit if valid else None)
        limit = self._info[1]
        if limit is None:
            return
        counted = self._counts.get(dataset.id)
        if counted is None or now - counted[0] > _INFO_TTL_S:
            counted = self._counts[dataset.id] = (now, self._state.file_count(dataset.id))
        count = counted[1]
        if count > limit:
            raise PermanentTargetError(
                f"{count} files in the dataset, but the node takes at most {limit} per task:"
                f" split the folder into datasets of at most {limit} images, or start the"
                " node with a larger --max_images"
            )

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Commit the task: the node starts processing. Returns the task uuid."""
        await self._preflight(dataset)
        names = [self._names.name_of(dataset, key) for key in keys]
        task = await self._tasks.commit(dataset, names)
        warning = self._names.check_refs(dataset)
        if warning:
            log.warning(
                "ancillary file names a renamed image", dataset=dataset.name, detail=warning
            )
        log.info("task committed", dataset=dataset.name, task=task, images=len(keys))
        return task

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """The task's status code, progress and error message, as the node reports them."""
        return await self._processing.status(dataset, handle, self._names.warning(dataset))

    async def aclose(self) -> None:
        """Close connections."""
        self._api.close()
