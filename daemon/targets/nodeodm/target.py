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
import hashlib
import json
import os
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import structlog

from daemon.errors import (
    DatasetResetError,
    PermanentTargetError,
    TargetError,
    TargetPausedError,
    TargetWaitError,
    TransientTargetError,
)
from daemon.hashing import CHUNK, StableRead
from daemon.targets.base import (
    DatasetRef,
    ProcessingStatus,
    Staging,
    TargetState,
    Transfer,
    UploadItem,
)
from daemon.targets.kit.http import json_body, never_sent, status_error, transport_error
from daemon.targets.nodeodm import NodeODMTargetConfig

log = structlog.get_logger("dronesync.nodeodm")

_SAFE = re.compile(rb"[^A-Za-z0-9._-]")
# Terminal colour sequences and other control characters in a task's output lines.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")
_MAX_PLAIN_NAME = 150
# Polls that may find the task unknown right after commit (the node is still moving the
# uploaded files into place) before the task counts as lost.
_UNKNOWN_POLLS = 20

# Memo keys in the journal, per dataset.
_TASK = "nodeodm.task"  # the current task uuid (chosen before init)
_READY = "nodeodm.ready"  # the uuid once /task/new/init accepted it
_TAINT = "nodeodm.taint"  # "<uuid> <reason>": that task may hold a bad copy
_COMMITTED = "nodeodm.committed"  # the uuid once committed
_COMMIT_SENT = "nodeodm.commit_sent"  # the uuid once a commit was sent for it
_RESETS = "nodeodm.resets"  # how many times the dataset's task was replaced after a fault
_NEXT_REPLACE = "nodeodm.next_replace"  # wall-clock time before which no replacement is made
_EXHAUSTED = "nodeodm.exhausted"  # the message once the replacement budget is spent
_WARNING = "nodeodm.warning"  # an ancillary file names a renamed image
_GAVE_UP = "gave-up"  # a file's memo: it failed because the budget was spent

# The first replacements are made at once (a file waiting for one spends attempts); the wait
# before each later one doubles from the base, up to the cap.
_FREE_REPLACEMENTS = 2
_REPLACE_BASE_S = 5.0
_REPLACE_MAX_S = 600.0
# A request the node dropped before reading it is sent again at once, this many times.
_RESENDS = 5
# How long the node's /info (maxImages) is trusted before it is read again.
_INFO_TTL_S = 30.0
# Lines of a failed task's output shown when the node gives no reason.
_OUTPUT_LINES = 8
# ODM reads these beside the images; they name images by file name.
ANCILLARY = frozenset({"gcp_list.txt", "geo.txt", "image_groups.txt"})
_MAX_ANCILLARY = 4 << 20
_IMAGE_NAME = re.compile(r"[^\s,;\"']+\.(?:jpe?g|tiff?|dng|png)\b", re.IGNORECASE)
_SIGN_IN_NEEDED = (
    "NodeODM refused the token (Invalid authentication token): put the node's token in"
    " token_file (or the credential), then reload the service"
)


def _file_memo(name: str) -> str:
    return f"nodeodm.file:{name}"


def plain_name(key: bytes) -> str | None:
    """The file's own name when it can go to the node as it is, else None."""
    base = key.rpartition(b"/")[2]
    if _SAFE.search(base) or len(base) > _MAX_PLAIN_NAME or not base.strip(b"._"):
        return None
    return base.decode("ascii")


def hashed_name(key: bytes) -> str:
    """The file's name with ten hex digits of the SHA-256 of its whole path before the extension.

    Only ``[A-Za-z0-9._-]`` is sent, so ``100MEDIA/DJI_0001.JPG`` and ``101MEDIA/DJI_0001.JPG``
    stay apart when both are in one dataset.
    """
    safe = _SAFE.sub(b"_", key.rpartition(b"/")[2])
    stem, dot, ext = safe.rpartition(b".")
    if not dot or not stem:
        stem, ext = safe, b""
    tag = hashlib.sha256(key).hexdigest()[:10].encode()
    return (stem[:100] + b"-" + tag + (b"." + ext[:20] if ext else b"")).decode("ascii")


def _claim_memo(name: str) -> str:
    return f"nodeodm.name:{name}"


