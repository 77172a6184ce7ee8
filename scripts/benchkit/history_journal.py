"""A journal with a year of history, written straight into SQLite in a few statements.

The schema is the journal's own (``Journal.open`` applies every migration); the rows are then
made by SQLite itself from a recursive counter, so a million files take seconds, not the
minutes the journal's per-batch API would. What the rows hold is what the daemon leaves
behind: datasets processed long ago with every file uploaded, a few failed files, all on the
watched folder's volume (the same card slot, a year of flights).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from daemon.journal import Journal

YEAR_S = 365 * 86_400.0
JOURNAL = "journal.sqlite3"


def build(state: Path, *, files: int, datasets: int, volume: str, source: str) -> Path:
    """``state/journal.sqlite3`` with ``files`` files in ``datasets`` datasets; its path."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / JOURNAL
    Journal.open(path).close()  # the schema, by the journal's own migrations
    if not files or not datasets:
        return path
    now = time.time()
    per = max(files // datasets, 1)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        # Dataset n was flown (n / datasets) of a year ago; every one is processed but the
        # ones with a failed file (one in 500), which wait for the operator.
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO datasets (id, name, target, source, volume, folder, state,"
            " auto_process, quiet_s, created_at, last_activity_at, processing_started_at,"
            " processing_finished_at, processing_handle)"
            " SELECT i, printf('flight-%05d', i), 'archive', ?, ?,"
            " CAST(printf('flight-%05d', i) AS BLOB),"
            " CASE WHEN i % 500 = 0 THEN 'collecting' ELSE 'processed' END, 1, 600,"
            " ? + ? * i / ?, ? + ? * i / ? + 900,"
            " CASE WHEN i % 500 = 0 THEN NULL ELSE ? + ? * i / ? + 1600 END,"
            " CASE WHEN i % 500 = 0 THEN NULL ELSE ? + ? * i / ? + 5000 END,"
            " CASE WHEN i % 500 = 0 THEN NULL ELSE printf('task-%05d', i) END FROM n",
            (datasets, source, volume, *([now - YEAR_S - 86_400, YEAR_S, datasets] * 4)),
        )
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO files (dataset_id, volume, relpath, dspath, size, mtime_ns, sha256,"
            " status, attempts, last_error, remote_key, discovered_at, uploaded_at)"
            " SELECT d, ?, CAST(printf('flight-%05d/DJI_%05d.JPG', d, k) AS BLOB),"
            " CAST(printf('DJI_%05d.JPG', k) AS BLOB), 6000000 + (i * 7919) % 2000000,"
            " 1600000000000000000 + i * 1000000000, printf('%064x', i + 1),"
            " CASE WHEN d % 500 = 0 AND k = 0 THEN 'failed' ELSE 'uploaded' END,"
            " CASE WHEN d % 500 = 0 AND k = 0 THEN 10 ELSE 1 END,"
            " CASE WHEN d % 500 = 0 AND k = 0 THEN 'HTTP 500 from the target' END,"
            " CASE WHEN d % 500 = 0 AND k = 0 THEN NULL"
            " ELSE CAST(printf('DJI_%05d.JPG', k) AS BLOB) END,"
            " ? + ? * d / ?, ? + ? * d / ? + 600"
            " FROM (SELECT i, i / ? + 1 AS d, i % ? AS k FROM n WHERE i / ? < ?)",
            (
                files - 1,
                volume,
                *([now - YEAR_S - 86_400, YEAR_S, datasets] * 2),
                per,
                per,
                per,
                datasets,
            ),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path


def journal_bytes(path: Path) -> int:
    """The journal's size on disk: the database and its write-ahead log."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            total += part.stat().st_blocks * 512
    return total
