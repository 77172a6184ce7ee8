"""The disk holding the journal fills up: one clear line, nothing lost, and it goes on after.

The state folder is a small tmpfs (needs root; skipped otherwise), filled to the last byte
while the daemon runs, then freed.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Box, wait_until


@pytest.fixture
def small_state(box: Box) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a small file system for the journal needs root (tmpfs)")
    box.state.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "none", str(box.state)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield box.state
    subprocess.run(["umount", "-l", str(box.state)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass  # ENOSPC: the disk is full
    return filler


def test_a_full_journal_disk_is_one_clear_line_and_the_daemon_recovers(
    box: Box, small_state: Path
) -> None:
    proc = box.start()
    filler = _fill(small_state)
    folder = box.inbox / "m"
    folder.mkdir()
    for n in range(5):
        (folder / f"IMG_{n}.JPG").write_bytes(random.Random(n).randbytes(20_000))
    wait_until(lambda: "journal cannot be written" in box.log(), what="the disk-full line")
    assert proc.poll() is None, "the daemon keeps running"
    filler.unlink()  # space returns
    wait_until(
        lambda: box.datasets().get("m", {}).get("state") == "processed",
        timeout=90,
        what="the ingest finished once space returned",
    )
    assert len(list((box.archive / "m").iterdir())) == 5
    conn = sqlite3.connect(small_state / "journal.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert "Traceback" not in box.log()
    assert box.stop(proc) == 0
