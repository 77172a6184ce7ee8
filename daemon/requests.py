"""Operator requests: ``dronesync process``, ``retry`` and ``cancel``, applied by the daemon.

The CLI leaves a request in the state folder (:mod:`daemon.control`); the running daemon
takes it up within a fraction of a second, applies it to the journal and the running stages,
and answers it.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from daemon import control
from daemon.clock import Clock
from daemon.errors import DronesyncError, UsageError
from daemon.journal import DatasetRow, Journal
from daemon.processing import ProcessingController
from daemon.upload.engine import UploadEngine

log = structlog.get_logger("dronesync")

REQUEST_POLL_S = 0.3


class Requests:
    """Applies the requests left in ``state_dir`` to one session's stages."""

    def __init__(
        self,
        state_dir: Path,
        journal: Journal,
        engine: UploadEngine,
        processing: ProcessingController,
        clock: Clock,
    ) -> None:
        self._state_dir = state_dir
        self._journal = journal
        self._engine = engine
        self._processing = processing
        self._clock = clock

    async def run(self) -> None:
        """Take up requests until cancelled."""
        while True:
            for request in control.pending(self._state_dir):
                try:
                    message = self.apply(request)
                except DronesyncError as exc:
                    message = f"not done: {exc}"
                log.info(
                    "request applied",
                    action=request.action,
                    dataset=request.dataset,
                    result=message,
                )
                control.answer(request, message)
            await self._clock.sleep(REQUEST_POLL_S)

    def apply(self, request: control.Request) -> str:
        """Apply one request; the answer for the operator."""
        journal, engine = self._journal, self._engine
        dataset: DatasetRow | None = None
        if request.dataset is not None:
            dataset = journal.dataset_by_name(request.dataset)
            if dataset is None:
                raise UsageError(f"no dataset named {request.dataset!r}")
        if request.action == "retry":
            return self._retry(dataset)
        assert dataset is not None  # noqa: S101 (the CLI requires a dataset for these)
        if request.action == "cancel":
            if dataset.state in ("processing", "processed"):
                raise UsageError(f"{dataset.name}: {dataset.state}; nothing left to cancel")
            journal.set_dataset_state(
                dataset.id, "cancelled", "cancelled by the operator; `dronesync retry` resumes"
            )
            engine.cancel_dataset(dataset.id, "cancelled by the operator")
            return f"{dataset.name}: cancelled; uploaded files stay uploaded"
        engine.cancel_dataset(dataset.id, "processing started by hand")
        return self._processing.process_now(
            dataset, lambda ds: journal.follow_up(ds, self._clock.time())
        )

    def _retry(self, dataset: DatasetRow | None) -> str:
        journal, engine = self._journal, self._engine
        if dataset is None:
            count = journal.retry_failed(None)
            engine.retried(None)
            return f"{count} failed file(s) back to waiting"
        note = ""
        if dataset.state == "cancelled":
            journal.set_dataset_state(dataset.id, "collecting", "resumed by the operator")
            note = "; dataset resumed"
        elif dataset.state == "failed":
            note = "; its processing failed: `dronesync process` runs it again"
        count = journal.retry_failed(dataset.id)
        engine.retried(dataset.id)
        return f"{dataset.name}: {count} failed file(s) back to waiting{note}"
