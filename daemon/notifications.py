"""Notifications: a webhook, a command and e-mail told when a dataset starts, ends or needs help.

Events are queued and delivered by one background task, in order, each retried with backoff
up to ``attempts`` times. A failed delivery is logged and never stops the daemon, and the
webhook URL is never logged (it may carry a token). E-mail goes its own way beside them
(``daemon.mail``): a message per event or a daily digest.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon.config import NotificationsConfig
from daemon.events import Event
from daemon.upload.retry import Backoff

if TYPE_CHECKING:
    import httpx

    from daemon.mail import Mailer

log = structlog.get_logger("dronesync.notifications")

QUEUE_LIMIT = 1000


class Notifier:
    """Delivers events to the configured webhook and command, retrying, never raising."""

    def __init__(
        self,
        config: NotificationsConfig,
        rng: random.Random | None = None,
        *,
        state_dir: Path | None = None,
    ) -> None:
        self.config = config
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self._backoff = Backoff(1.0, 60.0, rng or random.Random())  # noqa: S311 (jitter)
        self.delivered = 0
        self.dropped = 0
        self.mailer: Mailer | None = None
        if config.email is not None:
            from daemon.mail import Mailer  # noqa: PLC0415 (smtplib only when mail is set)

            # The digest's events are kept in state_dir, across restarts and reloads.
            self.mailer = Mailer(
                config.email,
                attempts=config.attempts,
                timeout_s=config.timeout_s,
                state_dir=state_dir,
            )

    @property
    def enabled(self) -> bool:
        """Whether anything is configured to receive events."""
        return bool(self.config.webhook_url or self.config.command or self.mailer)

    def send(self, event: Event) -> None:
        """Queue ``event`` if it is one of the configured events (never blocks)."""
        if event.event not in self.config.events:
            return
        if self.mailer is not None:
            self.mailer.send(event)
        if not (self.config.webhook_url or self.config.command):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("notification dropped: too many queued", notify_event=event.event)

    async def run(self) -> None:
        """Deliver queued events until cancelled (never returns before)."""
        async with asyncio.TaskGroup() as group:
            if self.mailer is not None:
                group.create_task(self.mailer.run(), name="mail")
            group.create_task(self._run_hooks(), name="hooks")

    async def _run_hooks(self) -> None:
        # Runs until cancelled even with nothing to deliver: a component of the session that
        # returns ends the session.
        if not self.config.webhook_url:
            while True:
                await self._deliver(None, await self._queue.get())
        # httpx and a client (its TLS context alone is a quarter of a CPU-second) only for a
        # webhook: on a small box they would delay the first card by a second or two.
        import httpx  # noqa: PLC0415

        async with httpx.AsyncClient(timeout=self.config.timeout_s) as client:
            while True:
                event = await self._queue.get()
                await self._deliver(client, event)

    async def _deliver(self, client: httpx.AsyncClient | None, event: Event) -> None:
        document = event.document()
        # A receiver that got the event is not sent it again when the other one failed.
        pending = {"webhook"} if self.config.webhook_url else set()
        if self.config.command:
            pending.add("command")
        for attempt in range(1, self.config.attempts + 1):
            error = await self._attempt(client, event, document, pending)
            if error is None:
                self.delivered += 1
                log.info("notification sent", notify_event=event.event, dataset=event.dataset)
                return
            if attempt == self.config.attempts:
                self.dropped += 1
                log.warning(
                    "notification not delivered; giving up",
                    notify_event=event.event,
                    dataset=event.dataset,
                    attempts=attempt,
                    error=error,
                )
                return
            delay = self._backoff.delay(attempt)
            log.info(
                "notification failed; retrying",
                notify_event=event.event,
                dataset=event.dataset,
                retry_in_s=round(delay, 1),
                error=error,
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        client: httpx.AsyncClient | None,
        event: Event,
        document: dict[str, Any],
        pending: set[str],
    ) -> str | None:
        """Try each receiver still pending once; the first error, or None when all got it."""
        if "webhook" in pending and self.config.webhook_url:
            import httpx  # noqa: PLC0415 (loaded by _run_hooks already)

            assert client is not None  # noqa: S101 (made by _run_hooks for a webhook)
            try:
                response = await client.post(self.config.webhook_url, json=document)
            except httpx.TransportError as exc:
                return f"webhook: {type(exc).__name__}: {exc}"
            if response.status_code >= 300:
                return f"webhook: HTTP {response.status_code}"
            pending.discard("webhook")
        if "command" in pending:
            error = await self._run_command(event, document)
            if error is not None:
                return error
            pending.discard("command")
        return None

    async def _run_command(self, event: Event, document: dict[str, Any]) -> str | None:
        assert self.config.command is not None  # noqa: S101 (checked by the caller)
        env = {
            **os.environ,
            "DRONESYNC_EVENT": event.event,
            "DRONESYNC_DATASET": event.dataset,
            "DRONESYNC_DETAIL": event.detail or "",
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *self.config.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return f"command {self.config.command[0]!r}: {exc.strerror}"
        try:
            _, err = await asyncio.wait_for(
                process.communicate(json.dumps(document).encode()), self.config.timeout_s
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            return f"command ran past {self.config.timeout_s:g} s"
        if process.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return f"command exited {process.returncode}: {tail[0][:200]}"
        return None