def _refs_memo(name: str) -> str:
    return f"nodeodm.refs:{name}"


class _RefusedError(TargetError):
    """The node answered ``{"error": ...}``: the request was refused.

    ``unread``: the node said it before its upload handler read the body, so nothing of the
    file was stored. Its error handler answers every other error the same way, some of them
    after a part of the file was written (a full disk while multer writes it, say).
    """

    def __init__(self, message: str, *, unread: bool = True) -> None:
        super().__init__(message)
        self.unread = unread


# What NodeODM answers on the upload route before the body is read or stored (preUpload and
# the upload handler in libs/taskNew.js): an unknown or missing uuid, no file in the request.
_UNREAD_REFUSALS = ("invalid uuid", "not found", "need at least 1 file")
# Express's res.sendStatus(500): the one HTTP 500 the node's upload route answers by itself.
_EXPRESS_500 = b"Internal Server Error"


class _DroppedError(TransientTargetError):
    """HTTP 500 to an upload: the node's own refusal before its upload handler ran.

    NodeODM answers its errors as 200 ``{"error"}`` (its Express error handler); the one 500 on
    this route is ``res.sendStatus(500)`` in ``preUpload`` (``libs/taskNew.js``), before multer
    reads the body, so nothing was stored. A gateway's 502/503/504 stays ambiguous.
    """


