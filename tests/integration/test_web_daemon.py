"""The status page of a real daemon: what it shows and does is what the command line does."""

from __future__ import annotations

import random
import signal
import socket
from pathlib import Path

import httpx

from tests import webpage
from tests.conftest import Box, wait_until


def _images(folder: Path, count: int, rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"DJI_{i:04d}.JPG").write_bytes(rng.randbytes(rng.randint(20_000, 60_000)))


def page_url(box: Box) -> str:
    """The daemon's page, once it listens."""
    return webpage.page_url(box.state)


def test_the_api_shows_the_journal_and_acts_as_the_cli_does(box: Box) -> None:
    box.write_config(upload="attempts = 2\nquick_retries = 0")
    box.archive.mkdir()
    (box.archive / "blocked").write_text("a file where the dataset's folder goes")
    _images(box.inbox / "blocked", 4, random.Random(3))
    proc = box.start()
    with httpx.Client(base_url=page_url(box), timeout=10) as page:
        wait_until(
            lambda: box.datasets().get("blocked", {}).get("files", {}).get("failed") == 4,
            what="files to fail",
        )
        # The same document as `status --json`, once the daemon's detail has settled too.
        wait_until(
            lambda: page.get("/api/status").json()["datasets"] == box.status()["datasets"],
            what="the API's document to be status --json's",
        )
        listing = page.get("/api/status", params={"files": "1"}).json()
        assert all(f["last_error"] for f in listing["datasets"][0]["file_list"])
        failed = page.get("/datasets/blocked", params={"status": "failed"}).text
        assert failed.count("<tr><td class=path>") == 4

        (box.archive / "blocked").unlink()
        reply = page.post("/api/datasets/blocked/retry")
        assert reply.status_code == 200, reply.text
        assert reply.json()["message"] == "blocked: 4 failed file(s) back to waiting"
        wait_until(
            lambda: box.datasets()["blocked"]["state"] == "processed", what="processed after retry"
        )

        refused = page.post("/api/datasets/blocked/cancel")
        assert refused.status_code == 409
        assert refused.json()["message"].startswith("not done: blocked: processed")
        assert page.post("/api/datasets/nope/process").status_code == 404
    assert box.stop(proc) == 0
    assert "Traceback" not in box.log()
    assert not (box.state / "web.json").exists()


def test_a_reload_serves_the_page_again(box: Box) -> None:
    proc = box.start()
    first = page_url(box)
    (box.state / "web.json").unlink()
    proc.send_signal(signal.SIGHUP)
    second = page_url(box)
    assert httpx.get(second + "api/status", timeout=10).status_code == 200
    assert first.startswith("http://127.0.0.1:")
    assert box.stop(proc) == 0


def test_a_taken_port_leaves_the_uploads_going(box: Box) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        box.write_config(web=f'listen = "127.0.0.1:{port}"')
        _images(box.inbox / "m", 3, random.Random(4))
        proc = box.start()
        wait_until(lambda: box.processed_runs() == ["m"], what="the dataset processed")
        assert "status page not served: cannot listen" in box.log()
        assert box.stop(proc) == 0


def test_off_the_daemon_runs_one_session_without_a_page(box: Box) -> None:
    box.write_config(web='listen = ""')
    _images(box.inbox / "m", 3, random.Random(5))
    proc = box.start()
    wait_until(lambda: box.processed_runs() == ["m"], what="the dataset processed")
    assert not (box.state / "web.json").exists()
    assert box.stop(proc) == 0
    assert box.log().count('"event": "ready"') == 1  # no session ended and began again
