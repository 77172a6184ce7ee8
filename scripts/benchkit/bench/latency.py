"""The latency scenario: files written one at a time into a watched folder, until uploaded."""

from __future__ import annotations

import os
import statistics
import time

from benchkit.bench.card import JPEG_SOI, write_config
from benchkit.bench.child import BenchError, Event
from benchkit.bench.harness import GOAL_LATENCY_S, Bench
from benchkit.bench.journal_reader import JournalReader
from benchkit.files import KIB
from benchkit.settling import remove
from benchkit.timing import progress

LATENCY_POLL_S = 0.01


def bench_latency(bench: Bench, stable_s: float) -> None:
    """Files written one at a time: close to upload start.

    Two clocks, each an upper bound on when the upload started: the file's status leaving
    'waiting' in the journal (polled; late by the journal's commit batching), and its
    "file uploaded" log line (late by the copy). The figure is the earlier of the two.
    """
    args = bench.args
    name = f"latency-{stable_s:g}"
    work = bench.work / name
    inbox, state, archive = work / "inbox", work / "state", work / "archive"
    (inbox / "mission").mkdir(parents=True)
    config = work / "dronesync.toml"
    write_config(config, state, archive, inbox, stable_s=stable_s)
    daemon = bench.start(config, name, uploaded_events=True)
    daemon.wait_event("first scan done", args.timeout)
    journal = JournalReader(state / "journal.sqlite3")
    in_journal: list[float] = []
    in_log: list[float] = []
    size = int(args.latency_kb * KIB)
    try:
        for i in range(args.latency_files):
            path = inbox / "mission" / f"DJI_{i:04d}.JPG"
            with path.open("wb") as fh:
                fh.write(JPEG_SOI + os.urandom(size - len(JPEG_SOI)))
            closed = time.perf_counter()
            deadline = time.monotonic() + stable_s + 60
            key = b"/" + path.name.encode()
            seen: float | None = None
            logged: Event | None = None
            while seen is None or logged is None:
                if seen is None and journal.status_of(key) not in (None, "waiting"):
                    seen = time.perf_counter() - closed
                logged = logged or daemon.event("file uploaded", i + 1)
                daemon.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"latency: {path.name} not uploaded after {stable_s + 60} s")
                time.sleep(LATENCY_POLL_S)
            in_journal.append(seen)
            in_log.append(logged.at - closed)
    finally:
        journal.close()
    daemon.stop()
    bench.problems(f"latency stable_s={stable_s:g}", daemon)
    remove(work)
    started = [min(pair) for pair in zip(in_journal, in_log, strict=True)]
    median, worst = statistics.median(started), max(started)
    progress(f"latency stable_s={stable_s:g}: median {median:.3f} s, max {worst:.3f} s")
    for what, value in (("median", median), ("max", worst)):
        name = f"close to upload start, stable_s={stable_s:g}, {what} (s)"
        bench.add(name, value, goal=stable_s + GOAL_LATENCY_S)
    earlier = sum(log < seen for log, seen in zip(in_log, in_journal, strict=True))
    bench.notes.append(
        f"latency stable_s={stable_s:g}: {len(started)} files of {args.latency_kb:g} KiB, one at"
        f" a time; close to the status leaving 'waiting' in the journal (polled every"
        f" {LATENCY_POLL_S * 1e3:.0f} ms): median {statistics.median(in_journal):.3f} s, max"
        f" {max(in_journal):.3f} s; close to the 'file uploaded' log line: median"
        f" {statistics.median(in_log):.3f} s, max {max(in_log):.3f} s; the log line came"
        f" first for {earlier} of {len(started)} files (the figure: the earlier of the two)"
    )
