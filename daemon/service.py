"""The daemon: wiring, signals and the service manager.

One session owns every component (sources, hasher, upload engine, processing, requests, live
figures) in one set of tasks with one end event. SIGTERM/SIGINT end the session and the
process; SIGHUP ends the session and starts a new one on the re-read configuration (an invalid
file is reported and the old one kept). In-flight uploads go back to waiting when a session
ends; the journal is the only state that survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon import control, web
from daemon.clock import Clock, SystemClock, wait_event
from daemon.config import Settings, load_config, runtime_problems
from daemon.errors import ConfigError, DronesyncError, JournalError, UsageError
from daemon.journal import GROUP_COMMIT_S, DatasetRow, FileRow, Journal
from daemon.notifications import Event, Notifier
from daemon.notify import notify, watchdog_interval
from daemon.processing import ProcessingController
from daemon.sources.hasher import Hasher
from daemon.sources.manager import SourceManager
from daemon.sources.spool import Spool
from daemon.status import write_live
from daemon.targets.base import Target, TargetState
from daemon.targets.registry import build_target
from daemon.upload.engine import UploadEngine

log = structlog.get_logger("dronesync")

JOURNAL = "journal.sqlite3"
REQUEST_POLL_S = 0.3
STOP_TIMEOUT_S = 8.0
# A session that could not write its journal (disk full) is started again after this.
JOURNAL_RETRY_S = 10.0
RETRY_SESSION = -1
# A loop that has not turned for this long is stuck: the watchdog is no longer pinged.
HEALTH_S = 120.0

TargetFactory = Callable[[Settings, TargetState], dict[str, Target]]


def journal_path(settings: Settings) -> Path:
    """Where the journal of this configuration lives."""
    return settings.state_dir / JOURNAL


def default_targets(settings: Settings, state: TargetState) -> dict[str, Target]:
    """The targets named in the configuration."""
    return {
        name: build_target(name, config, settings.state_dir, state)
        for name, config in settings.targets.items()
    }


def _journal_error(exc: BaseException | None) -> JournalError | None:
    """The JournalError behind a component's failure (task groups wrap it), if that is it."""
    if isinstance(exc, JournalError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _journal_error(inner)
            if found is not None:
                return found
    return None


async def _commit_groups(journal: Journal) -> None:
    """Commit the journal's grouped writes a few times a second (and once more at the end)."""
    try:
        while True:
            await asyncio.sleep(GROUP_COMMIT_S)
            journal.flush()
    finally:
        with contextlib.suppress(JournalError):
            journal.flush()


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


def _file_path(row: FileRow) -> Path:
    """Where an upload reads the file: its copy in the spool, else the source itself."""
    if row.spool_path is not None:
        return Path(os.fsdecode(row.spool_path))
    return Path(os.fsdecode(os.fsencode(row.volume) + b"/" + row.relpath))


class Daemon:
    """``dronesync run``: everything, until a signal says stop."""

    def __init__(
        self,
        config_path: Path,
        settings: Settings,
        *,
        clock: Clock | None = None,
        target_factory: TargetFactory = default_targets,
    ) -> None:
        self._config_path = config_path
        self._settings = settings
        self._clock = clock or SystemClock()
        self._target_factory = target_factory
        self._stop = asyncio.Event()
        self._reload = False
        self._session_end = asyncio.Event()
        self._stuck: list[str] = []
        self._files_read = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        """Run sessions until stopped; the exit code for the process."""
        state_dir = self._settings.state_dir
        lock = control.DaemonLock(state_dir)
        if not lock.acquire():
            raise UsageError(f"{state_dir}: another dronesync daemon is using this state_dir")
        journal = Journal.open(state_dir / JOURNAL)
        recovered = journal.recover()
        if recovered:
            log.info("resumed after an interruption", files_back_to_waiting=recovered)
        journal.group_commits()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            while True:
                try:
                    code = await self._session(journal)
                except JournalError as exc:  # while setting a session up
                    log.error(  # noqa: TRY400 (an expected condition, said in one line)
                        "journal cannot be written; uploads wait and it is tried again",
                        error=str(exc),
                        retry_in_s=JOURNAL_RETRY_S,
                    )
                    code = RETRY_SESSION
                if code == RETRY_SESSION and not self._stop.is_set():
                    await wait_event(self._stop, JOURNAL_RETRY_S)
                    continue
                if code is not None or self._stop.is_set():
                    return max(code or 0, 0)
                self._apply_reload()
        finally:
            notify("STOPPING=1")
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            with contextlib.suppress(JournalError):
                journal.flush()
            journal.close()
            lock.release()
            # Figures for benchmarks and operators: a restart that re-read every file, or
            # a journal committing once per file, shows here.
            log.info("stopped", files_hashed=self._files_read, journal_commits=journal.commits)

    def stop(self) -> None:
        """End the daemon (SIGTERM)."""
        log.info("stopping")
        notify("STOPPING=1")
        self._stop.set()
        self._session_end.set()

    def reload(self) -> None:
        """Re-read the configuration (SIGHUP)."""
        log.info("reloading configuration", config=str(self._config_path))
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self._reload = True
        self._session_end.set()

    def _apply_reload(self) -> None:
        self._reload = False
        try:
            settings = load_config(self._config_path)
            problems = runtime_problems(self._config_path, settings)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            for line in exc.problems:
                log.error(  # noqa: TRY400 (an expected problem: one line, no traceback)
                    "configuration not reloaded; keeping the running one", problem=line
                )
            return
        if settings.state_dir != self._settings.state_dir:
            log.error("state_dir cannot change on reload; restart the service to move it")
            settings = settings.model_copy(update={"state_dir": self._settings.state_dir})
        self._settings = settings
        log.info("configuration reloaded")

    # -- one session -----------------------------------------------------------------------

    async def _session(self, journal: Journal) -> int | None:
        settings = self._settings
        self._session_end.clear()
        targets = self._target_factory(settings, journal)
        self._refresh_dataset_settings(journal, settings)
        journal.make_due()
        engine: UploadEngine
        notifier = Notifier(settings.notifications)
        spool = Spool(settings.spool, journal) if settings.spool.dir is not None else None
        if spool is not None:
            spool.recover()
        staging = _staging_spools(targets, journal)
        sources = SourceManager(
            settings.sources,
            journal,
            self._clock,
            on_ready=lambda c: hasher.submit(c),  # noqa: PLW0108 (hasher is built next)
            reading=lambda: hasher.pending,
            on_removable=lambda root: notifier.send(
                Event(
                    "card_removable",
                    root.mapper.card.label,
                    "",
                    "removable",
                    f"{root.volume}: every image is uploaded or copied; the card can be removed",
                )
            ),
        )
        hasher = Hasher(
            journal,
            sources,
            self._clock,
            settings.upload.hash_workers,
            scope_of=lambda t: (
                settings.targets[t].duplicate_scope if t in settings.targets else "target"
            ),
            on_recorded=lambda: engine.wake(),  # noqa: PLW0108 (engine is built next)
            spool=spool,
            staging=lambda dataset_id: staging.get(journal.dataset(dataset_id).target),
        )

        engine = UploadEngine(
            journal,
            targets,
            settings.upload,
            self._clock,
            locate=_file_path,
            source_online=sources.is_online,
            on_changed=lambda row: sources.offer_again(row.id, row.volume, row.relpath),
            on_attention=lambda ds, message: notifier.send(
                Event("needs_attention", ds.name, ds.target, ds.state, message)
            ),
            on_uploaded=_copy_remover(spool, staging, hasher),
        )
        processing = ProcessingController(
            journal,
            targets,
            self._clock,
            busy=lambda: sources.busy_datasets() | hasher.busy_datasets(),
            notify=lambda event, ds, detail: notifier.send(
                Event(event, ds.name, ds.target, journal.dataset(ds.id).state, detail)
            ),
            retry_s=settings.upload.backoff_initial_s,
            retry_max_s=settings.upload.backoff_max_s,
            stuck_s=settings.upload.stuck_s,
        )
        tasks = [
            asyncio.create_task(sources.run(self._session_end), name="sources"),
            asyncio.create_task(engine.run(), name="upload"),
            asyncio.create_task(processing.run(), name="processing"),
            asyncio.create_task(self._requests(journal, engine, processing), name="requests"),
            asyncio.create_task(
                self._live(journal, engine, sources, spool, processing), name="live"
            ),
            asyncio.create_task(notifier.run(), name="notifications"),
            asyncio.create_task(_commit_groups(journal), name="journal"),
        ]
        # The status page (daemon/web): one more task of the session, on its own.
        tasks.append(
            asyncio.create_task(
                web.serve(settings.web, settings.state_dir, journal.path), name="web"
            )
        )
        ready = asyncio.create_task(self._announce_ready(sources), name="ready")
        end = asyncio.create_task(self._session_end.wait(), name="end")
        code: int | None = None
        try:
            done, _ = await asyncio.wait([*tasks, end], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not end and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    full = _journal_error(exc)
                    if full is not None:
                        # A full disk is not a crash: say it once, wait for space, go on.
                        log.error(
                            "journal cannot be written; uploads wait and it is tried again",
                            error=str(full),
                            retry_in_s=JOURNAL_RETRY_S,
                        )
                        code = RETRY_SESSION
                        continue
                    log.error(
                        "component failed; stopping",
                        component=task.get_name(),
                        error=str(exc),
                        exc_info=exc,
                    )
                    code = 1
        finally:
            for task in [*tasks, end, ready]:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*tasks, end, ready, return_exceptions=True), STOP_TIMEOUT_S
                )
            await hasher.aclose()
            self._files_read += hasher.files_read
            for target in targets.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(target.aclose(), STOP_TIMEOUT_S)
            try:
                journal.recover()  # anything still marked uploading goes back to waiting
            except JournalError as exc:
                log.error("journal cannot be written", error=str(exc))  # noqa: TRY400 (expected)
        return code

    async def _announce_ready(self, sources: SourceManager) -> None:
        await sources.first_scan_done.wait()
        notify("READY=1", "STATUS=first scan done")
        log.info("ready", config=str(self._config_path))

    @staticmethod
    def _refresh_dataset_settings(journal: Journal, settings: Settings) -> None:
        by_source = {str(s.path): s for s in settings.sources}
        for dataset in journal.datasets():
            source = by_source.get(dataset.source)
            if source is None or dataset.state not in ("collecting", "ready", "paused"):
                continue
            if (source.auto_process, source.quiet_s) != (dataset.auto_process, dataset.quiet_s):
                journal.set_dataset_settings(
                    dataset.id, auto_process=source.auto_process, quiet_s=source.quiet_s
                )

    # -- operator requests -----------------------------------------------------------------

    async def _requests(
        self, journal: Journal, engine: UploadEngine, processing: ProcessingController
    ) -> None:
        state_dir = self._settings.state_dir
        while True:
            for request in control.pending(state_dir):
                try:
                    message = self._apply(request, journal, engine, processing)
                except DronesyncError as exc:
                    message = f"not done: {exc}"
                log.info(
                    "request applied",
                    action=request.action,
                    dataset=request.dataset,
                    result=message,
                )
                control.answer(request, message)
            await asyncio.sleep(REQUEST_POLL_S)

    def _apply(
        self,
        request: control.Request,
        journal: Journal,
        engine: UploadEngine,
        processing: ProcessingController,
    ) -> str:
        dataset: DatasetRow | None = None
        if request.dataset is not None:
            dataset = journal.dataset_by_name(request.dataset)
            if dataset is None:
                raise UsageError(f"no dataset named {request.dataset!r}")
        if request.action == "retry":
            return self._retry(journal, engine, dataset)
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
        return processing.process_now(dataset, lambda ds: journal.follow_up(ds, self._clock.time()))

    @staticmethod
    def _retry(journal: Journal, engine: UploadEngine, dataset: DatasetRow | None) -> str:
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

    # -- live figures, STATUS= and the watchdog -------------------------------------------

    async def _live(
        self,
        journal: Journal,
        engine: UploadEngine,
        sources: SourceManager,
        spool: Spool | None,
        processing: ProcessingController,
    ) -> None:
        interval = 1.0
        ping = watchdog_interval()
        last_ping = 0.0
        while True:
            engine.meter.sample(interval)
            in_flight = engine.in_flight()
            live = {
                "updated_at": self._clock.time(),
                "pid": os.getpid(),
                "datasets": {
                    str(ds): {
                        "rate_bps": engine.meter.rates.get(ds, 0.0),
                        "in_flight_bytes": in_flight.get(ds, 0),
                    }
                    for ds in set(engine.meter.rates) | set(in_flight)
                },
                "cards": sources.cards(),
            }
            if spool is not None:
                live["spool"] = {
                    "path": str(spool.folder),
                    "used_bytes": spool.used,
                    "full": spool.full_message,
                }
            with contextlib.suppress(OSError):
                write_live(self._settings.state_dir, live)
            notify(f"STATUS={self._status_line(journal, engine, sources.cards())}")
            now = self._clock.monotonic()
            beats = {
                "sources": sources.last_tick,
                "upload": engine.last_tick,
                "processing": processing.last_tick,
            }
            stuck = sorted(name for name, beat in beats.items() if now - beat > HEALTH_S)
            if stuck != self._stuck:
                self._stuck = stuck
                if stuck:
                    log.error("not healthy; watchdog pings stop", stuck=stuck)
            # Pinging only while every loop turns lets systemd restart a daemon that hangs.
            if ping is not None and not stuck and now - last_ping >= ping:
                notify("WATCHDOG=1")
                last_ping = now
            await asyncio.sleep(interval)

    @staticmethod
    def _status_line(journal: Journal, engine: UploadEngine, cards: list[dict[str, object]]) -> str:
        counts = journal.counts()
        waiting = sum(c.files["waiting"] + c.files["uploading"] for c in counts.values())
        failed = sum(c.files["failed"] for c in counts.values())
        rate = sum(engine.meter.rates.values())
        line = (
            f"{len(counts)} datasets, {waiting} files to upload, {failed} failed,"
            f" {rate / 1e6:.1f} MB/s"
        )
        removable = [str(card["label"]) for card in cards if card["removable"]]
        if removable:
            line += f"; card {', '.join(removable)} can be removed"
        return line
