"""E-mail notifications against a real SMTP server on 127.0.0.1 (aiosmtpd).

Plain, STARTTLS and TLS relays, a login, a relay that refuses before it accepts, the daily
digest kept across a restart, and the daemon mailing a dataset's processing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.config import EmailConfig, NotificationsConfig
from daemon.events import Event
from daemon.mail import DIGEST_FILE, Mailer
from daemon.notifications import Notifier
from daemon.upload.retry import Backoff
from tests.conftest import Box, wait_until
from tests.fakes.smtp import Authority, SmtpServer

PASSWORD = "s3cret-relay-pass"
QUICK = Backoff(0.01, 0.05, random.Random(1))


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def servers() -> Iterator[list[SmtpServer]]:
    started: list[SmtpServer] = []
    yield started
    for server in started:
        server.close()


def _server(servers: list[SmtpServer], **kwargs: Any) -> SmtpServer:
    server = SmtpServer(**kwargs)
    servers.append(server)
    return server


def _config(server: SmtpServer, **overrides: Any) -> EmailConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "from": "box@example.org",
        "to": ["pilot@example.org", "office@example.org"],
    }
    values.update(overrides)
    return EmailConfig.model_validate(values)


def _password(tmp_path: Path, secret: str = PASSWORD) -> Path:
    path = tmp_path / "smtp.password"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def _event(kind: str, dataset: str, detail: str | None = None, at: float = 0.0) -> Event:
    return Event(kind, dataset, "archive", "processing", detail, at or datetime.now().timestamp())


def _mailer(config: EmailConfig, **kwargs: Any) -> Mailer:
    return Mailer(
        config, attempts=kwargs.pop("attempts", 4), timeout_s=5.0, backoff=QUICK, **kwargs
    )


def _send(mailer: Mailer, *events: Event) -> None:
    """Hand ``events`` to ``mailer`` and send what is due, as its loop would."""

    async def go() -> None:
        for event in events:
            mailer.send(event)
        await mailer.send_due()

    asyncio.run(go())


def test_one_message_per_event_names_the_dataset_and_what_happened(
    servers: list[SmtpServer],
) -> None:
    server = _server(servers)
    mailer = _mailer(_config(server))

    _send(
        mailer,
        _event("processing_finished", "field-a", "orthomosaic ready"),
        _event("needs_attention", "field-b", "IMG_1.JPG failed: disk full"),
    )

    assert mailer.sent == 2
    first, second = server.inbox.wait(2)
    assert first["Subject"] == "dronesync: field-a: processing finished"
    assert first["From"] == "box@example.org"
    assert first["To"] == "pilot@example.org, office@example.org"
    assert "Processing of field-a on archive has finished. orthomosaic ready" in str(
        first.get_content()
    )
    assert second["Subject"] == "dronesync: field-b: needs attention"
    assert "field-b needs attention: IMG_1.JPG failed: disk full" in str(second.get_content())
    recipients = ["pilot@example.org", "office@example.org"]
    assert server.inbox.envelopes[0] == ("box@example.org", recipients)


def test_starttls_with_a_login_and_the_password_in_no_log(
    servers: list[SmtpServer], authority: Authority, tmp_path: Path
) -> None:
    server = _server(servers, security="starttls", authority=authority, login=("box", PASSWORD))
    config = _config(
        server,
        security="starttls",
        ca_file=authority.ca_file,
        user="box",
        password_file=_password(tmp_path),
    )
    mailer = _mailer(config)

    with structlog.testing.capture_logs() as logs:
        _send(mailer, _event("processing_started", "field-c"))

    (message,) = server.inbox.wait(1)
    assert message["Subject"] == "dronesync: field-c: uploaded, processing started"
    assert server.logins == [("box", PASSWORD)]
    assert [e["event"] for e in logs] == ["e-mail sent"]
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(config)


def test_tls_from_the_start(
    servers: list[SmtpServer], authority: Authority, tmp_path: Path
) -> None:
    server = _server(servers, security="tls", authority=authority, login=("box", PASSWORD))
    password = _password(tmp_path)
    config = _config(
        server, security="tls", ca_file=authority.ca_file, user="box", password_file=password
    )
    mailer = _mailer(config)

    _send(mailer, _event("card_removable", "CARD-7", "/run/dronesync/cards/7: can be removed"))

    (message,) = server.inbox.wait(1)
    assert message["Subject"] == "dronesync: card CARD-7 can be removed"
    assert server.logins == [("box", PASSWORD)]


def test_a_certificate_from_an_unknown_authority_is_refused(
    servers: list[SmtpServer], authority: Authority
) -> None:
    server = _server(servers, security="tls", authority=authority)
    mailer = _mailer(_config(server, security="tls"), attempts=1)

    with structlog.testing.capture_logs() as logs:
        _send(mailer, _event("processing_failed", "field-d", "node crashed"))

    assert mailer.dropped == 1
    (gave_up,) = [e for e in logs if e["event"] == "e-mail not delivered; giving up"]
    assert "CERTIFICATE_VERIFY_FAILED" in gave_up["error"]
    assert server.inbox.messages == []


def test_a_relay_that_refuses_then_accepts_gets_the_message_once(
    servers: list[SmtpServer],
) -> None:
    server = _server(servers, refuse_first=2)
    mailer = _mailer(_config(server))

    with structlog.testing.capture_logs() as logs:
        _send(mailer, _event("processing_failed", "field-e", "out of memory"))

    assert (server.inbox.refused, mailer.sent) == (2, 1)
    (message,) = server.inbox.wait(1)
    assert message["Subject"] == "dronesync: field-e: processing failed"
    assert "`dronesync process field-e` runs it again" in str(message.get_content())
    retries = [e for e in logs if e["event"] == "e-mail failed; retrying"]
    assert len(retries) == 2
    assert "SMTP 451" in retries[0]["error"]


def test_a_wrong_password_gives_up_after_the_attempts_without_logging_it(
    servers: list[SmtpServer], authority: Authority, tmp_path: Path
) -> None:
    server = _server(servers, security="starttls", authority=authority, login=("box", "other"))
    config = _config(
        server,
        security="starttls",
        ca_file=authority.ca_file,
        user="box",
        password_file=_password(tmp_path),
    )
    mailer = _mailer(config, attempts=2)

    with structlog.testing.capture_logs() as logs:
        _send(mailer, _event("processing_finished", "field-f"))

    assert mailer.dropped == 1
    assert set(server.logins) == {("box", PASSWORD)}  # smtplib tries PLAIN, then LOGIN
    assert len([e for e in logs if e["event"] == "e-mail failed; retrying"]) == 1
    assert server.inbox.messages == []
    assert PASSWORD not in repr(logs)
    (gave_up,) = [e for e in logs if e["event"] == "e-mail not delivered; giving up"]
    assert "SMTP 535" in gave_up["error"]


def test_an_unreachable_relay_is_logged_and_dropped() -> None:
    config = EmailConfig.model_validate(
        {"host": "127.0.0.1", "port": 9, "security": "none", "from": "a@b.org", "to": ["c@d.org"]}
    )
    mailer = _mailer(config, attempts=2)

    with structlog.testing.capture_logs() as logs:
        _send(mailer, _event("processing_finished", "field-g"))

    assert mailer.dropped == 1
    (gave_up,) = [e for e in logs if e["event"] == "e-mail not delivered; giving up"]
    assert "127.0.0.1:9: ConnectionRefusedError" in gave_up["error"]


def test_the_digest_waits_for_its_hour_and_survives_a_restart(
    servers: list[SmtpServer], tmp_path: Path
) -> None:
    server = _server(servers)
    config = _config(server, digest=True, digest_hour=18)
    morning = datetime(2030, 5, 1, 9, 0).timestamp()
    clock = FakeClock(morning)
    first = _mailer(config, state_dir=tmp_path, clock=clock)

    _send(
        first,
        _event("processing_finished", "field-h", "done", at=morning),
        _event("needs_attention", "field-i", "3 failed", at=morning + 60),
    )

    assert server.inbox.messages == []
    assert first.digest_due() == datetime(2030, 5, 1, 18, 0).timestamp()
    assert len((tmp_path / DIGEST_FILE).read_text().splitlines()) == 2

    # Stopped over the digest hour: the next start sends what waited.
    clock.now = datetime(2030, 5, 1, 18, 30).timestamp()
    second = _mailer(config, state_dir=tmp_path, clock=clock)
    _send(second)

    assert second.sent == 1
    (digest,) = server.inbox.wait(1)
    assert digest["Subject"].endswith(": 1 processed, 1 need attention")
    text = str(digest.get_content())
    assert "2030-05-01 09:00  field-h: processing finished" in text
    assert "2030-05-01 09:01  field-i: needs attention" in text
    assert "3 failed" in text
    assert not (tmp_path / DIGEST_FILE).exists()
    assert second.digest_due() is None


def test_a_digest_that_cannot_be_sent_waits_for_the_next_day(tmp_path: Path) -> None:
    config = EmailConfig.model_validate(
        {"host": "127.0.0.1", "port": 9, "from": "a@b.org", "to": ["c@d.org"], "digest": True}
    )
    evening = datetime(2030, 5, 1, 18, 5).timestamp()
    clock = FakeClock(evening)
    mailer = _mailer(config, attempts=1, state_dir=tmp_path, clock=clock)

    _send(mailer, _event("processing_started", "field-j", at=evening - 7200))

    assert mailer.dropped == 1
    assert mailer.digest_due() == datetime(2030, 5, 2, 18, 0).timestamp()
    assert len((tmp_path / DIGEST_FILE).read_text().splitlines()) == 1


def test_the_notifier_mails_only_the_configured_events(servers: list[SmtpServer]) -> None:
    server = _server(servers)
    config = NotificationsConfig(events=["processing_failed"], email=_config(server))
    notifier = Notifier(config)
    assert notifier.enabled
    assert notifier.mailer is not None

    async def run() -> list[EmailMessage]:
        task = asyncio.create_task(notifier.run())
        try:
            notifier.send(_event("processing_finished", "field-k"))
            notifier.send(_event("processing_failed", "field-k", "bad images"))
            return await asyncio.to_thread(server.inbox.wait, 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    (message,) = asyncio.run(run())
    # Mailed in order: had the other event gone out, it would have arrived first.
    assert message["Subject"] == "dronesync: field-k: processing failed"


def test_the_daemon_mails_a_dataset_s_processing(box: Box, servers: list[SmtpServer]) -> None:
    server = _server(servers)
    box.write_config(
        extra=(
            "[notifications.email]\n"
            f'host = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\n'
            'from = "box@example.org"\nto = ["pilot@example.org"]\n'
        )
    )
    proc = box.start()
    folder = box.inbox / "field-m"
    folder.mkdir()
    for n in range(2):
        (folder / f"IMG_{n}.JPG").write_bytes(b"image %d" % n * 100)
    messages = server.inbox.wait(2, timeout=60)
    assert [m["Subject"] for m in messages] == [
        "dronesync: field-m: uploaded, processing started",
        "dronesync: field-m: processing finished",
    ]
    wait_until(lambda: "e-mail sent" in box.log(), what="the log line")
    assert box.stop(proc) == 0
