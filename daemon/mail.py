"""E-mail notifications: a short message per event, or one digest a day, sent through SMTP.

smtplib runs in a worker thread, one connection per message. A failed delivery is retried with
the webhook's backoff up to ``[notifications] attempts`` times, then logged and dropped; it
never stops the daemon. A digest gathers events in ``<state_dir>/mail-digest.jsonl`` (so a
restart or a reload keeps them) and is sent at ``digest_hour``, or at start when that hour
passed while the daemon was stopped; one that cannot be delivered waits for the next day's.
The password is read from its file or credential at each delivery and never logged.
"""

from __future__ import annotations

import asyncio
import json
import random
import smtplib
import socket
import ssl
import time
from collections import Counter
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import structlog

from daemon.clock import Clock, SystemClock, wait_event
from daemon.config import EmailConfig
from daemon.errors import ConfigError
from daemon.events import Event
from daemon.secrets import read_secret, secret_path
from daemon.status import printable
from daemon.upload.retry import Backoff

log = structlog.get_logger("dronesync.mail")

QUEUE_LIMIT = 1000
DIGEST_FILE = "mail-digest.jsonl"
DIGEST_LIMIT = 1000  # events kept for one digest; a box that cannot mail for weeks stays bounded
RECHECK_S = 60.0  # a digest wait also ends this often: the wall clock may have been set

_DIGEST_WORDS = {
    "processing_started": "uploaded",
    "processing_finished": "processed",
    "processing_failed": "failed",
    "needs_attention": "need attention",
    "card_removable": "cards removable",
}


def summary(event: Event) -> str:
    """What happened, in a few words naming the dataset: the subject of its message."""
    name = printable(event.dataset)
    if event.event == "card_removable":
        return f"card {name} can be removed"
    what = {
        "processing_started": "uploaded, processing started",
        "processing_finished": "processing finished",
        "processing_failed": "processing failed",
        "needs_attention": "needs attention",
    }.get(event.event, event.event.replace("_", " "))
    return f"{name}: {what}"


def sentence(event: Event) -> str:
    """The event told in one or two sentences, as the body of its message says it."""
    name, target = printable(event.dataset), printable(event.target)
    detail = printable(event.detail or "")
    if event.event == "processing_started":
        return f"Every file of {name} is uploaded to {target}, and its processing has started."
    if event.event == "processing_finished":
        return f"Processing of {name} on {target} has finished. {detail}".rstrip()
    if event.event == "processing_failed":
        reason = detail or "no reason given"
        return (
            f"Processing of {name} on {target} failed: {reason}\n"
            f"`dronesync process {name}` runs it again."
        )
    if event.event == "needs_attention":
        return f"{name} needs attention: {detail}"
    if event.event == "card_removable":
        return detail or f"Card {name}: every image is uploaded or copied; it can be removed."
    return f"{summary(event)}. {detail}".rstrip()


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def _message(config: EmailConfig, host: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=host or "dronesync.invalid")
    message.set_content(body)
    return message


def compose(config: EmailConfig, host: str, event: Event) -> EmailMessage:
    """The message telling one event."""
    footer = f"dronesync on {host}, {_when(event.at)}."
    if event.event != "card_removable":
        footer += f" `dronesync status {printable(event.dataset)}` there shows its files."
    body = f"{sentence(event)}\n\n-- \n{footer}\n"
    return _message(config, host, f"dronesync: {summary(event)}", body)


def compose_digest(config: EmailConfig, host: str, events: list[Event]) -> EmailMessage:
    """The day's digest: how many of each kind in the subject, one line per event below."""
    kinds = Counter(event.event for event in events)
    order = [*_DIGEST_WORDS, *sorted(kinds.keys() - _DIGEST_WORDS.keys())]
    counts = ", ".join(
        f"{kinds[kind]} {_DIGEST_WORDS.get(kind, kind.replace('_', ' '))}"
        for kind in order
        if kinds[kind]
    )
    lines = [f"{_when(event.at)}  {summary(event)}" for event in events]
    for event in events:
        if event.event in ("processing_failed", "needs_attention") and event.detail:
            lines.append(f"\n{summary(event)}:\n  {printable(event.detail)}")
    body = "\n".join(lines) + f"\n\n-- \ndronesync on {host}; `dronesync status` shows more.\n"
    return _message(config, host, f"dronesync on {host}: {counts}", body)


