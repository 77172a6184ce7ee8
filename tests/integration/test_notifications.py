"""Notifications: a webhook on 127.0.0.1 and a command hear about processing, retries included."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Box, toml_list, wait_until
from tests.fakes.webhook import Webhook


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(fail_first=2)
    yield hook
    hook.close()


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for n in range(count):
        (folder / f"IMG_{n:04d}.JPG").write_bytes(f"image {n} of {folder.name}".encode() * 100)


def test_webhook_and_command_hear_processing_start_and_end(
    box: Box, webhook: Webhook, tmp_path: Path
) -> None:
    heard = tmp_path / "heard.jsonl"
    command = [
        sys.executable,
        "-c",
        "import os, sys; open(sys.argv[1], 'a').write("
        "os.environ['DRONESYNC_EVENT'] + ' ' + sys.stdin.read() + '\\n')",
        str(heard),
    ]
    box.write_config(
        extra=(
            f'[notifications]\nwebhook_url = "{webhook.url}"\n'
            f"command = {toml_list(command)}\nattempts = 5\n"
        )
    )
    proc = box.start()
    _images(box.inbox / "field-a", 3)

    wait_until(
        lambda: webhook.events("field-a") == ["processing_started", "processing_finished"],
        what="both events at the webhook",
    )
    assert webhook.refused == 2  # the first deliveries failed and were retried
    finished = next(d for d in webhook.received if d["event"] == "processing_finished")
    assert finished["target"] == "archive"
    assert finished["state"] == "processed"
    lines = (
        wait_until(
            lambda: heard.exists() and len(heard.read_text().splitlines()) == 2 and heard,
            what="the command to run twice",
        )
        .read_text()
        .splitlines()
    )
    assert [line.split(" ", 1)[0] for line in lines] == [
        "processing_started",
        "processing_finished",
    ]
    assert json.loads(lines[1].split(" ", 1)[1])["dataset"] == "field-a"
    assert box.stop(proc) == 0


def test_an_unreachable_webhook_is_logged_and_changes_nothing_else(box: Box) -> None:
    box.write_config(
        extra='[notifications]\nwebhook_url = "http://127.0.0.1:9/none"\nattempts = 2\n'
    )
    proc = box.start()
    _images(box.inbox / "field-b", 2)
    wait_until(
        lambda: box.datasets().get("field-b", {}).get("state") == "processed",
        what="the dataset to be processed",
    )
    wait_until(lambda: "notification not delivered" in box.log(), what="the give-up line")
    assert proc.poll() is None
    assert box.stop(proc) == 0
