"""The daemon's journal read as an operator's tool would, to see when a card is done."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from benchkit.bench.child import BenchError, Daemon
from benchkit.timing import progress


class JournalReader:
    """The daemon's journal, read-only, as an operator's tool would read it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and self.path.exists():
            try:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
                self._conn.execute("SELECT count(*) FROM files").fetchone()
            except sqlite3.Error:
                self.close()
        return self._conn

    def statuses(self) -> dict[str, int]:
        """How many files are in each status; empty until the journal exists."""
        conn = self._connect()
        if conn is None:
            return {}
        try:
            rows = conn.execute("SELECT status, count(*) FROM files GROUP BY status").fetchall()
        except sqlite3.Error:
            return {}
        return {str(status): int(n) for status, n in rows}

    def status_of(self, name: bytes) -> str | None:
        """The status of the file whose relative path ends with ``name``."""
        conn = self._connect()
        if conn is None:
            return None
        try:
            for relpath, status in conn.execute("SELECT relpath, status FROM files"):
                if bytes(relpath).endswith(name):
                    return str(status)
        except sqlite3.Error:
            return None
        return None

    def first_error(self) -> str:
        """The path and last error of one failed file, or an empty string."""
        conn = self._connect()
        if conn is None:
            return ""
        row = conn.execute(
            "SELECT relpath, last_error FROM files WHERE status = 'failed' LIMIT 1"
        ).fetchone()
        return "" if row is None else f"{bytes(row[0]).decode(errors='replace')}: {row[1]}"

    def close(self) -> None:
        """Close the connection; the next read opens it again."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def wait_uploaded(daemon: Daemon, journal: JournalReader, files: int, timeout: float) -> float:
    """Poll the journal until ``files`` files are uploaded; the perf_counter when seen."""
    poll = 0.05 if files < 20_000 else 0.2
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while True:
        counts = journal.statuses()
        if counts.get("uploaded", 0) >= files:
            return time.perf_counter()
        if counts.get("failed"):
            raise BenchError(
                f"{counts['failed']} files failed, first {journal.first_error()}\n{daemon.tail()}"
            )
        daemon.check_alive()
        now = time.monotonic()
        if now > deadline:
            raise BenchError(f"not every file uploaded after {timeout:.0f} s: {counts}")
        if now - last_report > 30:
            progress(f"    ... {counts}")
            last_report = now
        time.sleep(poll)
