"""`dronesync status` beside a real daemon: its stop seen at once, queued requests until done."""

from __future__ import annotations

import json
import random

from tests.conftest import Box, wait_until


def test_a_stopped_daemon_is_shown_at_once_and_queued_requests_until_applied(box: Box) -> None:
    box.write_config(source="auto_process = false\n")
    folder = box.inbox / "field-a"
    folder.mkdir()
    for n in range(3):
        (folder / f"IMG_{n}.JPG").write_bytes(random.Random(n).randbytes(2000))
    proc = box.start()
    wait_until(
        lambda: box.datasets().get("field-a", {}).get("state") == "ready", what="field-a ready"
    )
    assert json.loads(box.cli("status", "--json").stdout)["daemon"]["running"] is True
    assert box.stop(proc) == 0

    # live.json is still fresh, but the daemon is gone: no figures of its are current.
    doc = json.loads(box.cli("status", "--json").stdout)
    assert doc["daemon"] == {"running": False, "stopping": False}
    assert box.cli("process", "field-a").stdout.startswith("queued:")
    human = box.cli("status").stdout.splitlines()
    assert human[0].startswith("daemon not running: 1 dataset active, 3 of 3 files done (100%)")
    assert human[1].startswith("queued: process field-a since ")
    assert human[1].endswith("(applied when the daemon starts)")

    proc = box.start()
    wait_until(
        lambda: box.datasets()["field-a"]["state"] in ("processing", "processed"),
        what="the request applied",
    )
    wait_until(lambda: "queued:" not in box.cli("status").stdout, what="the request gone")
    assert box.stop(proc) == 0
