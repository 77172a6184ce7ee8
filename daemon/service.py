"""The daemon: sessions, signals and the service manager.

One session runs the pipeline (:mod:`daemon.pipeline`: sources, hasher, upload engine,
processing), the operator requests and the live figures in one set of tasks with one end
event. SIGTERM/SIGINT end the session and the
process; SIGHUP ends the session and starts a new one on the re-read configuration (an invalid
file is reported and the old one kept). In-flight uploads go back to waiting when a session
ends; the journal is the only state that survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon import control, web
from daemon.clock import Clock, SystemClock, wait_event
from daemon.config import Settings, load_checked, runtime_problems
from daemon.configfile import remember
from daemon.errors import ConfigError, JournalError, UsageError
from daemon.journal import GROUP_COMMIT_S, JOURNAL_NAME, Journal
from daemon.live import Live
from daemon.notifications import Notifier
from daemon.notify import notify
from daemon.pipeline import Pipeline, build_pipeline
from daemon.requests import Requests
from daemon.status import mark_stopping
from daemon.targets.base import Target, TargetState
from daemon.targets.registry import build_target

log = structlog.get_logger("dronesync")

JOURNAL = JOURNAL_NAME
STOP_TIMEOUT_S = 8.0
# A session that could not write its journal (disk full) is started again after this.
JOURNAL_RETRY_S = 10.0
RETRY_SESSION = -1

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


async def _commit_groups(journal: Journal, clock: Clock) -> None:
    """Commit the journal's grouped writes a few times a second (and once more at the end)."""
    try:
        while True:
            await clock.sleep(GROUP_COMMIT_S)
            journal.flush()
    finally:
        with contextlib.suppress(JournalError):
            journal.flush()


class Daemon:
    """``dronesync run``: everything, until a signal says stop."""

    def __init__(
        self,
        config_path: Path,
        settings: Settings,
        *,
        clock: Clock | None = None,
        target_factory: TargetFactory = default_targets,
        checked: str | None = None,
    ) -> None:
        self._config_path = config_path
        self._settings = settings
        self._checked = checked
        self._clock = clock or SystemClock()
        self._target_factory = target_factory
        self._stop = asyncio.Event()
        self._reload = False
        self._session_end = asyncio.Event()
        self._live = Live(settings.state_dir, self._clock)
        self._files_read = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        """Run sessions until stopped; the exit code for the process."""
        state_dir = self._settings.state_dir
        lock = control.DaemonLock(state_dir)
        if not lock.acquire():
            raise UsageError(f"{state_dir}: another dronesync daemon is using this state_dir")
        if self._checked is not None:
            remember(state_dir, self._checked)  # `status` may now skip the settings model
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
                    await wait_event(self._stop, JOURNAL_RETRY_S, self._clock)
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
        mark_stopping(self._settings.state_dir)  # `status` stops showing a rate at once
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
            settings, checked = load_checked(self._config_path)
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
        else:
            remember(settings.state_dir, checked)
        self._settings = settings
        log.info("configuration reloaded")

    # -- one session -----------------------------------------------------------------------

    async def _session(self, journal: Journal) -> int | None:
        settings = self._settings
        self._session_end.clear()
        targets = self._target_factory(settings, journal)
        self._refresh_dataset_settings(journal, settings)
        journal.make_due()
        notifier = Notifier(settings.notifications, state_dir=settings.state_dir)
        pipeline = build_pipeline(settings, journal, targets, self._clock, notifier)
        requests = Requests(
            settings.state_dir, journal, pipeline.engine, pipeline.processing, self._clock
        )
        tasks = [
            asyncio.create_task(pipeline.sources.run(self._session_end), name="sources"),
            asyncio.create_task(pipeline.engine.run(), name="upload"),
            asyncio.create_task(pipeline.processing.run(), name="processing"),
            asyncio.create_task(requests.run(), name="requests"),
            asyncio.create_task(self._live.run(journal, pipeline), name="live"),
            asyncio.create_task(notifier.run(), name="notifications"),
            asyncio.create_task(_commit_groups(journal, self._clock), name="journal"),
        ]
        # The status page (daemon/web): one more task of the session, on its own.
        tasks.append(
            asyncio.create_task(
                web.serve(settings.web, settings.state_dir, journal.path), name="web"
            )
        )
        ready = asyncio.create_task(self._announce_ready(pipeline), name="ready")
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
            await pipeline.hasher.aclose()
            self._files_read += pipeline.hasher.files_read
            for target in targets.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(target.aclose(), STOP_TIMEOUT_S)
            try:
                journal.recover()  # anything still marked uploading goes back to waiting
            except JournalError as exc:
                log.error("journal cannot be written", error=str(exc))  # noqa: TRY400 (expected)
        return code

    async def _announce_ready(self, pipeline: Pipeline) -> None:
        await pipeline.sources.first_scan_done.wait()
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
