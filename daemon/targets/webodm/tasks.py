"""The project, and each dataset's task in it: found or made once, then committed.

From WebODM's ``app/api/tasks.py`` (``TaskViewSet``) and ``app/api/projects.py``:

- ``POST /api/projects/{project}/tasks/`` with ``partial`` makes an empty task that waits for
  its images (``create``); ``name``, ``options`` (a list of ``{name, value}``) and
  ``processing_node`` are the serializer's fields. The task's id is a uuid WebODM chooses, so
  the journal records the *request* (the task's name) before it is sent, and a reply lost on
  the way is recovered by listing the project's tasks (``list``, not paginated) and taking the
  partial task of that name, never by making a second one.
- ``POST .../tasks/{id}/commit/`` clears ``partial`` and queues processing; it refuses a task
  without images (HTTP 400). A commit whose reply was lost shows as ``partial: false``.
- Projects: ``GET /api/projects/?name=`` (``filter_fields``; a plain list unless ``page`` is
  asked, a page ``{"results"}`` in older versions), ``POST /api/projects/`` to make one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from daemon.errors import DatasetResetError, PermanentTargetError, TransientTargetError
from daemon.targets.base import DatasetRef, TargetState
from daemon.targets.webodm import WebODMTargetConfig
from daemon.targets.webodm.api import NotFoundError, WebODMAPI

log = structlog.get_logger("dronesync.webodm")

# Memo keys in the journal, per dataset.
_CREATING = "webodm.creating"  # the task's name, from before the creation is sent
_TASK = "webodm.task"  # "<project>/<task id>" once WebODM gave the id
_COMMITTED = "webodm.committed"  # "<project>/<task id>" once committed


def file_memo(name: str) -> str:
    """The memo of the file sent as ``name``: "<task> sending" or "<task> sent"."""
    return f"webodm.file:{name}"


def _rows(body: Any) -> list[dict[str, Any]]:
    """A list reply, plain or as a page (``{"results": [...]}``)."""
    if isinstance(body, dict):
        body = body.get("results")
    if not isinstance(body, list):
        raise TransientTargetError(f"unexpected list reply {str(body)[:80]!r}")
    return [row for row in body if isinstance(row, dict)]


class Tasks:
    """The target's project and each dataset's task in it."""

    def __init__(
        self, target: str, config: WebODMTargetConfig, state: TargetState, api: WebODMAPI
    ) -> None:
        self._target = target
        self._config = config
        self._state = state
        self._api = api
        self._project: int | None = None
        self._project_lock = asyncio.Lock()
        self._locks: dict[int, asyncio.Lock] = {}

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._api.call, method, path, **kwargs)

    def current(self, dataset: DatasetRef) -> str | None:
        """``<project>/<task id>`` of the dataset's task (None before it was made)."""
        return self._state.get_memo(dataset.id, _TASK)

    def task_name(self, dataset: DatasetRef) -> str:
        """The task's name in WebODM."""
        return self._config.task_name.format(dataset=dataset.name, target=self._target)

    async def project(self) -> int:
        """The project's id: the one configured, or the one of that name (made once)."""
        async with self._project_lock:
            if self._project is None:
                self._project = await self._find_project()
            return self._project

    async def _find_project(self) -> int:
        wanted = self._config.project
        if wanted.isdigit():
            try:
                await self._call("GET", f"/api/projects/{int(wanted)}/")
            except NotFoundError as exc:
                raise PermanentTargetError(
                    f"WebODM has no project {wanted} that user {self._config.username!r} can"
                    f" see: check [targets.{self._target}] project"
                ) from exc
            return int(wanted)
        # Looked up before made: a creation whose reply was lost is found here next time.
        rows = _rows(await self._call("GET", "/api/projects/", params={"name": wanted}))
        ids = sorted(row["id"] for row in rows if row.get("name") == wanted and "id" in row)
        if ids:
            return int(ids[0])
        made = await self._call("POST", "/api/projects/", json={"name": wanted})
        log.info("project created", project=wanted, id=made.get("id"))
        return int(made["id"])

    async def ready(self, dataset: DatasetRef) -> str:
        """``<project>/<task id>`` of the dataset's partial task, made once."""
        lock = self._locks.setdefault(dataset.id, asyncio.Lock())
        async with lock:
            task = self.current(dataset)
            if task is not None and self._state.get_memo(dataset.id, _COMMITTED) == task:
                self.start_over(dataset, f"task {task} was committed already")
                task = None
            if task is not None:
                return task
            project = await self.project()
            name = self.task_name(dataset)
            if self._state.get_memo(dataset.id, _CREATING) == name:
                found = await self._find_partial(project, name)
                if found is not None:
                    log.info("task found after a lost reply", dataset=dataset.name, task=found)
                    return self._adopt(dataset, f"{project}/{found}")
            return await self._create(dataset, project, name)

    async def _find_partial(self, project: int, name: str) -> str | None:
        rows = _rows(await self._call("GET", f"/api/projects/{project}/tasks/"))
        mine = [r for r in rows if r.get("name") == name and r.get("partial") and "id" in r]
        mine.sort(key=lambda r: str(r.get("created_at", "")))
        return str(mine[-1]["id"]) if mine else None

    async def _create(self, dataset: DatasetRef, project: int, name: str) -> str:
        body: dict[str, Any] = {
            "partial": True,
            "name": name,
            "options": [{"name": k, "value": v} for k, v in self._config.options.items()],
        }
        if self._config.processing_node is not None:
            body["processing_node"] = self._config.processing_node
            body["auto_processing_node"] = False
        # Before the request: a reply lost on the way is then looked for, not made again.
        self._state.put_memo(dataset.id, _CREATING, name)
        route = f"POST /api/projects/{project}/tasks/"
        try:
            made = await self._call("POST", f"/api/projects/{project}/tasks/", json=body)
        except NotFoundError as exc:
            self._project = None  # the project went away: looked up (or made) again
            raise TransientTargetError(f"{exc}; the project is looked up again") from exc
        except PermanentTargetError as exc:
            raise PermanentTargetError(
                f"{exc}; check [targets.{self._target}] options and processing_node"
            ) from exc
        task_id = made.get("id") if isinstance(made, dict) else None
        if task_id is None:
            raise TransientTargetError(f"{route}: no task id in the reply")
        log.info("task created", dataset=dataset.name, task=task_id, name=name)
        return self._adopt(dataset, f"{project}/{task_id}")

    def _adopt(self, dataset: DatasetRef, task: str) -> str:
        self._state.put_memo(dataset.id, _TASK, task)
        self._state.put_memo(dataset.id, _CREATING, None)
        return task

    def start_over(self, dataset: DatasetRef, reason: str) -> None:
        """Forget the dataset's task: the next upload makes a new one; sent files wait again.

        No await inside: no upload starts into the old task between the switch and the
        requeue.
        """
        old = self.current(dataset)
        self._state.put_memo(dataset.id, _TASK, None)
        self._state.put_memo(dataset.id, _CREATING, None)
        count = self._state.requeue_uploaded(dataset.id, reason)
        log.warning(
            "new task for the dataset",
            dataset=dataset.name,
            old_task=old,
            reason=reason,
            files_sent_again=count,
        )

    def lost(self, dataset: DatasetRef, task: str) -> None:
        """WebODM no longer has ``task`` (deleted there): the dataset starts over."""
        if self.current(dataset) == task:
            self.start_over(dataset, f"task {task} is no longer in WebODM")

    async def commit(self, dataset: DatasetRef, names: list[str]) -> str:
        """Commit the task holding the files sent as ``names``: WebODM starts processing.

        Raises :class:`DatasetResetError` when the task cannot be committed as it is (it was
        committed already, or misses a file): a new one is made and filled first.
        """
        task = self.current(dataset)
        if task is not None and self._state.get_memo(dataset.id, _COMMITTED) == task:
            # Processing again (after a failure): a new task; the failed one keeps its log.
            self.start_over(dataset, f"task {task} was processed already")
            raise DatasetResetError("a new task is made; the images are sent to it first")
        if task is None:
            raise DatasetResetError("no task yet; the images are sent to a new one first")
        sent = f"{task} sent"
        missing = [n for n in names if self._state.get_memo(dataset.id, file_memo(n)) != sent]
        if missing:
            self.start_over(dataset, f"{len(missing)} uploaded file(s) are not in task {task}")
            raise DatasetResetError("the task was incomplete; the images are sent again")
        path = f"/api/projects/{task.replace('/', '/tasks/')}/"
        try:
            await self._call("POST", f"{path}commit/")
        except NotFoundError as exc:
            self.lost(dataset, task)
            raise DatasetResetError(
                "the task is gone from WebODM; the images are sent again"
            ) from exc
        except TransientTargetError:
            # The commit may have arrived: a committed task is no longer partial.
            info = await self._call("GET", path)
            if not isinstance(info, dict) or info.get("partial") is not False:
                raise
            log.info("an earlier commit arrived", dataset=dataset.name, task=task)
        self._state.put_memo(dataset.id, _COMMITTED, task)
        return task
