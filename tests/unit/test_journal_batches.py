"""The journal's batch writes decide exactly as their one-file forms, in a few statements."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from daemon.journal import FileRow, HashRecord, Journal, NewFile

NOW = 1_700_000_000.0
VOLUME = "/srv/inbox"


@pytest.fixture
def pair(tmp_path: Path):
    """Two journals given the same history: one is written file by file, one in batches."""
    one, batched = (Journal.open(tmp_path / f"{name}.sqlite3") for name in ("one", "batch"))
    for journal in (one, batched):
        journal.group_commits()
    yield one, batched
    one.close()
    batched.close()


def history(journal: Journal, rng: random.Random) -> list[int]:
    """Datasets on two targets (one cancelled) and files in every state; their dataset ids."""
    datasets = []
    for n, (target, cancelled) in enumerate(
        [("a", False), ("a", False), ("b", False), ("a", True)]
    ):
        ds = journal.open_dataset(
            volume=VOLUME, folder=b"m%d" % n, name=f"m{n}", target=target, source=VOLUME,
            auto_process=True, quiet_s=600, now=NOW,
        )  # fmt: skip
        datasets.append(ds.id)
        for i in range(30):
            fid = journal.add_file(
                dataset_id=ds.id, volume=VOLUME, relpath=b"m%d/%d.jpg" % (n, i),
                dspath=b"%d.jpg" % i, size=10, mtime_ns=1, now=NOW,
            )  # fmt: skip
            if rng.random() < 0.2:
                continue  # never hashed
            journal.record_hash(
                fid, dataset_id=ds.id, size=10, mtime_ns=1, sha256=f"{rng.randrange(12):064x}",
                duplicate_scope=rng.choice(["target", "dataset"]), now=NOW,
            )  # fmt: skip
            fate = rng.random()
            row = journal.file(fid)
            if row.status == "waiting" and fate < 0.4:
                journal.mark_uploading(fid)
                journal.mark_uploaded(fid, row.dspath, NOW)
            elif row.status == "waiting" and fate < 0.5:
                journal.mark_failed(fid, "broken")
        if cancelled:
            journal.set_dataset_state(ds.id, "cancelled")
    journal.flush()
    return datasets


def records(journal: Journal, datasets: list[int], rng: random.Random) -> list[HashRecord]:
    """A batch as the hasher makes it: new files, unchanged ones, changed ones, repeats."""
    chosen = []
    for ds in datasets:
        for row in journal.files(ds):
            if rng.random() < 0.6:
                same = row.sha256 is not None and rng.random() < 0.3
                sha256 = row.sha256 if same else f"{rng.randrange(16):064x}"
                chosen.append(
                    HashRecord(
                        current=row, dataset_id=ds, size=11 if same else 10, mtime_ns=2,
                        sha256=sha256 or "", duplicate_scope=rng.choice(["target", "dataset"]),
                        spool_path=rng.choice([None, b"/spool/%d.img" % row.id]),
                    )
                )  # fmt: skip
    rng.shuffle(chosen)
    return chosen


def everything(journal: Journal, datasets: list[int]) -> list[FileRow]:
    return [row for ds in datasets for row in journal.files(ds)]


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_of_hashes_is_recorded_as_one_file_after_another_would_be(
    pair: tuple[Journal, Journal], seed: int
) -> None:
    one, batched = pair
    datasets = history(one, random.Random(seed))
    assert history(batched, random.Random(seed)) == datasets
    batch = records(one, datasets, random.Random(seed + 100))
    expected = [
        one.record_hash(
            r.current.id, dataset_id=r.dataset_id, size=r.size, mtime_ns=r.mtime_ns,
            sha256=r.sha256, duplicate_scope=r.duplicate_scope, now=NOW + 1,
            current=one.file(r.current.id), spool_path=r.spool_path,
        )
        for r in batch
    ]  # fmt: skip
    # The batch's rows were read before any of it was recorded, as the hasher reads them.
    assert batched.record_hashes(batch, NOW + 1) == expected
    one.flush()
    batched.flush()
    assert everything(batched, datasets) == everything(one, datasets)
    assert [batched.dataset(ds) for ds in datasets] == [one.dataset(ds) for ds in datasets]
    statuses = {row.status for row in expected}
    assert {"waiting", "duplicate", "uploaded"} <= statuses  # the seeds cover each outcome


def test_a_file_is_the_duplicate_of_one_recorded_before_it_in_the_same_batch(
    pair: tuple[Journal, Journal],
) -> None:
    _, journal = pair
    [ds] = history(journal, random.Random(0))[:1]
    new = journal.add_files(
        [NewFile(ds, VOLUME, b"new/%d.jpg" % i, b"%d.jpg" % i, 10, 1) for i in range(3)], NOW
    )
    rows = journal.find_files(new)
    recorded = journal.record_hashes(
        [HashRecord(rows[fid], ds, 10, 1, "e" * 64, "dataset") for fid in new], NOW
    )
    assert [row.status for row in recorded] == ["waiting", "duplicate", "duplicate"]
    assert [row.duplicate_of for row in recorded] == [None, new[0], new[0]]


def test_new_files_added_together_get_their_ids_in_order(pair: tuple[Journal, Journal]) -> None:
    one, batched = pair
    new = [
        NewFile(ds, VOLUME, b"c/%04d-\xff.jpg" % i, b"%04d.jpg" % i, i + 1, i)
        for i, ds in enumerate([1, 1, 2] * 400)  # more rows than one statement takes
    ]
    for journal in (one, batched):
        for name in ("m0", "m1"):
            journal.open_dataset(
                volume=VOLUME, folder=name.encode(), name=name, target="a", source=VOLUME,
                auto_process=True, quiet_s=600, now=NOW,
            )  # fmt: skip
    ids = [one.add_file(**f._asdict(), now=NOW + 3) for f in new]
    assert batched.add_files(new, NOW + 3) == ids
    rows = batched.find_files(ids)
    assert [(rows[i].relpath, rows[i].size) for i in ids] == [(f.relpath, f.size) for f in new]
    assert everything(batched, [1, 2]) == everything(one, [1, 2])
    assert batched.dataset(2).last_activity_at == NOW + 3  # its quiet period starts again


def test_a_batch_is_written_in_a_few_statements_however_many_files_it_holds(
    pair: tuple[Journal, Journal],
) -> None:
    _, journal = pair
    ds = history(journal, random.Random(2))[0]
    statements: list[str] = []
    journal._conn.set_trace_callback(statements.append)
    try:
        new = journal.add_files(
            [NewFile(ds, VOLUME, b"n/%d" % i, b"%d" % i, 10, 1) for i in range(400)], NOW
        )
        rows = journal.find_files(new)
        recorded = journal.record_hashes(
            [HashRecord(rows[f], ds, 10, 1, f"{f:064x}", "target", b"/s/%d" % f) for f in new],
            NOW,
        )
        taken = journal.take_uploads(NOW, 1000, exclude=[])
    finally:
        journal._conn.set_trace_callback(None)
    assert {row.id for row in recorded} <= {row.id for row in taken}
    # SQLite traces a statement once more for each row its counts' trigger runs for: a
    # statement repeated at once is the same one.
    issued = [s for n, s in enumerate(statements) if n == 0 or statements[n - 1] != s]
    writes = [s for s in issued if s.startswith(("INSERT", "UPDATE"))]
    # 400 = 256 + 64 + 64 + 16: four inserts, four updates of the hashes, one take, one touch
    assert len(writes) <= 10, writes


def test_batches_of_every_size_are_written_by_a_few_distinct_statements(
    pair: tuple[Journal, Journal],
) -> None:
    """Each distinct statement is compiled and cached by SQLite: their number stays bounded."""
    _, journal = pair
    ds = history(journal, random.Random(3))[0]
    statements: set[str] = set()
    journal._conn.set_trace_callback(statements.add)
    try:
        n = 0
        for size in range(1, 130):
            new = journal.add_files(
                [
                    NewFile(ds, VOLUME, b"s/%d" % (n + i), b"%d" % (n + i), 10, 1)
                    for i in range(size)
                ],
                NOW,
            )
            n += size
            rows = journal.find_files(new)
            journal.record_hashes(
                [HashRecord(rows[f], ds, 10, 1, f"{f:064x}", "target", b"/s/%d" % f) for f in new],
                NOW,
            )
            journal.mark_all_uploaded(
                [(row, row.dspath) for row in journal.take_uploads(NOW, size, [])], NOW
            )
    finally:
        journal._conn.set_trace_callback(None)
    # The trace shows each statement with its values bound: put the placeholders back.
    literal = re.compile(r"X'[0-9A-Fa-f]*'|'(?:[^']|'')*'|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")
    shapes = {literal.sub("?", statement) for statement in statements}
    assert len(shapes) <= 30, len(shapes)  # one shape per batch size would be hundreds


def test_a_seal_goes_with_its_hash_to_the_upload_and_a_new_hash_drops_it(
    pair: tuple[Journal, Journal],
) -> None:
    _, journal = pair
    ds = history(journal, random.Random(3))[0]
    new = journal.add_files(
        [NewFile(ds, VOLUME, b"s/%d" % i, b"s%d" % i, 10, 1) for i in (1, 2)], NOW
    )
    rows = journal.find_files(new)
    first, second = (
        HashRecord(rows[f], ds, 10, 1, f"{f + 99:064x}", "target", seal=-f) for f in new
    )
    journal.record_hashes([first, second], NOW)
    taken = {row.id: row.seal for row in journal.take_uploads(NOW, 1000, exclude=[])}
    assert (taken[new[0]], taken[new[1]]) == (-new[0], -new[1])
    # The same content read again without a seal keeps it; other content, read so, has none.
    journal.release(new[0])
    journal.release(new[1])
    again = journal.find_files(new)
    journal.record_hashes(
        [
            HashRecord(again[new[0]], ds, 10, 1, first.sha256, "target"),
            HashRecord(again[new[1]], ds, 10, 1, "f" * 64, "target"),
        ],
        NOW,
    )
    assert [journal.file(f).seal for f in new] == [-new[0], None]
