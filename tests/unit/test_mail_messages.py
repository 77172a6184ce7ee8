"""The e-mail's words: subjects, bodies, the digest, and when the digest is due."""

from __future__ import annotations

from datetime import datetime

from daemon.config import EmailConfig
from daemon.events import Event
from daemon.mail import compose, compose_digest, next_digest

CONFIG = EmailConfig.model_validate(
    {"host": "smtp.example.org", "from": "box@example.org", "to": ["pilot@example.org"]}
)
AT = datetime(2030, 5, 1, 14, 3).timestamp()


def _event(kind: str, dataset: str = "field-a", detail: str | None = None) -> Event:
    return Event(kind, dataset, "cloud", "processed", detail, AT)


def test_each_event_has_a_subject_naming_the_dataset_and_what_happened() -> None:
    subjects = {
        kind: compose(CONFIG, "box-3", _event(kind))["Subject"]
        for kind in (
            "processing_started",
            "processing_finished",
            "processing_failed",
            "needs_attention",
        )
    }
    assert subjects == {
        "processing_started": "dronesync: field-a: uploaded, processing started",
        "processing_finished": "dronesync: field-a: processing finished",
        "processing_failed": "dronesync: field-a: processing failed",
        "needs_attention": "dronesync: field-a: needs attention",
    }
    card = compose(CONFIG, "box-3", _event("card_removable", "PILOT"))
    assert card["Subject"] == "dronesync: card PILOT can be removed"


def test_the_body_is_short_and_says_where_to_look() -> None:
    message = compose(CONFIG, "box-3", _event("processing_failed", detail="node out of memory"))
    body = str(message.get_content())
    assert body.startswith("Processing of field-a on cloud failed: node out of memory\n")
    assert "`dronesync process field-a` runs it again" in body
    assert "dronesync on box-3, 2030-05-01 14:03." in body
    assert len(body.splitlines()) <= 6


def test_a_name_from_a_card_cannot_add_a_header_or_steer_a_terminal() -> None:
    message = compose(CONFIG, "box-3", _event("processing_finished", "x\r\nBcc: all@evil\x1b[2J"))
    assert message["Subject"] == "dronesync: x\\r\\nBcc: all@evil\\x1b[2J: processing finished"
    assert message["Bcc"] is None
    assert "\x1b" not in str(message.get_content())


def test_the_digest_counts_events_by_kind_and_lists_each() -> None:
    events = [
        _event("processing_finished", "field-a"),
        _event("processing_finished", "field-b"),
        _event("processing_failed", "field-c", "bad images"),
        _event("card_removable", "PILOT"),
    ]
    message = compose_digest(CONFIG, "box-3", events)
    assert message["Subject"] == "dronesync on box-3: 2 processed, 1 failed, 1 cards removable"
    body = str(message.get_content())
    assert "2030-05-01 14:03  field-b: processing finished" in body
    assert "2030-05-01 14:03  card PILOT can be removed" in body
    assert "field-c: processing failed:\n  bad images" in body


def test_the_digest_is_due_at_the_next_stroke_of_its_hour() -> None:
    def at(day: int, hour: int, minute: int = 0) -> float:
        return datetime(2030, 5, day, hour, minute).timestamp()

    assert next_digest(at(1, 9), 18) == at(1, 18)
    assert next_digest(at(1, 18), 18) == at(2, 18)  # an event at the stroke: the next day's
    assert next_digest(at(1, 18, 1), 18) == at(2, 18)
    assert next_digest(at(1, 23, 59), 0) == at(2, 0)
