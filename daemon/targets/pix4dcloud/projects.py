"""A dataset's PIX4Dcloud project: made once, found again after a lost reply, inputs registered.

The project id is kept in the journal: a restart resumes into the same project. What the API
leaves undocumented is not relied on (sources: the official demo client,
github.com/Pix4D/demo-pix4d-cloud-api, and developer.pix4d.com/cloud-api; neither says):

- **creating a project twice**: a POST whose reply is lost may have made the project. The
  journal records the attempt first; before creating again, the projects are listed (a
  Django REST Framework list: paged ``{"results", "next"}`` or a plain list, both read) and
  a project of this name that never started, made within five minutes of one of the
  attempts (the server's clock against the box's), is taken instead;
- **registering a key twice**: how ``nb_images_registered`` counts a key registered before
  is unknown (every key sent, or only keys new to the project). The journal records the
  keys of a batch before it is sent and, once a reply is clear, which keys are registered;
  only keys not registered for sure are sent again, and a count is read both ways: it may
  fall short of the batch by at most the keys an earlier, unclear attempt may have
  registered. The API has no documented call that lists a project's inputs, so a short
  count nothing explains is not retried: the dataset needs attention.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import structlog

from daemon.errors import PermanentTargetError, TransientTargetError
from daemon.targets.base import DatasetRef, TargetState
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.api import PROJECTS, Pix4DApi, project_path

log = structlog.get_logger("dronesync.pix4dcloud")

REGISTER_BATCH = 500
# Statuses of a project that was never started.
NEW = frozenset({"", "NEW", "CREATED"})
# A project found by name after a lost reply must have been made this close to one of this
# dataset's creation requests (the server's clock against the box's). Names repeat (another
# box, another client, a folder name used again): a project made at another moment is not
# ours, and a box whose clock is further off makes a new project rather than take another's.
_ADOPT_SKEW_S = 300.0
# Pages of the project list read when looking for a project made by a lost request.
_LIST_PAGES = 50

_PROJECT = "pix4d.project"
# Project creations sent whose reply was not clear: {"name", "at": [wall clock, ...]}.
_CREATING = "pix4d.creating"
# Keys sent to bulk_register whose reply was not clear (a JSON list).
_REGISTERING = "pix4d.registering"
# Keys registered for sure, one memo per batch (a JSON list each): "pix4d.registered.<n>".
_REGISTERED = "pix4d.registered."


class Projects:
    """The projects of one target's datasets, as the journal and the API know them."""

    def __init__(
        self, api: Pix4DApi, state: TargetState, config: Pix4DCloudTargetConfig, target: str
    ) -> None:
        self._api = api
        self._state = state
        self._config = config
        self._target = target
        self._locks: dict[int, asyncio.Lock] = {}

    def known(self, dataset: DatasetRef) -> int | None:
        """The dataset's project id, once created."""
        known = self._state.get_memo(dataset.id, _PROJECT)
        return None if known is None else int(known)

    async def id(self, dataset: DatasetRef) -> int:
        """The dataset's project id, creating the project first if needed."""
        lock = self._locks.setdefault(dataset.id, asyncio.Lock())
        async with lock:
            known = self.known(dataset)
            if known is not None:
                return known
            name = self._config.project_name.format(dataset=dataset.name, target=self._target)
            attempt = self._state.get_memo(dataset.id, _CREATING)
            sent = _attempts(attempt) if attempt is not None else []
            if sent:
                found = await self._find(name, sent)
                if found is not None:
                    self._state.put_memo(dataset.id, _PROJECT, str(found))
                    self._state.put_memo(dataset.id, _CREATING, None)
                    log.info(
                        "project found after a lost reply", dataset=dataset.name, project=found
                    )
                    return found
            # Recorded first: a reply lost from here on leaves a project to find, not to repeat.
            self._state.put_memo(
                dataset.id, _CREATING, json.dumps({"name": name, "at": [*sent, time.time()]})
            )
            body = await self._api.call("POST", PROJECTS, json={"name": name})
            project = body.get("id") if isinstance(body, dict) else None
            if not isinstance(project, int):
                raise TransientTargetError(f"POST {PROJECTS}: no project id")
            self._state.put_memo(dataset.id, _PROJECT, str(project))
            self._state.put_memo(dataset.id, _CREATING, None)
            log.info("project created", dataset=dataset.name, project=project)
            return project

    async def _find(self, name: str, sent: list[float]) -> int | None:
        """A project called ``name``, never started, made when one of ``sent`` was: ours.

        Of several (more than one reply lost), the newest; the others stay empty and are named
        in the log. The list's query parameters are undocumented: none is sent, and the pages
        are followed on this server only.
        """
        path: str | None = PROJECTS
        found: list[int] = []
        for _ in range(_LIST_PAGES):
            if path is None:
                break
            body = await self._api.call("GET", path)
            results, following = (body, None) if isinstance(body, list) else _page(body)
            for entry in results:
                project = await self._candidate(entry, name, sent)
                if project is not None:
                    found.append(project)
            path = self._api.route_of(following)
        if not found:
            return None
        found.sort()
        if len(found) > 1:
            log.warning("projects left empty by lost replies", name=name, projects=found[:-1])
        return found[-1]

    async def _candidate(self, entry: Any, name: str, sent: list[float]) -> int | None:
        """The id of a listed project that may be the one a lost reply made, else None."""
        if not isinstance(entry, dict) or entry.get("name") != name:
            return None
        project = entry.get("id")
        if not isinstance(project, int):
            return None
        made = _timestamp(entry.get("create_date"))
        if made is None or all(abs(made - at) > _ADOPT_SKEW_S for at in sent):
            return None  # made at another moment (or when, unknown): someone else's
        if "public_status" not in entry:  # a short listing: the project itself says
            entry = await self._api.call("GET", f"{project_path(project)}/")
        status = str(entry.get("public_status", "")).upper() if isinstance(entry, dict) else "?"
        return project if status in NEW else None

    async def register(self, dataset: DatasetRef, project: int, keys: list[str]) -> None:
        """Register every key not registered for sure yet, a batch at a time."""
        done: set[str] = set()
        for value in self._state.memos(dataset.id, _REGISTERED).values():
            done.update(json.loads(value))
        unclear = set(json.loads(self._state.get_memo(dataset.id, _REGISTERING) or "[]"))
        pending = [key for key in keys if key not in done]
        route = f"{project_path(project)}/inputs/bulk_register/"
        for start in range(0, len(pending), REGISTER_BATCH):
            batch = pending[start : start + REGISTER_BATCH]
            # Keys an earlier attempt may have registered: a server counting only new keys
            # does not count them again.
            before = set(unclear)
            maybe = len(before.intersection(batch))
            unclear.update(batch)
            self._state.put_memo(dataset.id, _REGISTERING, json.dumps(sorted(unclear)))
            try:
                body = await self._api.call("POST", route, json={"input_file_keys": batch})
            except PermanentTargetError:
                # Refused outright: this request registered nothing.
                self._state.put_memo(
                    dataset.id, _REGISTERING, json.dumps(sorted(before)) if before else None
                )
                raise
            count = body.get("nb_images_registered") if isinstance(body, dict) else None
            if not isinstance(count, int) or isinstance(count, bool):
                raise TransientTargetError("bulk_register: no count of images in the reply")
            # Recorded whatever the count: sending them again cannot make a count clearer.
            self._state.put_memo(dataset.id, f"{_REGISTERED}{len(done) + start}", json.dumps(batch))
            unclear.difference_update(batch)
            self._state.put_memo(
                dataset.id, _REGISTERING, json.dumps(sorted(unclear)) if unclear else None
            )
            if count < len(batch) - maybe:
                raise PermanentTargetError(
                    f"bulk_register: PIX4Dcloud registered {count} of {len(batch)} images;"
                    " open the project in PIX4Dcloud to see which are missing, then"
                    " `dronesync process` the dataset to start it with what is there"
                )
            if count != len(batch):
                log.info(
                    "bulk_register counted only images new to the project",
                    dataset=dataset.name,
                    sent=len(batch),
                    counted=count,
                )


def _page(body: Any) -> tuple[list[Any], Any]:
    """The entries of one page of a Django REST Framework list, and the next page's URL."""
    if not isinstance(body, dict):
        return [], None
    results = body.get("results")
    return (results if isinstance(results, list) else []), body.get("next")


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 date from the API (None: absent or unreadable)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _attempts(memo: str) -> list[float]:
    """When the recorded project creations were sent (wall clock)."""
    try:
        at = json.loads(memo).get("at")
    except (ValueError, AttributeError):
        return []
    values = at if isinstance(at, list) else [at]
    return [float(v) for v in values if isinstance(v, int | float)]
