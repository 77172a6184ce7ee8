"""What becomes of a file after an upload attempt: recorded, parked, failed or given back.

Every outcome is written to the journal and said in one log event. A transient failure parks
the file with ``next_attempt_at`` (tier 2); a permanent one, or attempts spent, fails it, and
the first failed file of a dataset asks for attention. A paused target (sign-in needed) holds
its files without spending attempts, until an upload goes through again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import structlog

from daemon.clock import Clock
from daemon.config import UploadSettings
from daemon.errors import (
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TargetError,
    TargetPausedError,
    TargetWaitError,
    TransientTargetError,
)
from daemon.journal import DatasetRow, FileRow, Journal
from daemon.targets.base import UploadItem
from daemon.upload.retry import Backoff

log = structlog.get_logger("dronesync.upload")

# A paused target (sign-in needed) is tried again this often, or at once after a reload.
PAUSE_S = 60.0
# The journal memo that says a dataset's detail is a pause's message: the first upload after
# it clears the message, even in an engine built later (a reload, a restart).
PAUSED_MEMO = "upload.paused"


class Sources(Protocol):
    """What the uploads ask of the sources their files come from."""

    def is_online(self, volume: str) -> bool:
        """Whether the folder or card holding ``volume`` is present now."""

    def offer_again(self, file_id: int, volume: str, relpath: bytes) -> None:
        """The file changed since it was hashed: watch it until it is stable again."""


class StalledError(TransientTargetError):
    """A transfer made no progress for ``stall_s``: transient."""


class AbortedError(TargetError):
    """The engine aborted the transfer (dataset cancelled): not the file's fault."""


