"""Every name the benchmarks take from the daemon package and from ``tests/``.

The one module to change when one of them moves: nothing else in the benchmarks imports
``daemon`` or ``tests``, nor names their modules. The soak's harness is the exception: ``soak``
imports it from ``tests/`` itself, because moto, which it loads, hooks every botocore client
made after it in the process, and ``bench_targets`` times one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from daemon.cli import tune_process
from daemon.clock import SystemClock
from daemon.config import UploadSettings
from daemon.hashing import RACY_NS, Hashed, hash_file
from daemon.journal import FILE_COLUMNS, FileRow, HashRecord, Journal, NewFile
from daemon.targets.base import DatasetRef, MemoryState, Throttle, Transfer, UploadItem
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.nodeodm.target import NodeODMTarget
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.target import Pix4DCloudTarget
from daemon.targets.s3 import S3TargetConfig
from daemon.targets.s3.target import S3Target
from daemon.targets.webodm import WebODMTargetConfig
from daemon.targets.webodm.target import WebODMTarget
from daemon.upload.engine import UploadEngine
from daemon.upload.ratelimit import TokenBucket
from tests.bench.settle import PageCacheFiller, Settler

__all__ = [
    "DAEMON_IMPORTS",
    "DAEMON_MODULE",
    "FAKE_NODEODM",
    "FAKE_PIX4DCLOUD",
    "FAKE_S3",
    "FAKE_WEBODM",
    "FILE_COLUMNS",
    "RACY_NS",
    "DatasetRef",
    "FileRow",
    "HashRecord",
    "Hashed",
    "Journal",
    "MemoryState",
    "NewFile",
    "NodeODMTarget",
    "NodeODMTargetConfig",
    "PageCacheFiller",
    "Pix4DCloudTarget",
    "Pix4DCloudTargetConfig",
    "S3Target",
    "S3TargetConfig",
    "Settler",
    "SystemClock",
    "Throttle",
    "TokenBucket",
    "Transfer",
    "UploadEngine",
    "UploadItem",
    "UploadSettings",
    "WebODMTarget",
    "WebODMTargetConfig",
    "hash_file",
    "journal_connection",
    "tune_process",
    "write_fetch",
]

# Run as ``python -m MODULE``: the daemon, and the local servers of the HTTP targets.
DAEMON_MODULE = "daemon"
FAKE_NODEODM = "tests.fakes.nodeodm"
FAKE_PIX4DCLOUD = "tests.fakes.pix4dcloud"
FAKE_WEBODM = "tests.fakes.webodm"
FAKE_S3 = "tests.fakes.s3store"
# What the daemon imports before it can start (``python -c``, timed by scripts/bench).
DAEMON_IMPORTS = "import daemon.cli, daemon.service"


def journal_connection(journal: Journal) -> sqlite3.Connection:
    """The journal's connection (scripts/bench-queue adds the index its reference needs)."""
    return journal._conn


def write_fetch(journal: Journal, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """One write statement on the journal's writer; the rows of its RETURNING clause."""
    _, rows = journal._write_fetch(sql, params)
    return rows
