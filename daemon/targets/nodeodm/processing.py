"""A committed task as the node reports it, and its outputs once it completed.

A task that failed or was cancelled on the node is shown with the node's message (or the end
of its output when it gives none). With ``download_dir`` set, a completed task's ``all.zip``
is saved there as ``DATASET.zip``.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import httpx

from daemon.errors import TargetError, TransientTargetError
from daemon.hashing import CHUNK
from daemon.targets.base import DatasetRef, ProcessingStatus
from daemon.targets.kit.http import status_error, transport_error
from daemon.targets.nodeodm.api import NodeAPI, RefusedError, check_reply

# Terminal colour sequences and other control characters in a task's output lines.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")
# Polls that may find the task unknown right after commit (the node is still moving the
# uploaded files into place) before the task counts as lost.
_UNKNOWN_POLLS = 20
# Lines of a failed task's output shown when the node gives no reason.
_OUTPUT_LINES = 8


class Processing:
    """Polls tasks on the node; saves a completed task's outputs."""

    def __init__(self, api: NodeAPI, download_dir: Path | None) -> None:
        self._api = api
        self._download_dir = download_dir
        self._unknown: dict[str, int] = {}

    async def status(
        self, dataset: DatasetRef, task: str, warning: str | None = None
    ) -> ProcessingStatus:
        """The task's status code, progress and error message, as the node reports them.

        ``warning`` is added to the detail while the task runs.
        """
        try:
            info = await self._api.call("GET", f"/task/{task}/info")
        except RefusedError as exc:
            seen = self._unknown[task] = self._unknown.get(task, 0) + 1
            if seen <= _UNKNOWN_POLLS:
                return ProcessingStatus("running", "the node is setting the task up")
            return ProcessingStatus("failed", f"the node no longer knows task {task}: {exc}")
        self._unknown.pop(task, None)
        status = info.get("status") if isinstance(info, dict) else None
        code = status.get("code") if isinstance(status, dict) else None
        progress = info.get("progress") if isinstance(info, dict) else None
        pct = float(progress) if isinstance(progress, int | float) else None
        message = status.get("errorMessage") if isinstance(status, dict) else None
        if code == 40:
            return await self._completed(dataset, task)
        if code == 30:
            reason = message or await self._output_tail(task)
            return ProcessingStatus("failed", f"the node failed the task: {reason}")
        if code == 50:
            return ProcessingStatus("failed", "the task was cancelled on the node")
        if code == 10:
            return ProcessingStatus("running", "queued on the node", pct)
        # 20, or a code this version does not know: still running.
        detail = "running on the node" + (f", {pct:.0f} %" if pct is not None else "")
        return ProcessingStatus("running", f"{detail}; {warning}" if warning else detail, pct)

    async def _output_tail(self, task: str) -> str:
        """The last lines of the task's output (``GET /task/{uuid}/output?line=-N``)."""
        try:
            lines = await self._api.call_list(f"/task/{task}/output", {"line": str(-_OUTPUT_LINES)})
        except TargetError:
            return "no reason given, and its output could not be read"
        text = " | ".join(clean for line in lines if (clean := _CONTROL.sub("", str(line)).strip()))
        if not text:
            return "no reason given, and its output is empty"
        return f"no reason given; its output ends: {text[-600:]}"

    async def _completed(self, dataset: DatasetRef, task: str) -> ProcessingStatus:
        folder = self._download_dir
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
            with self._api.client.stream("GET", f"/task/{task}/download/all.zip") as response:
                if response.status_code != 200:
                    raise status_error(route, response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    response.read()
                    check_reply(route, response)
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
