"""The kept file counts: always what a count over every file says, whatever changed the files.

Each scenario changes files through the journal's own methods (as the daemon does, with group
commits), and after every step the kept counts are compared with a count over the files
table itself, the way ``status`` counted before the counts were kept.
"""

from __future__ import annotations

import random
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from daemon.errors import JournalError
from daemon.journal import (
    FILE_STATUSES,
    SCHEMA_VERSION,
    DatasetCounts,
    HashRecord,
    Journal,
    NewFile,
)

NOW = 1_700_000_000.0
VOLUME = "/srv/inbox"


def counted(journal: Journal) -> dict[int, DatasetCounts]:
    """Every dataset's counts, counted over the files."""
    result: dict[int, DatasetCounts] = {}
    rows = journal._conn.execute(
        "SELECT dataset_id, status, sha256 IS NULL, count(*), sum(size) FROM files"
        " GROUP BY dataset_id, status, sha256 IS NULL"
    ).fetchall()
    for dataset_id, status, unhashed, count, size in rows:
        old = result.get(dataset_id) or DatasetCounts(dict.fromkeys(FILE_STATUSES, 0), 0, 0, 0)
        files = dict(old.files)
        files[status] += count
        result[dataset_id] = DatasetCounts(
            files,
            old.bytes_total + (size if status != "skipped" else 0),
            old.bytes_uploaded + (size if status in ("uploaded", "duplicate") else 0),
            old.pending_hash + (count if status == "waiting" and unhashed else 0),
        )
    return result


def check(journal: Journal) -> None:
    expected = counted(journal)
    assert journal.counts() == expected
    some = sorted(expected)[::2]
    assert journal.counts(some) == {ds: expected[ds] for ds in some}
    totals = journal.totals()
    for status in FILE_STATUSES:
        assert totals[status] == sum(c.files[status] for c in expected.values())


def dataset(journal: Journal, n: int) -> int:
    return journal.open_dataset(
        volume=VOLUME, folder=b"m%d" % n, name=f"m{n}", target="a", source=VOLUME,
        auto_process=True, quiet_s=600, now=NOW,
    ).id  # fmt: skip


def one_file(journal: Journal, file_id: int, which: int) -> None:
    """A change of one file: forgotten, changed, skipped or parked."""
    if which == 0:
        journal.forget_unhashed(file_id)
    elif which == 1:
        journal.rehash(file_id, "changed")
    elif which == 2:
        journal.mark_skipped(file_id, "empty file", "e3b0")
    else:
        journal.mark_retry(file_id, "HTTP 503", NOW + 60)


def step(journal: Journal, datasets: list[int], rng: random.Random, n: int) -> None:
    """One change of the kinds the daemon makes, chosen at random."""
    ds = rng.choice(datasets)
    files = journal.files(ds)
    kind = rng.randrange(10)
    if kind < 2 or not files:
        new = [
            NewFile(ds, VOLUME, b"m%d/%d-%d.jpg" % (ds, n, i), b"%d-%d.jpg" % (n, i), 1 + i, 1)
            for i in range(rng.randrange(1, 40))
        ]
        journal.add_files(new, NOW)
    elif kind == 2:
        chosen = rng.sample(files, min(len(files), 30))
        journal.record_hashes(
            [
                HashRecord(
                    row, ds, row.size + rng.randrange(2), 2, f"{rng.randrange(20):064x}", "target"
                )
                for row in chosen
            ],
            NOW,
        )
    elif kind == 3:
        taken = journal.take_uploads(NOW, rng.randrange(1, 20), exclude=[])
        journal.mark_all_uploaded([(row, row.dspath) for row in taken[::2]], NOW)
        for row in taken[1::2]:
            if rng.random() < 0.5:
                journal.mark_failed(row.id, "broken")
            else:
                journal.release(row.id)
    elif kind == 4:
        journal.retry_failed(rng.choice([ds, None]))
    elif kind == 5:
        journal.move_unfinished(ds, rng.choice(datasets))
    elif kind == 6:
        journal.requeue_uploaded(ds, "the target lost it")
    elif kind == 7:
        one_file(journal, rng.choice(files).id, rng.randrange(4))
    elif kind == 8:
        journal.recover()
    else:
        journal.flush()


def test_counts_stay_right_across_every_kind_of_change_and_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    rng = random.Random(26)
    journal = Journal.open(path)
    journal.group_commits()
    datasets = [dataset(journal, n) for n in range(4)]
    for n in range(150):
        step(journal, datasets, rng, n)
        check(journal)
    journal.flush()
    journal.close()
    again = Journal.open(path, readonly=True)  # as `status` reads it, after a restart
    try:
        check(again)
        assert sum(sum(c.files.values()) for c in again.counts().values()) > 100
    finally:
        again.close()


def test_a_change_undone_leaves_the_counts_as_they_were(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    journal.group_commits()
    ds = dataset(journal, 1)
    journal.add_files([NewFile(ds, VOLUME, b"m1/a.jpg", b"a.jpg", 5, 1)], NOW)
    before = journal.counts()

    def add_then_fail() -> None:
        with journal.transaction():
            journal.add_files([NewFile(ds, VOLUME, b"m1/b.jpg", b"b.jpg", 7, 1)], NOW)
            journal.add_files([NewFile(ds, VOLUME, b"m1/a.jpg", b"a.jpg", 5, 1)], NOW)  # a repeat

    with pytest.raises(JournalError):
        add_then_fail()
    assert journal.counts() == before
    check(journal)
    journal.close()


def _journal_of_schema(path: Path, version: int) -> sqlite3.Connection:
    folder = resources.files("daemon.journal") / "migrations"
    conn = sqlite3.connect(path)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql") and int(entry.name.split("_")[0]) <= version:
            conn.executescript(entry.read_text(encoding="utf-8"))
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def test_a_journal_from_before_the_kept_counts_is_counted_once_when_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    conn = _journal_of_schema(path, 7)
    for n in (1, 2):
        conn.execute(
            "INSERT INTO datasets (id, name, target, source, volume, folder, quiet_s, created_at,"
            " last_activity_at) VALUES (?, ?, 'a', '/in', '/in', ?, 60, 1, 1)",
            (n, f"m{n}", b"m%d" % n),
        )
    statuses = ["uploaded", "uploaded", "duplicate", "failed", "waiting", "skipped"]
    for i, status in enumerate(statuses * 3):
        conn.execute(
            "INSERT INTO files (dataset_id, volume, relpath, dspath, size, mtime_ns, sha256,"
            " status, discovered_at) VALUES (?, '/in', ?, ?, ?, 1, ?, ?, 1)",
            (1 + i % 2, b"m/%d" % i, b"%d" % i, 10 + i, None if i == 4 else f"{i:064x}", status),
        )
    conn.commit()
    conn.close()
    journal = Journal.open(path)
    try:
        assert journal.schema_version() == SCHEMA_VERSION
        check(journal)
        assert journal.counts()[1].pending_hash == 1  # the waiting file never hashed
        journal.mark_failed(journal.files(2)[0].id, "broken")  # and kept from then on
        check(journal)
    finally:
        journal.close()