def next_digest(after: float, hour: int) -> float:
    """The first time at ``hour`` o'clock (local time) later than ``after``."""
    moment = datetime.fromtimestamp(after)  # naive: the operator's local hour
    due = moment.replace(hour=hour, minute=0, second=0, microsecond=0)
    if due <= moment:
        due = (moment + timedelta(days=1)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return due.timestamp()


class DigestStore:
    """The events waiting for the next digest: a JSON line each in a file (or in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._events: list[Event] = []
        if path is not None:
            self._events = self._read(path)

    @staticmethod
    def _read(path: Path) -> list[Event]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("digest events cannot be read; starting afresh", error=str(exc))
            return []
        events = []
        for line in text.splitlines():
            try:
                data = json.loads(line)
                events.append(
                    Event(
                        str(data["event"]),
                        str(data["dataset"]),
                        str(data["target"]),
                        str(data["state"]),
                        data["detail"],
                        float(data["at"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        return events

    @property
    def events(self) -> list[Event]:
        """The events waiting, oldest first."""
        return list(self._events)

    def add(self, event: Event) -> bool:
        """Keep ``event`` for the digest; False when the digest is full."""
        if len(self._events) >= DIGEST_LIMIT:
            return False
        self._events.append(event)
        if self.path is not None:
            line = json.dumps({**event.document(), "at": event.at}) + "\n"
            try:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                log.warning("digest event kept in memory only", error=str(exc))
        return True

    def sent(self, count: int) -> None:
        """Forget the ``count`` oldest events: they were delivered."""
        del self._events[:count]
        if self.path is None:
            return
        try:
            if not self._events:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            lines = (json.dumps({**e.document(), "at": e.at}) + "\n" for e in self._events)
            tmp.write_text("".join(lines), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("digest file cannot be rewritten", error=str(exc))


class Mailer:
    """Mails events to ``config.to``: each at once, or a daily digest; retrying, never raising."""

    def __init__(
        self,
        config: EmailConfig,
        *,
        attempts: int,
        timeout_s: float,
        state_dir: Path | None = None,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.host = socket.gethostname()
        self._clock = clock or SystemClock()
        self._backoff = backoff or Backoff(1.0, 60.0, random.Random())  # noqa: S311 (jitter)
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self._digest = DigestStore(state_dir / DIGEST_FILE if state_dir else None)
        self._wake = asyncio.Event()
        self._not_before = 0.0  # a digest that could not be sent waits for the next hour
        self.sent = 0
        self.dropped = 0

    def send(self, event: Event) -> None:
        """Queue ``event`` for its message or the digest (never blocks)."""
        if self.config.digest:
            if not self._digest.add(event):
                self.dropped += 1
                log.warning("e-mail digest full; event left out", notify_event=event.event)
        else:
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("e-mail dropped: too many queued", notify_event=event.event)
        self._wake.set()

    async def run(self) -> None:
        """Send messages as they come due, until cancelled."""
        while True:
            self._wake.clear()
            await self.send_due()
            due = self.digest_due()
            wait = RECHECK_S if due is None else min(due - self._clock.time(), RECHECK_S)
            await wait_event(self._wake, max(wait, 0.0))

    async def send_due(self) -> None:
        """Send what is due now: each queued event, or the digest once its hour has come."""
        while not self._queue.empty():
            event = self._queue.get_nowait()
            message = compose(self.config, self.host, event)
            await self._deliver(message, notify_event=event.event, dataset=event.dataset)
        due = self.digest_due()
        if due is None or self._clock.time() < due:
            return
        events = self._digest.events
        message = compose_digest(self.config, self.host, events)
        if await self._deliver(message, notify_event="digest", events=len(events)):
            self._digest.sent(len(events))
        else:
            self._not_before = next_digest(self._clock.time(), self.config.digest_hour)

    def digest_due(self) -> float | None:
        """When the events waiting for the digest are to be sent (None: no event waits)."""
        events = self._digest.events
        if not events:
            return None
        return max(next_digest(events[0].at, self.config.digest_hour), self._not_before)

    async def _deliver(self, message: EmailMessage, **context: object) -> bool:
        """Send ``message``, retrying with backoff; whether it went."""
        for attempt in range(1, self.attempts + 1):
            error = await asyncio.to_thread(self._attempt, message)
            if error is None:
                self.sent += 1
                log.info("e-mail sent", to=len(self.config.to), **context)
                return True
            if attempt == self.attempts:
                self.dropped += 1
                log.warning(
                    "e-mail not delivered; giving up", attempts=attempt, error=error, **context
                )
                return False
            delay = self._backoff.delay(attempt)
            log.info("e-mail failed; retrying", retry_in_s=round(delay, 1), error=error, **context)
            await asyncio.sleep(delay)
        return False  # pragma: no cover (attempts >= 1)

    def _attempt(self, message: EmailMessage) -> str | None:
        """One delivery over a new connection (in a worker thread): the error, or None."""
        config = self.config
        refused: dict[str, tuple[int, bytes]] | None = None
        try:
            password = None
            if config.user is not None:
                path = secret_path(config.password_file, config.password_credential)
                password = read_secret(path) if path is not None else None
            context = ssl.create_default_context(
                cafile=str(config.ca_file) if config.ca_file else None
            )
            port = config.port_or_default
            if config.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    config.host, port, timeout=self.timeout_s, context=context
                )
            else:
                smtp = smtplib.SMTP(config.host, port, timeout=self.timeout_s)
            with smtp:
                if config.security == "starttls":
                    smtp.starttls(context=context)
                if config.user is not None and password is not None:
                    smtp.login(config.user, password)
                refused = smtp.send_message(message)
        except ConfigError as exc:
            return "; ".join(exc.problems)
        except (smtplib.SMTPException, OSError) as exc:
            if refused is not None:
                return None  # the relay took it; only saying goodbye failed: not sent twice
            return _smtp_error(config, exc)
        if refused:
            log.warning("e-mail refused for some recipients", refused=sorted(refused))
        return None


def _smtp_error(config: EmailConfig, exc: Exception) -> str:
    """A failed delivery in one line, the relay's own words where it gave some."""
    match exc:
        case smtplib.SMTPResponseException():
            reply = exc.smtp_error
            text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
            return f"{config.host}: SMTP {exc.smtp_code}: {text}"
        case smtplib.SMTPRecipientsRefused():
            return f"{config.host}: every recipient refused: {', '.join(exc.recipients)}"
        case _:
            return f"{config.host}:{config.port_or_default}: {type(exc).__name__}: {exc}"