def _nothing_stored(exc: BaseException) -> bool:
    if isinstance(exc, _RefusedError):
        return exc.unread
    return isinstance(exc, _DroppedError | TargetPausedError)


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
        self._clock = clock
        self.config = config
        self.poll_interval_s = config.poll_s
        self.staging: Staging | None = None  # uploads read the source (or the spool)
        self._state = state
        # The token goes in the query string (the node ignores headers); httpx adds it to
        # every request, and messages below name routes, never URLs.
        self._client = httpx.Client(
            base_url=config.url,
            params={"token": token} if token else None,
            timeout=httpx.Timeout(config.timeout_s),
            follow_redirects=False,
        )
        self._locks: dict[int, asyncio.Lock] = {}
        self._checked: set[int] = set()
        self._sends: dict[int, dict[str, tuple[str, Transfer]]] = {}
        self._unknown: dict[str, int] = {}
        self._info: tuple[float, int | None] | None = None  # (monotonic time, maxImages)
        self._counts: dict[int, tuple[float, int]] = {}  # dataset id -> (when, files)
        self._task_bytes: dict[str, int] = {}  # bytes sent into each task by this process

    # -- the task ---------------------------------------------------------------------------

    def current_task(self, dataset: DatasetRef) -> str | None:
        """The uuid of the dataset's current task (None before the first upload)."""
        return self._state.get_memo(dataset.id, _TASK)

    def tainted(self, dataset: DatasetRef) -> bool:
        """The current task may hold a bad copy: it will be replaced, never committed."""
        taint = self._state.get_memo(dataset.id, _TAINT)
        return taint is not None and taint.split(" ", 1)[0] == self.current_task(dataset)

    def resets(self, dataset: DatasetRef) -> int:
        """How many times the dataset had to start over in a new task."""
        return int(self._state.get_memo(dataset.id, _RESETS) or 0)

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Create the dataset's task on the node (once; a crash resumes into it).

        A spent replacement budget is left to :meth:`upload`, which renews it for a file that
        `dronesync retry` sent again.
        """
        with contextlib.suppress(PermanentTargetError):
            await self._task(dataset)

    async def _task(self, dataset: DatasetRef) -> str:
        lock = self._locks.setdefault(dataset.id, asyncio.Lock())
        async with lock:
            self._check_leftovers(dataset)
            taint = self._state.get_memo(dataset.id, _TAINT)
            current = self.current_task(dataset)
            if taint is not None and current is not None:
                tainted_uuid, _, reason = taint.partition(" ")
                if tainted_uuid == current:
                    self._replace(dataset, reason)
            committed = self._state.get_memo(dataset.id, _COMMITTED)
            if committed is not None and committed == self.current_task(dataset):
                self._start_over(dataset, "the previous task was already committed")
            task = self.current_task(dataset)
            if task is None:
                task = str(uuidlib.uuid4())
                self._state.put_memo(dataset.id, _TASK, task)
            if self._state.get_memo(dataset.id, _READY) != task:
                await self._init(dataset, task)
            return task

    def _check_leftovers(self, dataset: DatasetRef) -> None:
        """Once per process: a file still ``sending`` in the journal was cut off by a stop."""
        if dataset.id in self._checked:
            return
        self._checked.add(dataset.id)
        current = self.current_task(dataset)
        if current is None or self._state.get_memo(dataset.id, _TAINT):
            return
        if self._state.get_memo(dataset.id, _COMMITTED) == current:
            return
        # Every file of the dataset has a memo; a leftover "sending" one is ambiguous.
        if self._sending_leftover(dataset, current):
            self._taint(dataset, current, "the daemon stopped during an upload")

    def _sending_leftover(self, dataset: DatasetRef, task: str) -> bool:
        memos = self._state.memos(dataset.id, "nodeodm.file:")
        return any(value == f"{task} sending" for value in memos.values())

    def _taint(self, dataset: DatasetRef, task: str, reason: str) -> None:
        if task != self.current_task(dataset) or self.tainted(dataset):
            return
        self._state.put_memo(dataset.id, _TAINT, f"{task} {reason}")
        log.warning(
            "task tainted; it will be replaced", dataset=dataset.name, task=task, reason=reason
        )

    def _replace(self, dataset: DatasetRef, reason: str) -> None:
        """Replace the tainted task, within the dataset's budget and not before its time."""
        count = self.resets(dataset)
        if count >= self.config.max_task_replacements:
            message = (
                f"task replaced {count} times: {reason}; uploads to the node keep breaking off:"
                f" check the node and the network to it, then `dronesync retry {dataset.name}`"
            )
            self._state.put_memo(dataset.id, _EXHAUSTED, message)
            log.warning("task replacements exhausted", dataset=dataset.name, reason=reason)
            raise PermanentTargetError(message)
        now = self._clock()
        # Never longer than the longest wait: the clock may have stepped back since.
        due = min(float(self._state.get_memo(dataset.id, _NEXT_REPLACE) or 0), now + _REPLACE_MAX_S)
        if now < due:
            raise TargetWaitError(
                f"task replaced {count} times: {reason}; the next in {due - now:.0f} s",
                retry_after=due - now,
            )
        self._state.put_memo(dataset.id, _RESETS, str(count + 1))
        if count + 1 >= _FREE_REPLACEMENTS:
            wait = min(_REPLACE_MAX_S, _REPLACE_BASE_S * 2 ** (count + 1 - _FREE_REPLACEMENTS))
            self._state.put_memo(dataset.id, _NEXT_REPLACE, repr(now + wait))
        self._start_over(dataset, f"task replaced {count + 1} times: {reason}")

    def _start_over(self, dataset: DatasetRef, reason: str) -> None:
        """Switch to a new task; files sent to the old one go back to waiting.

        Runs on the event loop with no await inside, so no upload can start into the old task
        between the switch and the requeue; uploads still running into it are aborted.
        """
        old = self.current_task(dataset)
        new = str(uuidlib.uuid4())
        self._state.put_memo(dataset.id, _TASK, new)
        self._state.put_memo(dataset.id, _TAINT, None)
        for task, transfer in self._sends.get(dataset.id, {}).values():
            if task == old:
                transfer.abort(f"task {old} replaced: {reason}")
        count = self._state.requeue_uploaded(dataset.id, reason)
        log.warning(
            "new task for the dataset",
            dataset=dataset.name,
            old_task=old,
            task=new,
            reason=reason,
            files_sent_again=count,
        )
        committed = self._state.get_memo(dataset.id, _COMMITTED) == old
        if old is not None and self._state.get_memo(dataset.id, _READY) == old and not committed:
            # /task/remove knows committed tasks only ("<uuid> not found" otherwise) and
            # nothing else frees tmp/<uuid>: the node's hourly sweep deletes it once older
            # than its cleanup_uploads_after. Said once per task, with what it holds.
            log.warning(
                "old task left on the node until its cleanup_uploads_after (2880 min by default)",
                dataset=dataset.name,
                task=old,
                bytes_left=self._task_bytes.pop(old, 0),
            )

    async def _init(self, dataset: DatasetRef, task: str) -> None:
        name = self.config.task_name.format(dataset=dataset.name, target=self.name)
        options = [{"name": k, "value": v} for k, v in self.config.options.items()]
        try:
            # NodeODM reads init fields from multipart only; an urlencoded body is ignored.
            await self._call(
                "POST",
                "/task/new/init",
                files={"name": (None, name), "options": (None, json.dumps(options))},
                headers={"set-uuid": task},
            )
        except TargetPausedError:
            raise  # refused at the door: nothing was made
        except _RefusedError as exc:
            if "option" in str(exc).lower():
                raise PermanentTargetError(f"{exc}; check [targets.{self.name}.options]") from exc
            # Perhaps an earlier init with this uuid did arrive: take a fresh uuid.
            self._state.put_memo(dataset.id, _TASK, str(uuidlib.uuid4()))
            raise TransientTargetError(str(exc)) from exc
        except TransientTargetError:
            # An init lost on the way may still have created the task: never reuse its uuid.
            self._state.put_memo(dataset.id, _TASK, str(uuidlib.uuid4()))
            raise
        self._state.put_memo(dataset.id, _READY, task)
        log.info("task created", dataset=dataset.name, task=task)

    # -- uploads ----------------------------------------------------------------------------

    async def make_durable(self) -> None:
        """Nothing to do: the node stored each file before answering."""

    def name_of(self, dataset: DatasetRef, key: bytes) -> str:
        """The name the file has (or will have) on the node; see :meth:`_claim`."""
        plain = plain_name(key)
        if plain is not None:
            owner = self._state.get_memo(dataset.id, _claim_memo(plain))
            if owner is None or owner == key.hex():
                return plain
        return hashed_name(key)

    def _claim(self, dataset: DatasetRef, key: bytes) -> str:
        """Record the file's name on the node: its own unless another file of the dataset has it.

        The first file sent under a name keeps it for the dataset, in the journal, so the
        choice holds for every later task and across restarts.
        """
        plain = plain_name(key)
        if plain is None:
            return hashed_name(key)
        memo = _claim_memo(plain)
        owner = self._state.get_memo(dataset.id, memo)
        if owner is None:
            self._state.put_memo(dataset.id, memo, key.hex())
            return plain
        if owner == key.hex():
            return plain
        if plain in ANCILLARY:
            # ODM reads these by name (and takes any other .txt for a GCP file): one each.
            first = bytes.fromhex(owner).decode("utf-8", "backslashreplace")
            raise PermanentTargetError(
                f"a second {plain} in the dataset: {first} is the one sent;"
                " keep one per dataset folder"
            )
        self._state.put_memo(dataset.id, f"nodeodm.renamed:{plain}", "1")
        return hashed_name(key)

    def _budget(self, dataset: DatasetRef, memo: str) -> None:
        """Fail the file once the replacement budget is spent.

        A file sent again after ``dronesync retry`` (its memo says it failed that way) gives
        the dataset a fresh budget.
        """
        exhausted = self._state.get_memo(dataset.id, _EXHAUSTED)
        if exhausted is None:
            return
        if self._state.get_memo(dataset.id, memo) != _GAVE_UP:
            self._state.put_memo(dataset.id, memo, _GAVE_UP)
            raise PermanentTargetError(exhausted)
        for key in (_EXHAUSTED, _RESETS, _NEXT_REPLACE):
            self._state.put_memo(dataset.id, key, None)
        log.info("task replacement budget renewed", dataset=dataset.name)

    async def _preflight(self, dataset: DatasetRef) -> None:
        """Refuse a dataset the node would refuse after commit (more files than maxImages)."""
        now = time.monotonic()
        if self._info is None or now - self._info[0] > _INFO_TTL_S:
            try:
                info = await self._call("GET", "/info")
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

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Send one image into the dataset's task; its key is the dataset key."""
        # Claimed before anything is awaited: two files of one name sent at the same time
        # then never both take it.
        name = self._claim(dataset, item.key)
        memo = _file_memo(name)
        self._budget(dataset, memo)
        try:
            task = await self._task(dataset)
        except PermanentTargetError:
            self._state.put_memo(dataset.id, memo, _GAVE_UP)
            raise
        await self._preflight(dataset)
        previous = self._state.get_memo(dataset.id, memo)
        if previous == f"{task} sent":
            return item.key
        if previous == f"{task} sending":
            self._taint(dataset, task, f"{name} may have reached the task already")
            task = await self._task(dataset)
        self._state.put_memo(dataset.id, memo, f"{task} sending")
        started = threading.Event()
        sends = self._sends.setdefault(dataset.id, {})
        sends[name] = (task, transfer)
        self._task_bytes[task] = self._task_bytes.get(task, 0) + item.size
        try:
            await asyncio.to_thread(self._send_again, task, name, item, transfer, started)
        except BaseException as exc:
            stored = self._failed(dataset, task, name, exc, sent_any=started.is_set())
            if not stored and task in self._task_bytes:  # gone if the task was replaced
                self._task_bytes[task] -= item.size  # nothing of it is on the node
            if isinstance(exc, httpx.TransportError):
                raise transport_error(f"POST /task/new/upload/{task}", exc) from exc
            if isinstance(exc, _RefusedError):
                raise TransientTargetError(str(exc)) from exc
            raise
        finally:
            if sends.get(name, (None, None))[1] is transfer:
                del sends[name]
        if task != self.current_task(dataset):
            # Sent into a task that was replaced meanwhile; the requeue has the file again.
            raise TransientTargetError(
                f"task replaced {self.resets(dataset)} times; this file is sent again"
            )
        self._state.put_memo(dataset.id, memo, f"{task} sent")
        if name in ANCILLARY:
            refs = await asyncio.to_thread(_image_names, item)
            self._state.put_memo(dataset.id, _refs_memo(name), json.dumps(refs))
        return item.key

    def _failed(
        self, dataset: DatasetRef, task: str, name: str, exc: BaseException, *, sent_any: bool
    ) -> bool:
        """After a failed upload: forget it when nothing was stored, else taint the task.

        Returns whether the node may hold part of the file.
        """
        stored = not (_nothing_stored(exc) or not sent_any or never_sent(exc))
        if stored:
            self._taint(dataset, task, f"upload of {name} interrupted: {_short(exc)}")
        else:
            self._state.put_memo(dataset.id, _file_memo(name), None)
        if isinstance(exc, _RefusedError) and "not found" in str(exc).lower():
            # The node lost the task (restarted, or two days passed): start over.
            self._taint(dataset, task, f"the node no longer knows task {task}")
        return stored

    def _send_again(
        self, task: str, name: str, item: UploadItem, transfer: Transfer, started: threading.Event
    ) -> None:
        """:meth:`_send`, again at once while the node drops the request before reading it."""
        for left in range(_RESENDS, -1, -1):
            try:
                self._send(task, name, item, transfer, started)
            except _DroppedError:
                if not left or transfer.aborted:
                    raise
            else:
                return

    def _renamed_refs(self, dataset: DatasetRef) -> str | None:
        """Which ancillary files name an image that reached the node under another name."""
        renamed = self._state.memos(dataset.id, "nodeodm.renamed:")
        problems = []
        for memo, value in sorted(self._state.memos(dataset.id, "nodeodm.refs:").items()):
            # A name that several images of the dataset have: all but one were renamed.
            clashes = [r for r in json.loads(value) if f"nodeodm.renamed:{r}" in renamed]
            if clashes:
                shown = ", ".join(clashes[:3]) + (" ..." if len(clashes) > 3 else "")
                problems.append(f"{memo.partition(':')[2]} names {shown}")
        if not problems:
            return None
        return (
            "; ".join(problems)
            + ": images of that name in several folders reached the node renamed (a hash"
            " of their path in the name); fix the file's names, or keep one folder per dataset"
        )

    def _send(
        self, task: str, name: str, item: UploadItem, transfer: Transfer, started: threading.Event
    ) -> None:
        """One multipart request with one file, streamed from disk (worker thread)."""
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
            response = self._client.post(path, content=body, headers=headers)
        self._check(f"POST {path}", response, upload=True)

    # -- processing -------------------------------------------------------------------------

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Commit the task: the node starts processing. Returns the task uuid."""
        await self._preflight(dataset)
        task = self.current_task(dataset)
        committed = self._state.get_memo(dataset.id, _COMMITTED)
        if task is not None and committed == task:
            # Processing again (after a failure on the node): a task cannot be committed twice.
            self._start_over(dataset, f"task {task} was processed already")
            raise DatasetResetError("a new task is made; the images are sent to it first")
        if task is None or self.tainted(dataset):
            await self._task(dataset)  # starts over, requeues
            raise DatasetResetError("the task was replaced; the images are sent to it first")
        missing = [
            k
            for k in keys
            if self._state.get_memo(dataset.id, _file_memo(self.name_of(dataset, k)))
            != f"{task} sent"
        ]
        if missing:
            self._start_over(dataset, f"{len(missing)} uploaded file(s) are not in task {task}")
            raise DatasetResetError("the task was incomplete; the images are sent again")
        route = f"POST /task/new/commit/{task}"
        sent_before = self._state.get_memo(dataset.id, _COMMIT_SENT) == task
        self._state.put_memo(dataset.id, _COMMIT_SENT, task)
        try:
            await self._call("POST", f"/task/new/commit/{task}")
        except TransientTargetError:
            # The commit may have arrived: the node knows the task once it is committed.
            if not await self._known(task):
                raise
        except _RefusedError as exc:
            if not await self._known(task):
                if "not found" in str(exc).lower() and sent_before:
                    # An earlier commit whose reply was lost used the task's upload area
                    # (handleCommit deletes body.json first): the task is committed, and
                    # polling finds it, or reports it lost after a while.
                    log.info("an earlier commit arrived", dataset=dataset.name, task=task)
                elif "not found" in str(exc).lower():
                    # The node lost the uncommitted task (restarted, or two days passed).
                    self._start_over(dataset, f"the node no longer knows task {task}")
                    raise DatasetResetError(
                        "a new task is made; the images are sent again"
                    ) from exc
                else:
                    raise TransientTargetError(f"{route}: {exc}") from exc
        self._state.put_memo(dataset.id, _COMMITTED, task)
        for key in (_RESETS, _NEXT_REPLACE):  # a fresh budget for a task made later
            self._state.put_memo(dataset.id, key, None)
        warning = self._renamed_refs(dataset)
        self._state.put_memo(dataset.id, _WARNING, warning)
        if warning:
            log.warning(
                "ancillary file names a renamed image", dataset=dataset.name, detail=warning
            )
        log.info("task committed", dataset=dataset.name, task=task, images=len(keys))
        return task

    async def _known(self, task: str) -> bool:
        try:
            await self._call("GET", f"/task/{task}/info")
        except TargetError:
            return False
        return True

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """The task's status code, progress and error message, as the node reports them."""
        try:
            info = await self._call("GET", f"/task/{handle}/info")
        except _RefusedError as exc:
            seen = self._unknown[handle] = self._unknown.get(handle, 0) + 1
            if seen <= _UNKNOWN_POLLS:
                return ProcessingStatus("running", "the node is setting the task up")
            return ProcessingStatus("failed", f"the node no longer knows task {handle}: {exc}")
        self._unknown.pop(handle, None)
        status = info.get("status") if isinstance(info, dict) else None
        code = status.get("code") if isinstance(status, dict) else None
        progress = info.get("progress") if isinstance(info, dict) else None
        pct = float(progress) if isinstance(progress, int | float) else None
        message = status.get("errorMessage") if isinstance(status, dict) else None
        if code == 40:
            return await self._completed(dataset, handle)
        if code == 30:
            reason = message or await self._output_tail(handle)
            return ProcessingStatus("failed", f"the node failed the task: {reason}")
        if code == 50:
            return ProcessingStatus("failed", "the task was cancelled on the node")
        if code == 10:
            return ProcessingStatus("running", "queued on the node", pct)
        # 20, or a code this version does not know: still running.
        detail = "running on the node" + (f", {pct:.0f} %" if pct is not None else "")
        warning = self._state.get_memo(dataset.id, _WARNING)
        return ProcessingStatus("running", f"{detail}; {warning}" if warning else detail, pct)

    async def _output_tail(self, task: str) -> str:
        """The last lines of the task's output (``GET /task/{uuid}/output?line=-N``)."""
        try:
            lines = await self._call_list(f"/task/{task}/output", {"line": str(-_OUTPUT_LINES)})
        except TargetError:
            return "no reason given, and its output could not be read"
        text = " | ".join(clean for line in lines if (clean := _CONTROL.sub("", str(line)).strip()))
        if not text:
            return "no reason given, and its output is empty"
        return f"no reason given; its output ends: {text[-600:]}"

    async def _call_list(self, path: str, params: dict[str, str]) -> list[Any]:
        def call() -> list[Any]:
            route = f"GET {path}"
            try:
                response = self._client.get(path, params=params)
            except httpx.TransportError as exc:
                raise transport_error(route, exc) from exc
            if response.status_code >= 400:
                raise status_error(route, response)
            body = json_body(route, response)
            if not isinstance(body, list):
                self._check(route, response)  # an {"error"}
                raise TransientTargetError(f"{route}: unexpected reply")
            return body

        return await asyncio.to_thread(call)

    async def _completed(self, dataset: DatasetRef, task: str) -> ProcessingStatus:
        folder = self.config.download_dir
        if folder is None:
            return ProcessingStatus("done", f"task {task} completed on the node", 100.0)
        dest = folder / f"{dataset.name}.zip"
        await asyncio.to_thread(self._download, task, dest)
        return ProcessingStatus("done", f"task {task} completed; outputs in {dest}", 100.0)

    def _download(self, task: str, dest: Path) -> None:
        route = f"GET /task/{task}/download/all.zip"
        part = dest.with_name(dest.name + ".part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self._client.stream("GET", f"/task/{task}/download/all.zip") as response:
                if response.status_code != 200:
                    raise status_error(route, response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    response.read()
                    self._check(route, response)
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

    async def aclose(self) -> None:
        """Close connections."""
        self._client.close()

    # -- requests ---------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._call_sync, method, path, **kwargs)

    def _call_sync(self, method: str, path: str, **kwargs: Any) -> Any:
        route = f"{method} {path}"
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error(route, exc) from exc
        return self._check(route, response)

    @staticmethod
    def _check(route: str, response: httpx.Response, *, upload: bool = False) -> Any:
        """NodeODM reports errors as HTTP 200 with ``{"error": ...}``: every body is read."""
        if upload and response.status_code == 500 and response.content.strip() == _EXPRESS_500:
            # A proxy's or a front end's 500 looks otherwise: it stays ambiguous (below).
            raise _DroppedError(f"{route}: HTTP 500: the node dropped the upload unread")
        if response.status_code >= 400:
            raise status_error(route, response)
        body = json_body(route, response)
        if isinstance(body, dict) and "error" in body:
            if "authentication token" in str(body["error"]).lower():
                # libs/auth/TokenAuthBase.js: the same words for a missing and a wrong token.
                raise TargetPausedError(_SIGN_IN_NEEDED)
            said = str(body["error"])
            unread = not upload or any(words in said.lower() for words in _UNREAD_REFUSALS)
            raise _RefusedError(f"{route}: the node says: {said}", unread=unread)
        if not isinstance(body, dict):
            raise TransientTargetError(f"{route}: unexpected reply {str(body)[:80]!r}")
        return body


def _body(
    read: StableRead, head: bytes, tail: bytes, transfer: Transfer, started: threading.Event
) -> Generator[bytes, None, None]:
    """The request body: the part's header, the file, then the closing boundary.

    The read hashes each chunk and raises before handing out the last one unless the file is
    the recorded one: the body then ends cut short, the node sees a broken upload (and the
    task is replaced because of it), never a whole file that is not the recorded one.
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


def _image_names(item: UploadItem) -> list[str]:
    """The image names an ancillary file mentions (worker thread; checked at commit)."""
    try:
        with item.path.open("rb") as f:
            text = f.read(_MAX_ANCILLARY).decode("utf-8", "replace")
    except OSError:
        return []  # sent already; the check at commit is a courtesy
    return sorted({m.group(0).rpartition("/")[2] for m in _IMAGE_NAME.finditer(text)})


def _short(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "stopped"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:120]