class Outcomes:
    """Settles each attempt's outcome in the journal, the log and the attention calls."""

    def __init__(
        self,
        journal: Journal,
        settings: UploadSettings,
        clock: Clock,
        backoff: Backoff,
        sources: Sources,
        on_attention: Callable[[DatasetRow, str], None] | None = None,
    ) -> None:
        self._journal = journal
        self._settings = settings
        self._clock = clock
        self.backoff = backoff
        self._sources = sources
        self._on_attention = on_attention or (lambda dataset, message: None)
        # One query, not one per dataset the journal has known in a year of cards.
        self._paused = journal.memo_of_every_dataset(PAUSED_MEMO)
        # Datasets whose failed files were told (needs_attention), until its failed files
        # are retried: one notification per dataset, not one per file.
        self._told_failed: set[int] = set()

    def retried(self, dataset_id: int | None) -> None:
        """Failed files were put back (one dataset's, or all): a new failure is told again."""
        if dataset_id is None:
            self._told_failed.clear()
        else:
            self._told_failed.discard(dataset_id)

    def uploaded(
        self, row: FileRow, dataset: DatasetRow, item: UploadItem, key: bytes, attempts: int
    ) -> None:
        """Say that a file recorded as uploaded is; a paused dataset is signed in again."""
        message = self._paused.pop(dataset.id, None)
        if message is not None:  # signed in again
            if self._journal.dataset(dataset.id).detail == message:
                self._journal.set_dataset_detail(dataset.id, None)
            self._journal.put_memo(dataset.id, PAUSED_MEMO, None)
            log.info("target resumed", dataset=dataset.name, target=dataset.target)
        log.info(
            "file uploaded",
            dataset=dataset.name,
            **where(row, item),
            sha256=item.sha256,
            bytes=item.size,
            attempt=attempts,
            key=os.fsdecode(key),
        )

    def not_durable(
        self, row: FileRow, dataset: DatasetRow, item: UploadItem, exc: TargetError, attempts: int
    ) -> None:
        """The target could not make a batch durable: its files count a failed attempt."""
        if isinstance(exc, PermanentTargetError) or attempts >= self._settings.attempts:
            self.fail(row, dataset, item, str(exc), attempts)
            return
        delay = self.backoff.delay(max(attempts, 1), exc.retry_after)
        self.park(row, dataset.name, item, exc, attempts, delay)

    def park(
        self,
        row: FileRow,
        dataset: str,
        item: UploadItem,
        exc: TargetError,
        attempts: int,
        delay: float,
    ) -> None:
        """A transient failure: the file waits in the journal for ``delay`` seconds."""
        self._journal.mark_retry(row.id, str(exc), self._clock.time() + delay)
        log.info(
            "upload parked",
            dataset=dataset,
            **where(row, item),
            attempt=attempts,
            retry_in_s=round(delay, 1),
            error=str(exc),
        )

    def settle(
        self,
        row: FileRow,
        dataset: DatasetRow,
        item: UploadItem,
        exc: SourceError | TargetError,
        attempts: int,
    ) -> None:
        """An attempt that ended in a way retrying at once cannot help."""
        if isinstance(exc, FileChangedError):
            self._journal.rehash(row.id, str(exc))
            self._sources.offer_again(row.id, row.volume, row.relpath)
            log.info("file changed; waiting for it to settle", **where(row, item))
        elif isinstance(exc, SourceError):
            self._source_failed(row, dataset, item, exc, attempts)
        elif isinstance(exc, PermanentTargetError):
            self.fail(row, dataset, item, str(exc), attempts)
        elif isinstance(exc, TargetWaitError):
            # The target holds the dataset back a while (nothing was sent): no attempt spent.
            self._journal.release(row.id)
            wait = max(exc.retry_after or 0.0, 1.0)
            self._journal.mark_retry(row.id, str(exc), self._clock.time() + wait)
        elif isinstance(exc, TargetPausedError):
            # Nothing can go until the operator acts: wait without using up attempts.
            self._journal.release(row.id)
            self._journal.mark_retry(row.id, str(exc), self._clock.time() + PAUSE_S)
            if self._paused.get(dataset.id) != str(exc):
                self._paused[dataset.id] = str(exc)
                self._journal.put_memo(dataset.id, PAUSED_MEMO, str(exc))
                self._journal.set_dataset_detail(dataset.id, str(exc))
                log.warning("target paused", dataset=dataset.name, reason=str(exc))
                self._on_attention(dataset, str(exc))
        else:  # the engine aborted the transfer (cancel): not the file's fault
            self._journal.release(row.id)

    def _source_failed(
        self, row: FileRow, dataset: DatasetRow, item: UploadItem, exc: SourceError, attempts: int
    ) -> None:
        if row.spool_path is not None:
            # The spool's copy is unreadable (deleted, a disk error): the card has the file.
            self._journal.set_spool(row.id, None)
            self.fail(row, dataset, item, f"{exc}; `dronesync retry` reads it from the card", 1)
            return
        if not self._sources.is_online(row.volume):
            # The card was pulled or the share went away: not the file's fault.
            self._journal.release(row.id)
            log.info("upload paused: source offline", dataset=dataset.name, **where(row, item))
            return
        self.fail(row, dataset, item, str(exc), attempts)

    def fail(
        self, row: FileRow, dataset: DatasetRow, item: UploadItem, error: str, attempts: int
    ) -> None:
        """The file is failed; the first failure of a dataset sends ``needs_attention``."""
        self._journal.mark_failed(row.id, error)
        log.warning(
            "file failed", dataset=dataset.name, **where(row, item), attempt=attempts, error=error
        )
        if dataset.id not in self._told_failed:
            self._told_failed.add(dataset.id)
            self._on_attention(
                dataset, f"{_text(row.dspath)} failed: {error}; `dronesync retry` it"
            )


def _text(raw: bytes) -> str:
    """A path for people: undecodable bytes shown as escapes, never an error."""
    return raw.decode("utf-8", "backslashreplace")


def where(row: FileRow, item: UploadItem) -> dict[str, str]:
    """A file as log events name it: its source path, and the copy read when it is one."""
    fields = {"file": _text(os.fsencode(row.volume) + b"/" + row.relpath)}
    if item.spooled:
        fields["copy"] = str(item.path)
    return fields
