"""The status page's server on 127.0.0.1, over a real journal: pages, API, metrics, security."""

from __future__ import annotations

import html
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import WebSettings
from daemon.journal import Journal
from daemon.status import read_live, snapshot
from daemon.web.auth import LOGIN_FAILURES
from tests.conftest import wait_until
from tests.webpage import JOURNAL, PageServer, Spec, answering, fill

EVIL = '<script>alert("x")</script>&'
HOSTILE_FILE = '"><img src=x onerror=alert(1)>.JPG'


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / JOURNAL)
    fill(
        j,
        [
            Spec("flight-1", uploaded=420, failed=3, duplicate=2, error="HTTP 403: bucket denied"),
            Spec("flight-2", waiting=5, retrying=2, error="connection reset"),
            Spec(EVIL, uploaded=1, names=[HOSTILE_FILE], state="processed"),
        ],
    )
    yield j
    j.close()


@contextmanager
def _serving(tmp_path: Path, password_file: Path | None = None) -> Iterator[str]:
    server = PageServer(tmp_path, WebSettings(listen="127.0.0.1:0", password_file=password_file))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def page(tmp_path: Path, journal: Journal) -> Iterator[str]:
    del journal
    with _serving(tmp_path) as url:
        yield url


@pytest.fixture
def client(page: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=page, timeout=10, follow_redirects=False) as c:
        yield c


def _csrf(text: str) -> str:
    match = re.search(r"name=csrf value=\"?([0-9a-f]+)", text)
    assert match, text[:500]
    return match.group(1)


def _request_files(state: Path) -> list[Path]:
    folder = state / "requests"
    return sorted(folder.iterdir()) if folder.exists() else []


# -- what it shows ----------------------------------------------------------------------------


def test_api_status_is_the_status_json_document(
    client: httpx.Client, tmp_path: Path, journal: Journal
) -> None:
    expected = snapshot(journal, read_live(tmp_path, time.time()))
    assert client.get("/api/status").json() == expected
    one = client.get("/api/status", params={"files": "1", "dataset": "flight-1"}).json()
    assert one == snapshot(journal, {}, dataset="flight-1", files=True)
    failed = [f for f in one["datasets"][0]["file_list"] if f["status"] == "failed"]
    assert [f["last_error"] for f in failed] == ["HTTP 403: bucket denied"] * 3
    assert client.get("/api/status", params={"dataset": "nope"}).status_code == 404
    every = client.get("/api/status", params={"all": "1"}).json()
    assert every == snapshot(journal, read_live(tmp_path, time.time()), every=True)


def test_the_index_shows_each_dataset_and_reads_without_scripts(client: httpx.Client) -> None:
    reply = client.get("/")
    assert reply.status_code == 200
    text = reply.text
    assert "flight-1" in text
    assert "flight-2" in text
    assert "3 failed: HTTP 403: bucket denied" in text
    assert "2 retrying: connection reset" in text
    assert "<progress max=425 value=422>" in text  # uploaded + duplicate of all files
    assert "Retry all failed files" in text
    assert "script-src 'sha256-" in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"


def test_names_from_a_card_are_escaped_everywhere(client: httpx.Client) -> None:
    index = client.get("/").text
    assert EVIL not in index
    assert html.escape(EVIL, quote=True) in index
    link = re.search(r'href="(/datasets/%3Cscript[^"?]*)"', index)
    assert link, index
    page = client.get(html.unescape(link.group(1)))
    assert page.status_code == 200
    assert HOSTILE_FILE not in page.text
    assert html.escape(HOSTILE_FILE, quote=True) in page.text
    assert "<img" not in page.text
    metrics = client.get("/metrics").text
    assert "<script>" in metrics  # label values are escaped by the exposition format itself
    assert list(text_string_to_metric_families(metrics))


def test_a_dataset_page_filters_by_status_and_pages_200_files(client: httpx.Client) -> None:
    first = client.get("/datasets/flight-1").text
    assert first.count("<tr><td class=path>") == 200
    assert "page 1 of 3" in first
    last = client.get("/datasets/flight-1", params={"page": "3"}).text
    assert last.count("<tr><td class=path>") == 25
    assert "page 3 of 3" in last
    failed = client.get("/datasets/flight-1", params={"status": "failed"}).text
    assert failed.count("<tr><td class=path>") == 3
    assert failed.count("HTTP 403: bucket denied</span></td></tr>") == 3
    duplicates = client.get("/datasets/flight-1", params={"status": "duplicate"}).text
    assert duplicates.count("same as /srv/inbox/flight-1/IMG_00000.JPG") == 2
    assert client.get("/datasets/nope").status_code == 404


