"""The restart scenario: a big card ingested once, then the daemon's start-up scan of it.

Also the journal's fsync calls per file, counted under strace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchkit.bench.card import make_card
from benchkit.bench.child import daemon_env
from benchkit.bench.harness import (
    GOAL_COMMITS_PER_FILE,
    GOAL_JOURNAL_SYNCS_PER_FILE,
    GOAL_RESTART,
    GOAL_RSS_MB,
    Bench,
    Row,
)
from benchkit.bench.ingest import daemon_ingest, memory_note
from benchkit.env import ROOT
from benchkit.files import KIB
from benchkit.project import DAEMON_IMPORTS
from benchkit.settling import remove
from benchkit.timing import best, progress, timed


def scandir_walk(root: Path) -> int:
    """What the start-up scan cannot do better than: os.scandir + stat of every entry."""
    count = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                entry.stat(follow_symlinks=False)
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def bench_restart(bench: Bench, pool: bytes) -> None:
    """A big card ingested once, then the daemon started again on it: its start-up scan."""
    args = bench.args
    files = args.restart_files
    label = f"{files} x {args.restart_kb:g} KiB"
    progress(f"restart: writing {label}")
    card = make_card(
        bench.work / "card-many", files, int(args.restart_kb * KIB), min(10, files), pool, label
    )
    progress(f"restart: first ingest of {label}")
    first = daemon_ingest(bench, card, "restart")
    commits = int(first.stopped["journal_commits"])
    progress(f"restart: first ingest {first.seconds:.1f} s ({files / first.seconds:.0f} files/s)")
    bench.add(f"first ingest, {label} (files/s)", files / first.seconds, higher=True)
    bench.add(f"peak RSS, {label} (MB)", first.proc.vm_hwm / 1e6, goal=GOAL_RSS_MB)
    name = f"journal commits per file, {files} files"
    bench.add(name, commits / files, goal=GOAL_COMMITS_PER_FILE)
    syncs_files = min(args.strace_files, files)
    name = f"journal fsyncs per file, {syncs_files} files"
    syncs = bench.add(name, 0.0, goal=GOAL_JOURNAL_SYNCS_PER_FILE)
    bench.notes.append(
        f"restart, first ingest: {first.seconds:.1f} s, {commits} journal commits,"
        f" files_hashed={first.stopped['files_hashed']},"
        f" {first.proc.cpu_s / files * 1e3:.2f} CPU ms/file; {memory_note(first.proc)}"
    )

    walk = best(lambda: timed(lambda: scandir_walk(card.root)), 3)
    imports = timed(python_imports)
    progress(f"restart: walk {walk:.3f} s; the daemon again")
    again = bench.start(bench.work / "restart" / "dronesync.toml", "restart-again")
    scanned = again.wait_event("first scan done", args.timeout)
    startup = scanned.at - again.started
    # A file re-hashed would be read within a tick or two of the scan: give it a moment.
    hold = time.monotonic() + args.restart_hold_s
    while time.monotonic() < hold:
        again.check_alive()
        time.sleep(0.05)
    stopped = again.stop()
    bench.problems("restart, second start", again)
    rehashed = int(stopped["files_hashed"])
    progress(f"restart: first scan done after {startup:.3f} s; files_hashed={rehashed}")
    online = again.event("source online")
    scan = scanned.at - (online.at if online is not None else again.started)
    bench.add(
        f"start-up scan, {files} files (s)",
        scan,
        reference="os.scandir + stat walk, best of 3",
        ref=walk,
        goal=GOAL_RESTART,
    )
    bench.add(
        f"process start to first scan done, {files} files (s)",
        startup,
        reference="os.scandir + stat walk, best of 3",
        ref=walk,
    )
    bench.add(
        f"the same less imports, {files} files (s)",
        max(startup - imports, 1e-6),
        reference="os.scandir + stat walk, best of 3",
        ref=walk,
    )
    bench.add("restart: files re-hashed", float(rehashed), goal=0)
    bench.notes.append(
        f"restart: start to 'first scan done' {startup:.3f} s (files_pending"
        f"={scanned.fields.get('files_pending')}); the interpreter and imports alone take"
        f" {imports:.3f} s (python -c '{DAEMON_IMPORTS}', once);"
        f" after the scan the daemon ran {args.restart_hold_s:g} s more before SIGTERM"
    )
    remove(bench.work / "restart", card.root)
    journal_syncs(bench, syncs, syncs_files, pool)


def journal_syncs(bench: Bench, row: Row, files: int, pool: bytes) -> None:
    """Fill ``row``: fsync-family calls on the journal per file, in an ingest under strace.

    A run of its own: strace slows the daemon down, the timed runs are not traced.
    """
    strace = shutil.which("strace") if bench.args.strace else None
    if strace is None:
        row.skip = "strace not found on PATH" if bench.args.strace else "--no-strace"
        return
    label = f"{files} x {bench.args.restart_kb:g} KiB"
    card = make_card(
        bench.work / "card-strace", files, int(bench.args.restart_kb * KIB), 10, pool, label
    )
    progress(f"journal: ingest of {label} under strace")
    run = daemon_ingest(bench, card, "strace", trace="fsync,fdatasync,syncfs,sync,sync_file_range")
    on_journal, elsewhere = count_syncs(run.strace, bench.work / "strace" / "state")
    row.ours = on_journal / files
    bench.notes.append(
        f"journal: an ingest of {label} under strace --seccomp-bpf (tracing only the fsync"
        f" family, {run.seconds:.1f} s): {on_journal} calls on the journal's files, {elsewhere}"
        f" elsewhere ({elsewhere / files:.2f}/file: the target's and the spool's durability)"
    )
    remove(bench.work / "strace", card.root)


def python_imports() -> None:
    """Start an interpreter that imports what the daemon imports at start."""
    subprocess.run(
        [sys.executable, "-c", DAEMON_IMPORTS],
        cwd=ROOT,
        env=daemon_env(),
        check=True,
    )


def count_syncs(trace: Path, state: Path) -> tuple[int, int]:
    """fsync-family calls in an strace log: (on the journal's files, elsewhere)."""
    journal = (f"<{state}/", f"<{state}>")  # its files, and the state folder itself
    on_journal = elsewhere = 0
    with trace.open(errors="replace") as fh:
        for line in fh:
            call = line.split(maxsplit=1)[-1]
            if call.startswith(("+++", "---", "<...")):
                continue  # exits, signals, and the ends of calls counted at their start
            if any(key in call for key in journal):
                on_journal += 1
            else:
                elsewhere += 1
    return on_journal, elsewhere
