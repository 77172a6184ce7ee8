"""The journal's connection: opening, migrations, transactions and group commit.

:class:`JournalBase` holds what every part of :class:`~daemon.journal.Journal` shares: the one
connection, the transaction state, and the writer's cache of dataset rows (a write undone
drops it, a flush first writes the dataset activity it holds back).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Self, TypeVar

from daemon.errors import JournalError
from daemon.journal.rows import DatasetRow

JOURNAL_NAME = "journal.sqlite3"  # in ``state_dir``
# How often the service commits grouped writes, and the most a group holds.
GROUP_COMMIT_S = 0.2
GROUP_MAX = 2000
# A batch is read or written in chunks of these sizes only. SQLite compiles each distinct
# statement, and Python's sqlite3 keeps the last 128 compiled: a statement shaped for every
# batch size filled that cache with large programs (21 MB more after 133 sizes of batch).
CHUNK_SIZES = (256, 64, 16, 4, 1)
T = TypeVar("T")


def chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in consecutive chunks, each of one of :data:`CHUNK_SIZES`, largest first."""
    start = 0
    for size in CHUNK_SIZES:
        while len(items) - start >= size:
            yield items[start : start + size]
            start += size


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("daemon.journal") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


SCHEMA_VERSION = max(number for number, _ in _migrations())


class JournalBase:
    """The connection and the state the parts of the journal share; one writer's, one thread's."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._depth = 0
        self._opened = False  # the outermost transaction's savepoint was opened
        self.commits = 0  # for the "stopped" line: proof that writes are batched
        self._grouping = False
        self._pending = 0  # writes in the open group
        self._datasets: dict[int, DatasetRow] | None = None  # the one writer's cache of rows
        self._latest: dict[tuple[str, bytes], int] = {}  # (volume, folder) -> newest dataset
        # Dataset activity not yet written (group commits): one write per dataset per group
        # instead of one per file added; written before any read of dataset rows.
        self._touched: dict[int, float] = {}

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Self:
        """Open (and migrate, unless read-only) the journal at ``path``."""
        try:
            if readonly:
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None, timeout=10)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            journal = cls(conn, path)
            if not readonly:
                journal._migrate()
            elif journal.schema_version() != SCHEMA_VERSION:
                raise JournalError(
                    f"{path}: journal schema {journal.schema_version()} is not the expected"
                    f" {SCHEMA_VERSION}; start the daemon once to migrate it"
                )
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
        return journal

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def schema_version(self) -> int:
        """The applied migration number (SQLite ``user_version``)."""
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema {current} is newer than this dronesync"
                f" ({SCHEMA_VERSION}); upgrade dronesync"
            )
        for number, script in _migrations():
            if number <= current:
                continue
            # executescript() commits first; the script and the version bump go in together.
            self._conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    def integrity_ok(self) -> bool:
        """``PRAGMA integrity_check`` says ok."""
        return bool(self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    # -- transactions ----------------------------------------------------------------------

    def group_commits(self) -> None:
        """From now on, writes join one open transaction that :meth:`flush` commits.

        Only the daemon, the journal's one writer, groups its commits; it also keeps the
        dataset rows it has read in memory (every file step reads its dataset), which is
        right only because no other connection writes them.
        """
        self._grouping = True
        self._datasets = {}

    def flush(self) -> None:
        """Commit the open group of writes, if any."""
        if self._depth:
            return
        self._write_touches()
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc
        finally:
            self._pending = 0
        self.commits += 1

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one commit; nested uses join the outer transaction.

        The outermost use is a savepoint in the open transaction (begun if there is none): a
        failure undoes only its own writes. Without group commits it is committed at once;
        with them, by the next :meth:`flush`.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            with self._savepoint():
                yield
        finally:
            if not self._grouping:
                self.flush()

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """The savepoint of an outermost transaction, opened by its first write.

        In the daemon (group commits: the journal's one writer), a unit that writes nothing,
        such as a scan that meets only known files, costs no statement: each statement is a
        hand-over of the GIL, and the event loop makes thousands. Otherwise the write lock is
        taken at once, so the unit's reads see no other writer's changes before its writes.
        """
        self._depth = 1
        self._opened = False
        if not self._grouping:
            try:
                self._open_savepoint()
            except JournalError:
                self._depth = 0
                raise
        try:
            yield
        except BaseException:
            self._depth = 0
            if self._opened:
                self._undo_savepoint()
            raise
        self._depth = 0
        if not self._opened:
            return
        try:
            self._conn.execute("RELEASE write")
        except sqlite3.Error as exc:
            self._undo_savepoint()
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc
        self._pending += 1
        if self._pending >= GROUP_MAX:
            self.flush()

    def _open_savepoint(self) -> None:
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("SAVEPOINT write")
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc
        self._opened = True

    def _undo_savepoint(self) -> None:
        """Undo one write of the group; if SQLite dropped the whole group (a full disk), say so."""
        self._forget_datasets()
        if not self._conn.in_transaction:
            self._pending = 0
            raise JournalError(f"{self.path}: cannot write the journal: the last changes were lost")
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK TO write")
            self._conn.execute("RELEASE write")

    def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already (it does on a full disk)."""
        self._forget_datasets()
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self._write_fetch(sql, params, fetch=False)[0]

    def _write_fetch(
        self, sql: str, params: Iterable[Any] = (), *, fetch: bool = True
    ) -> tuple[sqlite3.Cursor, list[tuple[Any, ...]]]:
        """One write statement; with ``fetch``, the rows its RETURNING clause gave.

        The rows are read before anything is committed: SQLite refuses a commit while a
        statement is still returning rows.
        """
        if self._depth:  # inside transaction(): its savepoint covers this statement
            if not self._opened:
                self._open_savepoint()
            try:
                cursor = self._conn.execute(sql, tuple(params))
                return cursor, cursor.fetchall() if fetch else []
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc
        # One statement on its own needs no savepoint: SQLite undoes a failed statement and
        # keeps the transaction, unless the failure (a full disk) ends the transaction too,
        # which is said as for a group. Two statements fewer per file status change.
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            cursor = self._conn.execute(sql, tuple(params))
            rows = cursor.fetchall() if fetch else []
        except sqlite3.Error as exc:
            self._forget_datasets()
            if not self._grouping:
                self._rollback()
            elif not self._conn.in_transaction and self._pending:
                self._pending = 0
                raise JournalError(
                    f"{self.path}: cannot write the journal: {exc}; the last changes were lost"
                ) from exc
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc
        self._pending += 1
        if not self._grouping or self._pending >= GROUP_MAX:
            self.flush()
        return cursor, rows

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def _forget_datasets(self, dataset_id: int | None = None) -> None:
        """Drop cached dataset rows: one that was written, or all (a write was undone)."""
        if self._datasets is not None:
            if dataset_id is None:
                self._datasets.clear()
                self._latest.clear()  # a generation it names may have been undone
            else:
                self._datasets.pop(dataset_id, None)

    def _write_touches(self) -> None:
        touched, self._touched = self._touched, {}
        for dataset_id, now in touched.items():
            self._write(
                "UPDATE datasets SET last_activity_at = max(last_activity_at, ?) WHERE id = ?",
                (now, dataset_id),
            )
