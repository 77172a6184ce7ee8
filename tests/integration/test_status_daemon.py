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


def test_files_loose_in_the_top_of_a_source_are_pointed_out_once(box: Box) -> None:
    (box.inbox / "DJI_0001.JPG").write_bytes(b"loose image")
    (box.inbox / "DJI_0002.JPG").write_bytes(b"another one")
    (box.inbox / "notes.txt").write_bytes(b"not an image: not counted")
    folder = box.inbox / "field-a"
    folder.mkdir()
    (folder / "IMG_1.JPG").write_bytes(b"in a dataset")
    proc = box.start()
    wait_until(lambda: "field-a" in box.datasets(), what="field-a seen")
    wait_until(lambda: "belong to no dataset" in box.cli("status").stdout, what="the hint")
    hint = next(line for line in box.cli("status").stdout.splitlines() if "no dataset" in line)
    assert hint.startswith(f"{box.inbox}: 2 file(s) in the top folder belong to no dataset")
    assert 'layout = "single"' in hint
    assert json.loads(box.cli("status", "--json").stdout)["loose"] == {str(box.inbox): 2}
    assert box.stop(proc) == 0
    assert box.log().count("files in the top of a source belong to no dataset") == 1
    assert set(box.datasets()) == {"field-a"}
