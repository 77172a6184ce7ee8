"""A dataset's task on the node: made, tainted, replaced within a budget, committed.

The books are memos in the journal, per dataset: the task uuid is chosen and stored before
``/task/new/init`` (``set-uuid``), so a crash resumes into the same task; each file's memo is
"<task> sending" before its request and "<task> sent" after a clear reply. A task that may
hold a bad copy is *tainted* and never committed: the next call for the dataset makes a new
one, and every file already uploaded waits again. The first replacements are made at once,
later ones wait (doubling, kept in the journal); past ``max_task_replacements`` the dataset's
files fail until ``dronesync retry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid as uuidlib
from collections.abc import Callable, Iterator

import structlog

from daemon.errors import (
    DatasetResetError,
    PermanentTargetError,
    TargetPausedError,
    TargetWaitError,
    TransientTargetError,
)
from daemon.targets.base import DatasetRef, TargetState, Transfer
from daemon.targets.kit.http import never_sent
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.nodeodm.api import NodeAPI, RefusedError, nothing_stored
from daemon.targets.nodeodm.names import file_memo

log = structlog.get_logger("dronesync.nodeodm")

# Memo keys in the journal, per dataset.
_TASK = "nodeodm.task"  # the current task uuid (chosen before init)
_READY = "nodeodm.ready"  # the uuid once /task/new/init accepted it
_TAINT = "nodeodm.taint"  # "<uuid> <reason>": that task may hold a bad copy
_COMMITTED = "nodeodm.committed"  # the uuid once committed
_COMMIT_SENT = "nodeodm.commit_sent"  # the uuid once a commit was sent for it
_RESETS = "nodeodm.resets"  # how many times the dataset's task was replaced after a fault
_NEXT_REPLACE = "nodeodm.next_replace"  # wall-clock time before which no replacement is made
_EXHAUSTED = "nodeodm.exhausted"  # the message once the replacement budget is spent
_GAVE_UP = "gave-up"  # a file's memo: it failed because the budget was spent

# The first replacements are made at once (a file waiting for one spends attempts); the wait
# before each later one doubles from the base, up to the cap.
_FREE_REPLACEMENTS = 2
_REPLACE_BASE_S = 5.0
_REPLACE_MAX_S = 600.0


class Tasks:
    """The task of each dataset, and the uploads running into it."""

    def __init__(
        self,
        target: str,
        config: NodeODMTargetConfig,
        state: TargetState,
        api: NodeAPI,
        clock: Callable[[], float],
    ) -> None:
        self._target = target
        self._config = config
        self._state = state
        self._api = api
        self._clock = clock
        self._locks: dict[int, asyncio.Lock] = {}
        self._checked: set[int] = set()
        self._sends: dict[int, dict[str, tuple[str, Transfer]]] = {}
        self._task_bytes: dict[str, int] = {}  # bytes sent into each task by this process

    def current(self, dataset: DatasetRef) -> str | None:
        """The uuid of the dataset's current task (None before the first upload)."""
        return self._state.get_memo(dataset.id, _TASK)

    def tainted(self, dataset: DatasetRef) -> bool:
        """The current task may hold a bad copy: it will be replaced, never committed."""
        taint = self._state.get_memo(dataset.id, _TAINT)
        return taint is not None and taint.split(" ", 1)[0] == self.current(dataset)

    def resets(self, dataset: DatasetRef) -> int:
        """How many times the dataset had to start over in a new task."""
        return int(self._state.get_memo(dataset.id, _RESETS) or 0)

    async def ready(self, dataset: DatasetRef) -> str:
        """The dataset's task, made on the node (once; a crash resumes into it).

        A tainted or committed task is replaced first; see :meth:`_replace`.
        """
        lock = self._locks.setdefault(dataset.id, asyncio.Lock())
        async with lock:
            self._check_leftovers(dataset)
            taint = self._state.get_memo(dataset.id, _TAINT)
            current = self.current(dataset)
            if taint is not None and current is not None:
                tainted_uuid, _, reason = taint.partition(" ")
                if tainted_uuid == current:
                    self._replace(dataset, reason)
            committed = self._state.get_memo(dataset.id, _COMMITTED)
            if committed is not None and committed == self.current(dataset):
                self.start_over(dataset, "the previous task was already committed")
            task = self.current(dataset)
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
        current = self.current(dataset)
        if current is None or self._state.get_memo(dataset.id, _TAINT):
            return
        if self._state.get_memo(dataset.id, _COMMITTED) == current:
            return
        # Every file of the dataset has a memo; a leftover "sending" one is ambiguous.
        memos = self._state.memos(dataset.id, file_memo(""))
        if any(value == f"{current} sending" for value in memos.values()):
            self.taint(dataset, current, "the daemon stopped during an upload")

    def taint(self, dataset: DatasetRef, task: str, reason: str) -> None:
        """``task`` may hold a bad copy: the next call for the dataset replaces it."""
        if task != self.current(dataset) or self.tainted(dataset):
            return
        self._state.put_memo(dataset.id, _TAINT, f"{task} {reason}")
        log.warning(
            "task tainted; it will be replaced", dataset=dataset.name, task=task, reason=reason
        )

    def _replace(self, dataset: DatasetRef, reason: str) -> None:
        """Replace the tainted task, within the dataset's budget and not before its time."""
        count = self.resets(dataset)
        if count >= self._config.max_task_replacements:
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
        self.start_over(dataset, f"task replaced {count + 1} times: {reason}")

    def start_over(self, dataset: DatasetRef, reason: str) -> None:
        """Switch to a new task; files sent to the old one go back to waiting.

        Runs on the event loop with no await inside, so no upload can start into the old task
        between the switch and the requeue; uploads still running into it are aborted.
        """
        old = self.current(dataset)
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
        name = self._config.task_name.format(dataset=dataset.name, target=self._target)
        options = [{"name": k, "value": v} for k, v in self._config.options.items()]
        try:
            # NodeODM reads init fields from multipart only; an urlencoded body is ignored.
            await self._api.call(
                "POST",
                "/task/new/init",
                files={"name": (None, name), "options": (None, json.dumps(options))},
                headers={"set-uuid": task},
            )
        except TargetPausedError:
            raise  # refused at the door: nothing was made
        except RefusedError as exc:
            if "option" in str(exc).lower():
                raise PermanentTargetError(
                    f"{exc}; check [targets.{self._target}.options]"
                ) from exc
            # Perhaps an earlier init with this uuid did arrive: take a fresh uuid.
            self._state.put_memo(dataset.id, _TASK, str(uuidlib.uuid4()))
            raise TransientTargetError(str(exc)) from exc
        except TransientTargetError:
            # An init lost on the way may still have created the task: never reuse its uuid.
            self._state.put_memo(dataset.id, _TASK, str(uuidlib.uuid4()))
            raise
        self._state.put_memo(dataset.id, _READY, task)
        log.info("task created", dataset=dataset.name, task=task)

    async def ready_for(self, dataset: DatasetRef, memo: str) -> str:
        """:meth:`ready`, for the file whose memo is ``memo``; it fails once the budget is spent.

        A file sent again after ``dronesync retry`` (its memo says it failed that way) gives
        the dataset a fresh budget.
        """
        self._budget(dataset, memo)
        try:
            return await self.ready(dataset)
        except PermanentTargetError:
            self._state.put_memo(dataset.id, memo, _GAVE_UP)
            raise

    def _budget(self, dataset: DatasetRef, memo: str) -> None:
        exhausted = self._state.get_memo(dataset.id, _EXHAUSTED)
        if exhausted is None:
            return
        if self._state.get_memo(dataset.id, memo) != _GAVE_UP:
            self._state.put_memo(dataset.id, memo, _GAVE_UP)
            raise PermanentTargetError(exhausted)
        for key in (_EXHAUSTED, _RESETS, _NEXT_REPLACE):
            self._state.put_memo(dataset.id, key, None)
        log.info("task replacement budget renewed", dataset=dataset.name)

    @contextlib.contextmanager
    def sending(
        self, dataset: DatasetRef, task: str, name: str, transfer: Transfer, size: int
    ) -> Iterator[None]:
        """While ``name`` is sent into ``task``: replacing the task aborts the transfer."""
        sends = self._sends.setdefault(dataset.id, {})
        sends[name] = (task, transfer)
        self._task_bytes[task] = self._task_bytes.get(task, 0) + size
        try:
            yield
        finally:
            if sends.get(name, (None, None))[1] is transfer:
                del sends[name]

    def failed(
        self,
        dataset: DatasetRef,
        task: str,
        name: str,
        exc: BaseException,
        *,
        sent_any: bool,
        size: int,
    ) -> None:
        """After a failed upload: forget it when nothing was stored, else taint the task."""
        stored = not (nothing_stored(exc) or not sent_any or never_sent(exc))
        if stored:
            self.taint(dataset, task, f"upload of {name} interrupted: {_short(exc)}")
        else:
            self._state.put_memo(dataset.id, file_memo(name), None)
            if task in self._task_bytes:  # gone if the task was replaced
                self._task_bytes[task] -= size  # nothing of it is on the node
        if isinstance(exc, RefusedError) and "not found" in str(exc).lower():
            # The node lost the task (restarted, or two days passed): start over.
            self.taint(dataset, task, f"the node no longer knows task {task}")

    async def commit(self, dataset: DatasetRef, names: list[str]) -> str:
        """Commit the task holding the files sent as ``names``: the node starts processing.

        Raises :class:`DatasetResetError` when the task cannot be committed as it is (it was
        committed already, is tainted or misses a file): a new one is made and filled first.
        """
        task = self.current(dataset)
        committed = self._state.get_memo(dataset.id, _COMMITTED)
        if task is not None and committed == task:
            # Processing again (after a failure on the node): a task cannot be committed twice.
            self.start_over(dataset, f"task {task} was processed already")
            raise DatasetResetError("a new task is made; the images are sent to it first")
        if task is None or self.tainted(dataset):
            await self.ready(dataset)  # starts over, requeues
            raise DatasetResetError("the task was replaced; the images are sent to it first")
        sent = f"{task} sent"
        missing = [n for n in names if self._state.get_memo(dataset.id, file_memo(n)) != sent]
        if missing:
            self.start_over(dataset, f"{len(missing)} uploaded file(s) are not in task {task}")
            raise DatasetResetError("the task was incomplete; the images are sent again")
        route = f"POST /task/new/commit/{task}"
        sent_before = self._state.get_memo(dataset.id, _COMMIT_SENT) == task
        self._state.put_memo(dataset.id, _COMMIT_SENT, task)
        try:
            await self._api.call("POST", f"/task/new/commit/{task}")
        except TransientTargetError:
            # The commit may have arrived: the node knows the task once it is committed.
            if not await self._api.known(task):
                raise
        except RefusedError as exc:
            if not await self._api.known(task):
                if "not found" in str(exc).lower() and sent_before:
                    # An earlier commit whose reply was lost used the task's upload area
                    # (handleCommit deletes body.json first): the task is committed, and
                    # polling finds it, or reports it lost after a while.
                    log.info("an earlier commit arrived", dataset=dataset.name, task=task)
                elif "not found" in str(exc).lower():
                    # The node lost the uncommitted task (restarted, or two days passed).
                    self.start_over(dataset, f"the node no longer knows task {task}")
                    raise DatasetResetError(
                        "a new task is made; the images are sent again"
                    ) from exc
                else:
                    raise TransientTargetError(f"{route}: {exc}") from exc
        self._state.put_memo(dataset.id, _COMMITTED, task)
        for key in (_RESETS, _NEXT_REPLACE):  # a fresh budget for a task made later
            self._state.put_memo(dataset.id, key, None)
        return task


def _short(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "stopped"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:120]
