"""The SQLite journal, on real database files: schema, duplicates, recovery, generations."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from daemon.errors import JournalError
from daemon.journal import SCHEMA_VERSION, Journal

NOW = 1_700_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def journal(path: Path):
    opened = Journal.open(path)
    yield opened
    opened.close()


def dataset(journal: Journal, name: str, *, target: str = "archive", folder: bytes = b"") -> int:
    return journal.open_dataset(
        volume="/srv/inbox",
        folder=folder or name.encode(),
        name=name,
        target=target,
        source="/srv/inbox",
        auto_process=True,
        quiet_s=600,
        now=NOW,
    ).id


def add(journal: Journal, ds: int, rel: bytes, sha: str, scope: str = "target") -> int:
    """Add a file as the scanner would and record its hash; returns its id."""
    fid = journal.add_file(
        dataset_id=ds,
        volume="/srv/inbox",
        relpath=rel,
        dspath=rel.rpartition(b"/")[2],
        size=10,
        mtime_ns=1,
        now=NOW,
    )
    journal.record_hash(
        fid, dataset_id=ds, size=10, mtime_ns=1, sha256=sha, duplicate_scope=scope, now=NOW
    )
    return fid


def test_a_new_journal_is_migrated_in_wal_mode_and_intact(journal: Journal, path: Path) -> None:
    assert journal.schema_version() == SCHEMA_VERSION
    assert journal.integrity_ok()
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        other.close()
    assert {"datasets", "files"} <= tables


def test_reopening_keeps_the_data_and_migrates_nothing_twice(journal: Journal, path: Path) -> None:
    ds = dataset(journal, "m1")
    add(journal, ds, b"m1/a.jpg", "h1")
    journal.close()
    for _ in range(2):
        again = Journal.open(path)
        assert again.schema_version() == SCHEMA_VERSION
        assert again.integrity_ok()
        assert [f.relpath for f in again.files(ds)] == [b"m1/a.jpg"]
        again.close()


def test_a_journal_from_a_newer_dronesync_is_refused(journal: Journal, path: Path) -> None:
    journal.close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(JournalError, match="upgrade dronesync"):
        Journal.open(path)
    with pytest.raises(JournalError, match="not the expected"):
        Journal.open(path, readonly=True)


def test_read_only_open_of_a_missing_journal_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open the journal"):
        Journal.open(tmp_path / "nothing.sqlite3", readonly=True)
    assert not (tmp_path / "nothing.sqlite3").exists()


def test_same_content_in_two_datasets_of_one_target_is_a_duplicate(journal: Journal) -> None:
    first = dataset(journal, "m1")
    second = dataset(journal, "m2")
    original = add(journal, first, b"m1/a.jpg", "h1")
    copy = add(journal, second, b"m2/b.jpg", "h1")
    assert journal.file(original).status == "waiting"
    row = journal.file(copy)
    assert row.status == "duplicate"
    assert row.duplicate_of == original


def test_same_content_for_another_target_is_not_a_duplicate(journal: Journal) -> None:
    ours = dataset(journal, "m1", target="archive")
    theirs = dataset(journal, "m2", target="nas")
    add(journal, ours, b"m1/a.jpg", "h1")
    assert journal.file(add(journal, theirs, b"m2/a.jpg", "h1")).status == "waiting"


def test_dataset_scope_only_finds_duplicates_inside_the_dataset(journal: Journal) -> None:
    first = dataset(journal, "m1")
    second = dataset(journal, "m2")
    add(journal, first, b"m1/a.jpg", "h1", scope="dataset")
    assert journal.file(add(journal, second, b"m2/a.jpg", "h1", scope="dataset")).status == (
        "waiting"
    )
    again = add(journal, first, b"m1/sub/a-copy.jpg", "h1", scope="dataset")
    assert journal.file(again).status == "duplicate"


def test_sent_files_list_duplicates_with_their_original_s_key(journal: Journal) -> None:
    ds = dataset(journal, "m1")
    other = dataset(journal, "m2")
    original = add(journal, ds, b"m1/a.jpg", "h1", scope="dataset")
    add(journal, ds, b"m1/sub/b.jpg", "h1", scope="dataset")  # a duplicate of a.jpg
    add(journal, ds, b"m1/c.jpg", "h2", scope="dataset")  # not sent yet: not listed
    add(journal, other, b"m2/a.jpg", "h1")  # another dataset's
    assert journal.sent_files(ds) == [(b"b.jpg", 10, 1, "h1", None)]
    journal.mark_uploaded(original, b"objects/h1", NOW)
    assert journal.sent_files(ds) == [
        (b"a.jpg", 10, 1, "h1", b"objects/h1"),
        (b"b.jpg", 10, 1, "h1", b"objects/h1"),
    ]


def test_content_in_a_cancelled_dataset_is_sent_again(journal: Journal) -> None:
    cancelled = dataset(journal, "m1")
    add(journal, cancelled, b"m1/a.jpg", "h1")
    journal.set_dataset_state(cancelled, "cancelled")
    fresh = dataset(journal, "m2")
    assert journal.file(add(journal, fresh, b"m2/a.jpg", "h1")).status == "waiting"


def test_an_uploaded_file_seen_again_with_a_new_mtime_is_not_sent_again(
    journal: Journal,
) -> None:
    ds = dataset(journal, "m1")
    fid = add(journal, ds, b"m1/a.jpg", "h1")
    journal.mark_uploading(fid)
    journal.mark_uploaded(fid, b"a.jpg", NOW)
    # a FAT card read in another time zone: same bytes, shifted mtime
    shifted = 3_600 * 10**9
    row = journal.record_hash(
        fid,
        dataset_id=ds,
        size=10,
        mtime_ns=shifted,
        sha256="h1",
        duplicate_scope="target",
        now=NOW,
    )
    assert row.status == "uploaded"
    assert row.mtime_ns == shifted
    assert row.remote_key == b"a.jpg"
    # new content under the same name is a new upload
    changed = journal.record_hash(
        fid, dataset_id=ds, size=11, mtime_ns=5, sha256="h2", duplicate_scope="target", now=NOW
    )
    assert (changed.status, changed.remote_key) == ("waiting", None)


def test_recover_puts_interrupted_uploads_back_to_waiting(journal: Journal) -> None:
    ds = dataset(journal, "m1")
    interrupted = add(journal, ds, b"m1/a.jpg", "h1")
    done = add(journal, ds, b"m1/b.jpg", "h2")
    journal.mark_uploading(interrupted)
    journal.mark_uploading(done)
    journal.mark_uploaded(done, b"b.jpg", NOW)
    assert journal.recover() == 1
    assert journal.file(interrupted).status == "waiting"
    assert journal.file(done).status == "uploaded"
    assert journal.recover() == 0
    assert journal.file(interrupted).attempts == 0  # a crash is not the file's fault
    assert [f.id for f in journal.take_uploads(NOW, 10, exclude=[])] == [interrupted]


def test_retry_failed_gives_failed_files_fresh_attempts(journal: Journal) -> None:
    first = dataset(journal, "m1")
    second = dataset(journal, "m2")
    a = add(journal, first, b"m1/a.jpg", "h1")
    b = add(journal, second, b"m2/b.jpg", "h2")
    for fid in (a, b):
        journal.mark_uploading(fid)
        journal.mark_failed(fid, "HTTP 403")
    assert journal.retry_failed(first) == 1
    row = journal.file(a)
    assert (row.status, row.attempts, row.last_error) == ("waiting", 0, None)
    assert journal.file(b).status == "failed"
    assert journal.retry_failed(None) == 1
    assert journal.file(b).status == "waiting"


def test_files_after_processing_started_go_to_name_2(journal: Journal) -> None:
    first = dataset(journal, "mission")
    assert dataset(journal, "mission") == first  # still collecting: same dataset
    journal.set_dataset_state(first, "processing", processing_started_at=NOW)
    second = dataset(journal, "mission")
    assert second != first
    assert journal.dataset(second).name == "mission-2"
    assert journal.dataset(second).generation == 2
    assert dataset(journal, "mission") == second  # no mission-3 while -2 is open
    journal.set_dataset_state(second, "processed", processing_started_at=NOW)
    assert journal.dataset(dataset(journal, "mission")).name == "mission-3"


def test_a_name_taken_by_another_folder_gets_a_suffix(journal: Journal) -> None:
    dataset(journal, "mission", folder=b"cardA/mission")
    other = dataset(journal, "mission", folder=b"cardB/mission")
    assert journal.dataset(other).name == "mission.2"


def test_a_reader_opens_while_the_writer_holds_a_transaction(journal: Journal, path: Path) -> None:
    ds = dataset(journal, "m1")
    add(journal, ds, b"m1/a.jpg", "h1")
    reader = Journal.open(path, readonly=True)
    try:
        with journal.transaction():
            add(journal, ds, b"m1/b.jpg", "h2")
            # the writer's uncommitted row is invisible, and the reader is not blocked
            late = Journal.open(path, readonly=True)
            assert [f.relpath for f in late.files(ds)] == [b"m1/a.jpg"]
            late.close()
            assert len(reader.files(ds)) == 1
        assert [f.relpath for f in reader.files(ds)] == [b"m1/a.jpg", b"m1/b.jpg"]
        with pytest.raises(JournalError, match="readonly"):
            reader.mark_failed(reader.files(ds)[0].id, "a reader never writes")
    finally:
        reader.close()


def test_names_that_are_not_utf8_round_trip_as_bytes(journal: Journal, path: Path) -> None:
    folder = b"vol\xe9"
    ds = dataset(journal, "vol", folder=folder)
    rel = b"vol\xe9/caf\xe9 \xff\n.jpg"
    fid = add(journal, ds, rel, "h1")
    journal.mark_uploading(fid)
    journal.mark_uploaded(fid, b"caf\xe9 \xff\n.jpg", NOW)
    reader = Journal.open(path, readonly=True)
    try:
        row = reader.files(ds)[0]
        assert row.relpath == rel
        assert row.dspath == b"caf\xe9 \xff\n.jpg"
        assert reader.folder_files("/srv/inbox", folder)[rel] == (10, 1, True)
        known = reader.known_file("/srv/inbox", rel)
        assert known is not None
        assert known.id == fid
        assert reader.uploaded_keys(ds) == [b"caf\xe9 \xff\n.jpg"]
        assert reader.dataset(ds).folder == folder
    finally:
        reader.close()


def test_a_failed_write_inside_a_transaction_rolls_everything_back(journal: Journal) -> None:
    ds = dataset(journal, "m1")

    def add_twice() -> None:
        with journal.transaction():
            add(journal, ds, b"m1/a.jpg", "h1")
            add(journal, ds, b"m1/a.jpg", "h1")  # same path twice: UNIQUE constraint

    with pytest.raises(JournalError, match="UNIQUE"):
        add_twice()
    assert journal.files(ds) == []
    assert journal.integrity_ok()


def test_a_journal_of_the_first_schema_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    first = (resources.files("daemon.journal") / "migrations" / "0001_initial.sql").read_text()
    conn = sqlite3.connect(path)
    conn.executescript(first + "\nPRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO datasets (name, target, source, volume, folder, quiet_s, created_at,"
        " last_activity_at) VALUES ('m', 'a', '/in', '/in', x'6d', 60, 1, 1)"
    )
    conn.execute(
        "INSERT INTO files (dataset_id, volume, relpath, dspath, size, mtime_ns, sha256, status,"
        " discovered_at) VALUES (1, '/in', x'6d2f612e6a7067', x'612e6a7067', 5, 1, 'ab',"
        " 'uploaded', 1)"
    )
    conn.commit()
    conn.close()
    journal = Journal.open(path)
    try:
        assert journal.schema_version() == SCHEMA_VERSION
        assert journal.integrity_ok()
        (row,) = journal.files(1)
        assert (row.relpath, row.status, row.sha256, row.spool_path) == (
            b"m/a.jpg",
            "uploaded",
            "ab",
            None,
        )
        journal.mark_skipped(row.id, "empty file", "e3b0")  # the new status is accepted
        assert journal.file(row.id).status == "skipped"
        journal.put_memo(1, "k", "v")
        assert journal.get_memo(1, "k") == "v"
    finally:
        journal.close()


# -- group commit (the daemon's mode) ------------------------------------------------------


def _reader_statuses(path: Path) -> dict[int, str]:
    """What `dronesync status` (another process, read-only) sees."""
    reader = Journal.open(path, readonly=True)
    try:
        return {f.id: f.status for ds in reader.datasets() for f in reader.files(ds.id)}
    finally:
        reader.close()


def test_grouped_writes_are_seen_by_the_daemon_at_once_and_by_readers_after_flush(
    journal: Journal, path: Path
) -> None:
    journal.group_commits()
    ds = dataset(journal, "m1")
    ids = [add(journal, ds, f"f{i}.jpg".encode(), f"{i:064x}") for i in range(50)]
    for fid in ids:
        journal.mark_uploading(fid)
        journal.mark_uploaded(fid, b"key", NOW)
    assert {f.status for f in journal.files(ds)} == {"uploaded"}  # the writer's own view
    assert _reader_statuses(path) == {}  # nothing committed yet: one group
    before = journal.commits
    journal.flush()
    assert journal.commits == before + 1
    assert set(_reader_statuses(path).values()) == {"uploaded"}


def test_a_target_memo_commits_at_once_with_everything_before_it(
    journal: Journal, path: Path
) -> None:
    journal.group_commits()
    ds = dataset(journal, "m1")
    fid = add(journal, ds, b"a.jpg", "a" * 64)
    journal.mark_uploaded(fid, b"a.jpg", NOW)
    journal.put_memo(ds, "task", "uuid-1")  # the target calls the server right after this
    assert _reader_statuses(path) == {fid: "uploaded"}
    reader = Journal.open(path, readonly=True)
    assert reader.get_memo(ds, "task") == "uuid-1"
    reader.close()


def test_a_failed_write_in_a_group_undoes_only_itself(journal: Journal, path: Path) -> None:
    journal.group_commits()
    ds = dataset(journal, "m1")
    kept = add(journal, ds, b"kept.jpg", "b" * 64)

    def fail_halfway() -> None:
        with journal.transaction():
            journal.mark_failed(kept, "this change is undone")
            add(journal, ds, b"kept.jpg", "b" * 64)  # same path twice: UNIQUE constraint

    with pytest.raises(JournalError, match="UNIQUE"):
        fail_halfway()
    journal.flush()
    assert _reader_statuses(path) == {kept: "waiting"}


def test_a_kill_loses_only_the_open_group(path: Path) -> None:
    """A process killed between commits leaves the last committed state, intact."""
    journal = Journal.open(path)
    journal.group_commits()
    ds = dataset(journal, "m1")
    first = add(journal, ds, b"a.jpg", "c" * 64)
    journal.flush()
    journal.mark_uploaded(first, b"a.jpg", NOW)  # in the open group when "killed"
    journal._conn.close()  # no commit: what SIGKILL leaves behind
    again = Journal.open(path)
    assert again.integrity_ok()
    assert again.file(first).status == "waiting"  # sent again; the target knows it has it
    again.close()


def test_the_daemon_sees_each_change_of_a_dataset_it_keeps_in_memory(journal: Journal) -> None:
    journal.group_commits()  # the daemon's mode: dataset rows are kept between reads
    ds = dataset(journal, "m1")
    assert journal.dataset(ds).state == "collecting"
    journal.touch_dataset(ds, NOW + 50)
    journal.set_dataset_detail(ds, "signed out")
    journal.set_dataset_settings(ds, auto_process=False, quiet_s=7)
    journal.set_dataset_state(ds, "ready")
    seen = journal.dataset(ds)
    assert (seen.last_activity_at, seen.detail, seen.auto_process, seen.quiet_s, seen.state) == (
        NOW + 50,
        None,  # a state change clears the detail
        False,
        7,
        "ready",
    )
    assert seen == next(d for d in journal.datasets() if d.id == ds)  # what the table holds

    def fail_halfway() -> None:
        with journal.transaction():
            journal.set_dataset_detail(ds, "this change is undone")
            assert journal.dataset(ds).detail == "this change is undone"  # read, so kept
            add(journal, ds, b"a.jpg", "a" * 64)
            add(journal, ds, b"a.jpg", "a" * 64)  # same path twice: UNIQUE constraint

    with pytest.raises(JournalError, match="UNIQUE"):
        fail_halfway()
    assert journal.dataset(ds).detail is None


def test_a_hash_recorded_again_changes_only_what_differs(journal: Journal) -> None:
    ds = dataset(journal, "m1")
    fid = add(journal, ds, b"a.jpg", "d" * 64)
    journal.mark_failed(fid, "read error")
    row = journal.record_hash(
        fid, dataset_id=ds, size=10, mtime_ns=1, sha256="d" * 64, duplicate_scope="target", now=NOW
    )
    assert (row.status, row.last_error, row.attempts) == ("waiting", None, 0)
    assert row == journal.file(fid)  # the row returned is the row stored


def test_the_hash_cache_splits_settled_files_from_files_with_work_left(journal: Journal) -> None:
    ds = dataset(journal, "m1")
    done = add(journal, ds, b"done.jpg", "e" * 64)
    journal.mark_uploaded(done, b"done.jpg", NOW)
    waiting = add(journal, ds, b"waiting.jpg", "f" * 64)
    unhashed = journal.add_file(
        dataset_id=ds, volume="/srv/inbox", relpath=b"new.jpg", dspath=b"new.jpg", size=3,
        mtime_ns=2, now=NOW,
    )  # fmt: skip
    unreadable = journal.add_file(
        dataset_id=ds, volume="/srv/inbox", relpath=b"bad.jpg", dspath=b"bad.jpg", size=4,
        mtime_ns=2, now=NOW,
    )  # fmt: skip
    journal.mark_failed(unreadable, "read error")  # failed before it was ever hashed
    assert journal.folder_files("/srv/inbox", b"") == {
        b"done.jpg": (10, 1, True),
        b"waiting.jpg": (10, 1, False),
        b"new.jpg": (3, 2, False),
        b"bad.jpg": (4, 2, False),
    }
    open_files = journal.open_files("/srv/inbox")
    assert {rel: k.id for rel, k in open_files.items()} == {
        b"waiting.jpg": waiting,
        b"new.jpg": unhashed,
        b"bad.jpg": unreadable,
    }
    assert journal.open_files("/elsewhere") == {}
    assert journal.known_file("/srv/inbox", b"missing.jpg") is None


def test_a_file_that_vanished_before_its_hash_is_forgotten_and_found_no_more(
    journal: Journal,
) -> None:
    ds = dataset(journal, "a")
    unhashed = journal.add_file(
        dataset_id=ds,
        volume="/srv/inbox",
        relpath=b"a/x.jpg",
        dspath=b"x.jpg",
        size=10,
        mtime_ns=1,
        now=NOW,
    )
    hashed = add(journal, ds, b"a/y.jpg", "1" * 64)
    assert journal.find_file(unhashed) == journal.file(unhashed)
    journal.forget_unhashed(unhashed)
    journal.forget_unhashed(hashed)  # a hashed file is kept: it is in a plan
    assert journal.find_file(unhashed) is None
    found = journal.find_file(hashed)
    assert found is not None
    assert found.sha256 == "1" * 64


def test_a_batch_of_uploads_is_recorded_with_each_files_own_key(journal: Journal) -> None:
    journal.group_commits()
    ds = dataset(journal, "m1")
    same = add(journal, ds, b"a.jpg", "a" * 64)
    renamed = add(journal, ds, b"b.jpg", "b" * 64)
    journal.set_spool(same, b"/spool/1.img")
    rows = [journal.file(same), journal.file(renamed)]
    journal.mark_all_uploaded([(rows[0], b"a.jpg"), (rows[1], b"b~2.jpg")], NOW)
    after = {f.id: f for f in journal.files(ds)}
    assert after[same].remote_key == b"a.jpg"
    assert after[renamed].remote_key == b"b~2.jpg"  # taken a free name on the target
    assert {f.status for f in after.values()} == {"uploaded"}
    assert after[same].spool_path is None  # the copy is no longer needed


def test_files_are_taken_for_upload_oldest_due_first_and_marked_uploading(
    journal: Journal,
) -> None:
    ds = dataset(journal, "m1")
    first, second, parked, later = (add(journal, ds, b"%d.jpg" % i, f"{i:064x}") for i in range(4))
    add(journal, dataset(journal, "gone"), b"gone/a.jpg", "e" * 64)
    journal.set_dataset_state(journal.dataset_by_name("gone").id, "cancelled")  # type: ignore[union-attr]
    journal.mark_retry(parked, "timed out", NOW + 60)
    journal.rehash(later, "changed on the card")  # no hash: not ready to send
    taken = journal.take_uploads(NOW, 10, exclude=[second])
    assert [row.id for row in taken] == [first]
    assert [(row.status, row.attempts) for row in taken] == [("uploading", 1)]
    assert journal.file(first).status == "uploading"
    assert [row.id for row in journal.take_uploads(NOW + 61, 10, exclude=[])] == [second, parked]
    assert journal.take_uploads(NOW + 61, 10, exclude=[]) == []  # each file is taken once


def test_activity_kept_in_memory_is_written_before_datasets_are_read(
    journal: Journal, path: Path
) -> None:
    journal.group_commits()
    ds = dataset(journal, "m1")
    journal.touch_dataset(ds, NOW + 5)
    journal.touch_dataset(ds, NOW + 9)
    assert journal.dataset(ds).last_activity_at == NOW + 9  # the daemon's own view
    assert next(d for d in journal.datasets() if d.id == ds).last_activity_at == NOW + 9
    journal.flush()
    reader = Journal.open(path, readonly=True)
    assert reader.dataset(ds).last_activity_at == NOW + 9  # and what others read
    reader.close()


def test_a_unit_of_work_that_writes_nothing_commits_nothing(journal: Journal) -> None:
    journal.group_commits()
    dataset(journal, "m1")
    journal.flush()
    before = journal.commits
    with journal.transaction():
        journal.datasets()  # a scan that met only known files
    journal.flush()
    assert journal.commits == before


@pytest.mark.parametrize("scope", ["dataset", "target"])
def test_recording_a_hash_costs_no_more_in_a_big_dataset_than_in_a_small_one(
    journal: Journal, scope: str
) -> None:
    """The duplicate check looks the hash up; it does not read through the dataset's files.

    (It did with a dataset's scope, the default of NodeODM and PIX4Dcloud targets: the
    ingest of a card was quadratic in its number of images.)
    """

    def steps_to_record(count: int) -> int:
        ds = dataset(journal, f"{scope}-{count}")
        with journal.transaction():
            for i in range(count):
                add(journal, ds, b"%d/%d" % (count, i), f"{count:08x}{i:056x}", scope)
        fid = journal.add_file(
            dataset_id=ds, volume="/srv/inbox", relpath=b"%d/new" % count, dspath=b"new", size=10,
            mtime_ns=1, now=NOW,
        )  # fmt: skip
        steps = [0]

        def count_steps() -> int:
            steps[0] += 1
            return 0  # go on

        journal._conn.set_progress_handler(count_steps, 100)  # every 100 SQLite VM steps
        try:
            journal.record_hash(
                fid, dataset_id=ds, size=10, mtime_ns=1, sha256="f" * 64,
                duplicate_scope=scope, now=NOW,
            )  # fmt: skip
        finally:
            journal._conn.set_progress_handler(None, 0)
        return steps[0]

    small, big = steps_to_record(50), steps_to_record(2000)
    assert big <= 2 * small + 2, (small, big)


def test_troubles_name_the_reason_of_files_failed_before_any_upload(journal: Journal) -> None:
    ds = dataset(journal, "m1")
    unreadable = add(journal, ds, b"m1/a.jpg", "h1")
    journal.mark_failed(unreadable, "cannot read: Input/output error")  # by the hasher
    assert journal.troubles() == {ds: {"failed": (1, "cannot read: Input/output error")}}


def test_file_count_counts_only_files_sure_to_be_sent(journal: Journal) -> None:
    """NodeODM's maxImages check: a file still to be hashed may yet be a duplicate."""
    ds = dataset(journal, "m1")
    add(journal, ds, b"m1/a.jpg", "h1")
    add(journal, ds, b"m1/b.jpg", "h1")  # the same content: a duplicate
    journal.mark_failed(add(journal, ds, b"m1/c.jpg", "h3"), "cannot read")
    journal.add_file(
        dataset_id=ds,
        volume="/srv/inbox",
        relpath=b"m1/d.jpg",
        dspath=b"d.jpg",
        size=1,
        mtime_ns=1,
        now=NOW,
    )  # not hashed yet
    assert journal.file_count(ds) == 1


def test_a_folder_s_files_are_read_without_those_of_its_sub_folders_or_neighbours(
    journal: Journal,
) -> None:
    ds = dataset(journal, "m1")
    for rel in (b"m1/a.jpg", b"m1/sub/b.jpg", b"m10/c.jpg", b"m1.jpg", b"m1/\xff.jpg"):
        add(journal, ds, rel, "e" * 64)
    assert set(journal.folder_files("/srv/inbox", b"m1")) == {b"m1/a.jpg", b"m1/\xff.jpg"}
    assert set(journal.folder_files("/srv/inbox", b"m1/sub")) == {b"m1/sub/b.jpg"}
    assert set(journal.folder_files("/srv/inbox", b"")) == {b"m1.jpg"}
    assert journal.folder_files("/srv/other", b"m1") == {}
