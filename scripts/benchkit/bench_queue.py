"""The upload queue's cost per file: the fair take beside the take it replaced.

    scripts/bench-queue [--files 10000] [--datasets 1,10,50] [--batch 4]

A real journal in a temporary folder holds ``--files`` hashed files, waiting, spread over N
datasets. The dispatcher's loop is run until every file is taken: take ``--batch`` files (what
``concurrency`` workers freeing up together ask for), then record them uploaded, one
transaction each. dronesync's ``Journal.take_uploads`` (the next file from the dataset with the
fewest uploads going) is timed beside the reference on a journal built the same way: the
statement it replaced, the oldest due files of all datasets taken in one UPDATE through the
index it had (``files_due``), which is fast and unfair. The ratio is dronesync's time per file
over the reference's (lower is better).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchkit.cli import summary
from benchkit.project import (
    FILE_COLUMNS,
    FileRow,
    HashRecord,
    Journal,
    NewFile,
    journal_connection,
    write_fetch,
)
from benchkit.table import right
from benchkit.timing import best

NOW = 1_800_000_000.0
TABLE_HEAD = ("datasets", "reference us/file", "dronesync us/file", "ratio")
TABLE_WIDTHS = (8, 17, 17, 5)


def build(folder: Path, files: int, datasets: int, *, reference: bool) -> Journal:
    """A journal of ``files`` hashed files, waiting, in ``datasets`` datasets."""
    journal = Journal.open(folder / "journal.sqlite3")
    if reference:  # the index the reference statement was written for
        journal_connection(journal).execute(
            "CREATE INDEX files_due ON files (next_attempt_at, id)"
            " WHERE status = 'waiting' AND sha256 IS NOT NULL"
        )
    with journal.transaction():
        for n in range(datasets):
            ds = journal.open_dataset(
                volume="/card",
                folder=b"f%d" % n,
                name=f"flight-{n}",
                target="archive",
                source="/card",
                auto_process=True,
                quiet_s=0,
                now=NOW,
            ).id
            new = [
                NewFile(ds, "/card", b"f%d/%d.JPG" % (n, i), b"%d.JPG" % i, 400_000, 1)
                for i in range(files // datasets)
            ]
            ids = journal.add_files(new, NOW)
            rows = journal.find_files(ids)
            records = [
                HashRecord(rows[f], ds, 400_000, 1, f"{f:064x}", "target", None) for f in ids
            ]
            journal.record_hashes(records, NOW)
    return journal


def oldest_first(journal: Journal, batch: int) -> list[FileRow]:
    """The reference: the oldest due files of all datasets, one statement."""
    rows = write_fetch(
        journal,
        # S608: the statement is built from the journal's own column list, no outside input.
        "UPDATE files SET status = 'uploading', attempts = attempts + 1 WHERE id IN ("  # noqa: S608
        " SELECT f.id FROM files f INDEXED BY files_due"
        " JOIN datasets d ON d.id = f.dataset_id"
        " WHERE f.status = 'waiting' AND f.sha256 IS NOT NULL AND f.next_attempt_at <= ?"
        f" AND d.state IN ('collecting', 'ready') ORDER BY f.next_attempt_at, f.id LIMIT ?)"
        f" RETURNING {FILE_COLUMNS}",
        (NOW + 1, batch),
    )
    return [FileRow(*row) for row in rows]


def fair(journal: Journal, batch: int) -> list[FileRow]:
    """The take of dronesync (no uploads in flight between two takes here)."""
    return journal.take_uploads(NOW + 1, batch, [])


def per_file(
    take: Callable[[Journal, int], list[FileRow]], files: int, datasets: int, batch: int
) -> float:
    """Seconds per file of take + record, until the journal has nothing left to take."""
    with tempfile.TemporaryDirectory() as tmp:
        journal = build(Path(tmp), files, datasets, reference=take is oldest_first)
        taken = 0
        start = time.perf_counter()
        while True:
            with journal.transaction():
                rows = take(journal, batch)
                if not rows:
                    break
                journal.mark_all_uploaded([(row, row.dspath) for row in rows], NOW)
            taken += len(rows)
        elapsed = time.perf_counter() - start
        journal.close()
    return elapsed / max(taken, 1)


def main() -> int:
    """Time both takes for each number of datasets and print the table."""
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--datasets", default="1,10,50")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    print(right(TABLE_HEAD, TABLE_WIDTHS))
    for datasets in (int(n) for n in args.datasets.split(",")):
        # Taking turns, best of 3: a slow moment of the box falls on both sides.
        ref = best(partial(per_file, oldest_first, args.files, datasets, args.batch), 3)
        ours = best(partial(per_file, fair, args.files, datasets, args.batch), 3)
        figures = (f"{datasets}", f"{ref * 1e6:.0f}", f"{ours * 1e6:.0f}", f"{ours / ref:.2f}")
        print(right(figures, TABLE_WIDTHS))
    return 0