def test_metrics_are_read_from_the_journal(client: httpx.Client) -> None:
    reply = client.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted(labels.items()))]

    assert value("dronesync_files", dataset="flight-1", target="archive", status="uploaded") == 420
    assert value("dronesync_files", dataset="flight-1", target="archive", status="failed") == 3
    assert value("dronesync_files", dataset="flight-2", target="archive", status="waiting") == 7
    assert value("dronesync_uploaded_bytes_total", target="archive") == 421 * 1_000_000
    assert value("dronesync_upload_errors", target="archive", kind="failed") == 3
    assert value("dronesync_upload_errors", target="archive", kind="retrying") == 2
    assert value("dronesync_datasets", state="collecting") == 2
    assert value("dronesync_datasets", state="processed") == 1
    assert value("dronesync_oldest_waiting_seconds") >= 0
    status = client.get("/api/status").json()
    assert value("dronesync_journal_bytes") > 0
    assert status["journal"]["bytes"] > 0


def test_events_stream_the_live_part_of_a_page_when_it_changes(page: str, journal: Journal) -> None:
    with (
        httpx.Client(base_url=page, timeout=10) as c,
        c.stream("GET", "/events", params={"view": "/datasets/flight-2"}) as events,
    ):
        assert events.headers["content-type"] == "text/event-stream"
        lines = events.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "flight-2" in first
        row = journal.dataset_by_name("flight-2")
        assert row is not None
        waiting = [f for f in journal.files(row.id) if f.status == "waiting"]
        journal.mark_failed(waiting[0].id, "disk on fire")
        journal.flush()
        deadline = time.monotonic() + 10
        for line in lines:
            if "disk on fire" in line:
                break
            assert time.monotonic() < deadline, "no event showed the failed file"


# -- acting -----------------------------------------------------------------------------------


def test_an_action_is_passed_to_the_daemon_and_its_answer_returned(
    client: httpx.Client, tmp_path: Path
) -> None:
    with answering(tmp_path, "flight-1: 3 failed file(s) back to waiting") as applied:
        reply = client.post("/api/datasets/flight-1/retry")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "action": "retry",
        "dataset": "flight-1",
        "done": True,
        "queued": False,
        "message": "flight-1: 3 failed file(s) back to waiting",
    }
    assert applied == ["retry flight-1"]
    with answering(tmp_path, "not done: flight-1: processed; nothing left to cancel"):
        refused = client.post("/api/datasets/flight-1/cancel")
    assert refused.status_code == 409
    missing = client.post("/api/datasets/nope/process")
    assert missing.status_code == 404
    assert _request_files(tmp_path) == []


def test_a_form_post_redirects_back_with_the_answer(client: httpx.Client, tmp_path: Path) -> None:
    token = _csrf(client.get("/").text)
    with answering(tmp_path, "3 failed file(s) back to waiting") as applied:
        reply = client.post(
            "/api/retry",
            data={"csrf": token, "next": "/datasets/flight-1"},
            headers={"Origin": str(client.base_url).rstrip("/")},
        )
    assert reply.status_code == 303
    assert reply.headers["location"].startswith("/datasets/flight-1?done=3+failed")
    assert applied == ["retry None"]
    shown = client.get(reply.headers["location"]).text
    assert "3 failed file(s) back to waiting" in shown


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/page"},
    ],
    ids=["origin", "null-origin", "referer"],
)
def test_a_post_from_another_site_is_refused(
    client: httpx.Client, tmp_path: Path, headers: dict[str, str]
) -> None:
    token = _csrf(client.get("/").text)
    reply = client.post("/api/retry", data={"csrf": token}, headers=headers)
    assert reply.status_code == 403
    assert "another site" in reply.text
    assert _request_files(tmp_path) == []


def test_a_form_without_the_page_token_is_refused(client: httpx.Client, tmp_path: Path) -> None:
    reply = client.post("/api/retry", data={"next": "/"})
    assert reply.status_code == 403
    reply = client.post("/api/retry", data={"csrf": "0" * 32})
    assert reply.status_code == 403
    assert _request_files(tmp_path) == []


