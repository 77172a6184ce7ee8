"""A command alone hears its events; without a webhook the daemon never loads an HTTP client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from daemon.config import NotificationsConfig
from daemon.events import Event
from daemon.notifications import Notifier

ROOT = Path(__file__).resolve().parents[2]


def test_a_command_without_a_webhook_hears_the_event(tmp_path: Path) -> None:
    heard = tmp_path / "heard.json"
    write = "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())"
    config = NotificationsConfig(command=[sys.executable, "-c", write, str(heard)])
    notifier = Notifier(config)

    async def run() -> None:
        task = asyncio.create_task(notifier.run())
        notifier.send(Event("processing_started", "survey", "node", "processing", None))
        while not notifier.delivered and not task.done():  # noqa: ASYNC110 (a count, no event)
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run())
    assert notifier.delivered == 1
    assert json.loads(heard.read_text())["event"] == "processing_started"


def test_the_service_loads_no_http_client_for_a_directory_target() -> None:
    probe = "import sys, daemon.cli, daemon.service; print('httpx' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
