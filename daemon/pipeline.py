"""The pipeline: sources -> hasher -> uploads -> processing, built in the order files flow.

Files flow one way. Each stage is built after the one it reads from and asks it only through
a small protocol of its own: the hasher's :class:`daemon.sources.hasher.Sources`, the
engine's :class:`daemon.upload.outcomes.Sources`. Two links carry the flow forward: stable
files go from the sources to the hasher (``release_to``: the hasher says how many it holds,
so a big card waits as paths), and ``work_due`` tells the engine the hasher recorded files.
Uploaded files free their copies in the spool, which lets files waiting for room go on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

from daemon.clock import Clock
from daemon.config import Settings
from daemon.events import Event
from daemon.journal import DatasetRow, FileRow, Journal
from daemon.notifications import Notifier
from daemon.processing import ProcessingController
from daemon.sources.hasher import Hasher
from daemon.sources.manager import SourceManager
from daemon.sources.roots import Root
from daemon.sources.spool import Spool
from daemon.targets.base import Target
from daemon.upload.engine import UploadEngine


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The stages of one session, and the spool they share."""

    sources: SourceManager
    hasher: Hasher
    engine: UploadEngine
    processing: ProcessingController
    spool: Spool | None


def build_pipeline(
    settings: Settings,
    journal: Journal,
    targets: dict[str, Target],
    clock: Clock,
    notifier: Notifier,
) -> Pipeline:
    """Every stage, connected: what a session runs."""
    spool = Spool(settings.spool, journal) if settings.spool.dir is not None else None
    if spool is not None:
        spool.recover()
    staging = _staging_spools(targets, journal)

    sources = SourceManager(
        settings.sources, journal, clock, on_removable=_card_removable(notifier)
    )

    work_due = asyncio.Event()  # hasher -> engine: files recorded, uploads may be due
    hasher = Hasher(
        journal,
        sources,
        clock,
        settings.upload.hash_workers,
        scope_of=_duplicate_scope(settings),
        on_recorded=work_due.set,
        spool=spool,
        staging=lambda dataset_id: staging.get(journal.dataset(dataset_id).target),
    )
    sources.release_to(hasher)

    engine = UploadEngine(
        journal,
        targets,
        settings.upload,
        clock,
        sources,
        wake=work_due,
        on_attention=_needs_attention(notifier),
        on_uploaded=_copy_remover(spool, staging, hasher),
    )

    def busy() -> set[int]:  # files still settling or being read: not quiet
        return sources.busy_datasets() | hasher.busy_datasets()

    def processing_event(event: str, dataset: DatasetRow, detail: str | None) -> None:
        state = journal.dataset(dataset.id).state
        notifier.send(Event(event, dataset.name, dataset.target, state, detail))

    processing = ProcessingController(
        journal,
        targets,
        clock,
        busy=busy,
        notify=processing_event,
        retry_s=settings.upload.backoff_initial_s,
        retry_max_s=settings.upload.backoff_max_s,
        stuck_s=settings.upload.stuck_s,
    )
    return Pipeline(sources, hasher, engine, processing, spool)


def _staging_spools(targets: dict[str, Target], journal: Journal) -> dict[str, Spool]:
    """The spool of each target that has a staging folder, by target name."""
    staging: dict[str, Spool] = {}
    for name, target in targets.items():
        if target.staging is not None:
            spool = Spool.for_staging(target.staging, journal)
            if spool is not None:
                spool.recover()
                staging[name] = spool
    return staging


def _duplicate_scope(settings: Settings) -> Callable[[str], str]:
    """Where a target's files count as duplicates of each other."""

    def scope_of(target: str) -> str:
        config = settings.targets.get(target)
        return config.duplicate_scope if config is not None else "target"

    return scope_of


def _card_removable(notifier: Notifier) -> Callable[[Root], None]:
    def removable(root: Root) -> None:
        notifier.send(
            Event(
                "card_removable",
                root.mapper.card.label,
                "",
                "removable",
                f"{root.volume}: every image is uploaded or copied; the card can be removed",
            )
        )

    return removable


def _needs_attention(notifier: Notifier) -> Callable[[DatasetRow, str], None]:
    def attention(dataset: DatasetRow, message: str) -> None:
        notifier.send(
            Event("needs_attention", dataset.name, dataset.target, dataset.state, message)
        )

    return attention


def _copy_remover(
    spool: Spool | None, staging: dict[str, Spool], hasher: Hasher
) -> Callable[[list[FileRow]], None]:
    """What frees uploaded files' copies in the spool or in a staging folder."""
    spools = {os.fsencode(s.folder) + b"/": s for s in [spool, *staging.values()] if s}

    def uploaded(rows: list[FileRow]) -> None:
        copies: dict[Spool, list[tuple[bytes, int]]] = {}
        for row in rows:
            if row.spool_path is None:
                continue
            holder = spools.get(row.spool_path.rpartition(b"/")[0] + b"/")
            if holder is not None:
                copies.setdefault(holder, []).append((row.spool_path, row.size))
        for holder, held in copies.items():
            holder.discard_all(held)  # mark_uploaded forgot them
            if holder is spool:
                hasher.space_freed()  # files waiting for room in the spool may go

    return uploaded
