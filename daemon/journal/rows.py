"""Rows the journal reads and writes, the column lists that read them, and the statuses."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

FILE_STATUSES = ("waiting", "uploading", "uploaded", "duplicate", "failed", "skipped")
DATASET_STATES = (
    "collecting",
    "ready",
    "processing",
    "processed",
    "failed",
    "cancelled",
    "paused",
)
DONE_STATUSES = ("uploaded", "duplicate")
# A dataset in these states takes no more files: later files start a new generation.
CLOSED_STATES = ("processing", "processed", "failed")


@dataclass(frozen=True, slots=True)
class DatasetRow:
    """One dataset: the files of one folder that are processed together."""

    id: int
    name: str
    target: str
    source: str
    volume: str
    folder: bytes
    generation: int
    state: str
    auto_process: bool
    quiet_s: float
    created_at: float
    last_activity_at: float
    processing_started_at: float | None
    processing_finished_at: float | None
    processing_handle: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class FileRow:
    """One file of a dataset, with its upload status."""

    id: int
    dataset_id: int
    volume: str
    relpath: bytes
    dspath: bytes
    size: int
    mtime_ns: int
    sha256: str | None
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: float
    remote_key: bytes | None
    duplicate_of: int | None
    discovered_at: float
    uploaded_at: float | None
    spool_path: bytes | None = None  # the verified local copy, in spool mode
    seal: int | None = None  # daemon.hashing.seal_of the file read, when it was hashed


# Rows are read by explicit column lists in the dataclasses' field order, so a tuple from
# SQLite becomes a row positionally (a dict per row cost half of every read).
FILE_COLUMNS = ", ".join(f.name for f in fields(FileRow))
FILE_COLUMNS_F = ", ".join(f"f.{f.name}" for f in fields(FileRow))  # in a join, as ``files f``
DATASET_COLUMNS = ", ".join(f.name for f in fields(DatasetRow))
KNOWN_COLUMNS = "relpath, id, dataset_id, size, mtime_ns, sha256 IS NOT NULL, status"


class Known(NamedTuple):
    """What the scanner needs to know about a file with work left, or one it meets changed.

    Files with nothing left to do are not held: a scan reads them a folder at a time
    (:meth:`Journal.folder_files`), and a record only for one that changed. It keeps whether
    the file was hashed, not the hash (64 characters the scanner never reads).
    """

    id: int
    dataset_id: int
    size: int
    mtime_ns: int
    hashed: bool
    status: str


class NewFile(NamedTuple):
    """A file seen for the first time, to be recorded as waiting (:meth:`Journal.add_files`)."""

    dataset_id: int
    volume: str
    relpath: bytes
    dspath: bytes
    size: int
    mtime_ns: int


class HashRecord(NamedTuple):
    """A file's hash to record (:meth:`Journal.record_hashes`); arguments of ``record_hash``."""

    current: FileRow  # the file's row as the caller has just read it
    dataset_id: int
    size: int
    mtime_ns: int
    sha256: str
    duplicate_scope: str
    spool_path: bytes | None = None
    seal: int | None = None


@dataclass(frozen=True, slots=True)
class DatasetCounts:
    """Per-status file counts and byte totals of one dataset."""

    files: dict[str, int]
    bytes_total: int
    bytes_uploaded: int
    pending_hash: int