def test_a_foreign_host_name_reads_nothing_without_a_password(client: httpx.Client) -> None:
    # A site whose name was pointed at 127.0.0.1 (DNS rebinding) sends its own Host.
    port = client.base_url.port
    assert client.get("/api/status", headers={"Host": f"evil.example:{port}"}).status_code == 403
    assert client.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200


# -- a password -------------------------------------------------------------------------------


@pytest.fixture
def password_page(tmp_path: Path, journal: Journal) -> Iterator[str]:
    del journal
    secret = tmp_path / "web.password"
    secret.write_text("correct horse\n")
    os.chmod(secret, 0o600)
    with _serving(tmp_path, secret) as url:
        yield url


def test_with_a_password_the_page_asks_and_the_api_takes_a_bearer(
    password_page: str, tmp_path: Path
) -> None:
    with httpx.Client(base_url=password_page, timeout=10) as c:
        assert c.get("/").status_code == 303
        assert c.get("/").headers["location"] == "/login?next=%2F"
        assert c.get("/api/status").status_code == 401
        assert c.get("/metrics").status_code == 401
        bearer = {"Authorization": "Bearer correct horse"}
        assert c.get("/api/status", headers=bearer).status_code == 200
        assert c.get("/metrics", headers=bearer).status_code == 200
        assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with answering(tmp_path) as applied:
            assert c.post("/api/retry", headers=bearer).status_code == 200
        assert applied == ["retry None"]


def test_logging_in_sets_a_strict_session_cookie_and_forms_need_its_token(
    password_page: str, tmp_path: Path
) -> None:
    with httpx.Client(base_url=password_page, timeout=10) as c:
        origin = {"Origin": str(c.base_url).rstrip("/")}
        wrong = c.post("/login", data={"password": "nope", "next": "/"}, headers=origin)
        assert wrong.status_code == 401
        assert "Wrong password" in wrong.text
        good = c.post("/login", data={"password": "correct horse", "next": "/"}, headers=origin)
        assert good.status_code == 303
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        index = c.get("/")
        assert index.status_code == 200
        assert "Log out" in index.text
        token = _csrf(index.text)
        # A cookie session acts only with its page's token.
        assert c.post("/api/retry", headers=origin).status_code == 403
        with answering(tmp_path) as applied:
            reply = c.post("/api/retry", data={"csrf": token, "next": "/"}, headers=origin)
        assert reply.status_code == 303
        assert applied == ["retry None"]
        assert c.post("/logout", data={"csrf": token}, headers=origin).status_code == 303
        assert c.get("/").status_code == 303


def test_wrong_passwords_make_logins_wait(password_page: str) -> None:
    with httpx.Client(base_url=password_page, timeout=10) as c:
        for _ in range(LOGIN_FAILURES):
            assert c.post("/login", data={"password": "guess"}).status_code == 401
        assert c.post("/login", data={"password": "correct horse"}).status_code == 429


# -- the server itself ------------------------------------------------------------------------


def _raw(url: str, data: bytes) -> bytes:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(65536)


def test_malformed_and_oversized_requests_are_answered_and_closed(page: str) -> None:
    assert _raw(page, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    assert _raw(page, huge).startswith(b"HTTP/1.1 431")
    big_body = b"POST /api/retry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n"
    assert _raw(page, big_body).startswith(b"HTTP/1.1 413")
    chunked = b"POST /api/retry HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _raw(page, chunked).startswith(b"HTTP/1.1 501")
    old = _raw(page, b"GET /api/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in old


def test_stopping_ends_open_streams_and_frees_the_port(tmp_path: Path, journal: Journal) -> None:
    del journal
    server = PageServer(tmp_path, WebSettings(listen="127.0.0.1:0"))
    url = server.start()
    with (
        httpx.Client(base_url=url, timeout=10) as c,
        c.stream("GET", "/events") as events,
    ):
        lines = events.iter_lines()
        wait_until(lambda: next(lines).startswith("data: "), what="a first event")
        started = time.monotonic()
        server.stop()
        for _ in lines:  # the stream ends: no line blocks for ever
            pass
        assert time.monotonic() - started < 5
    assert not (tmp_path / "web.json").exists()
    port = httpx.URL(url).port
    with pytest.raises(OSError, match="refused"):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_off_serves_nothing_and_waits_for_the_session_end(tmp_path: Path) -> None:
    server = PageServer(tmp_path, WebSettings(listen=""))
    with pytest.raises(TimeoutError):
        server.start(timeout=0.5)
    assert server.task is not None
    assert not server.task.done()  # a task that ended would end the daemon's session
    server.stop()
