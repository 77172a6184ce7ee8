"""The ingest and spool scenarios: a card ingested by the daemon, copied by the references."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit.bench.card import Card, card_shape, make_card, write_config
from benchkit.bench.child import BenchError
from benchkit.bench.harness import GOAL_INGEST, GOAL_READS, GOAL_READS_SPOOL, GOAL_RSS_MB, Bench
from benchkit.bench.journal_reader import JournalReader, wait_uploaded
from benchkit.files import KIB, MIB, files_under, sha256_file
from benchkit.procfs import ProcFigures
from benchkit.settling import remove, settle
from benchkit.smallcpu import CardImage, maybe_inside
from benchkit.timing import progress, timed


def bench_idle(bench: Bench) -> None:
    """The daemon on an empty folder, just after its first scan: start-up reads and memory."""
    work = bench.work / "idle"
    (work / "inbox").mkdir(parents=True)
    config = work / "dronesync.toml"
    write_config(config, work / "state", work / "archive", work / "inbox", stable_s=0)
    daemon = bench.start(config, "idle")
    daemon.wait_event("first scan done", bench.args.timeout)
    bench.idle = daemon.figures()
    daemon.stop()
    remove(work)
    rss, reads = bench.idle.vm_hwm / 1e6, bench.idle.rchar / 1e6
    progress(f"idle daemon: peak RSS {rss:.0f} MB, {reads:.1f} MB read at start-up")
    bench.add("peak RSS, idle daemon after its first scan (MB)", rss)
    bench.notes.append(
        f"idle daemon (an empty folder, just after its first scan): peak RSS {rss:.1f} MB,"
        f" rchar {reads:.1f} MB (modules and the journal; subtracted from each ingest's rchar)"
    )


def disk_rate(bench: Bench) -> float:
    """The disk's durable write rate (MB/s): dd of zeros with conv=fsync."""
    target = bench.work / "dd.bin"
    settle()
    dd = shutil.which("dd") or "dd"
    argv = [dd, "if=/dev/zero", f"of={target}", "bs=1M", f"count={bench.args.dd_mb}"]
    seconds = timed(lambda: subprocess.run([*argv, "conv=fsync"], check=True, capture_output=True))
    target.unlink()
    settle()
    rate: float = bench.args.dd_mb * MIB / 1e6 / seconds
    progress(f"dd conv=fsync {bench.args.dd_mb} MiB: {rate:.0f} MB/s")
    return rate


def cp_reference(bench: Bench, card: Card, dest: Path, *, sync: bool) -> float:
    """``cp -r`` of the card, sha256 of every copied file (and ``sync``): seconds.

    The CPU seconds it took (cp's and this process's hashing) go to ``bench.ref_cpu``.
    """
    remove(dest)
    settle()
    cp = shutil.which("cp") or "cp"
    mounted = card.image.mounted(card.root) if card.image else contextlib.nullcontext()

    def run() -> None:
        subprocess.run([cp, "-r", str(card.root), str(dest)], check=True)
        count = 0
        for path in files_under(dest):
            sha256_file(path)
            count += 1
        if count != card.files:
            raise BenchError(f"cp -r copied {count} files, not {card.files}")
        if sync:
            os.sync()

    before = os.times()
    with mounted, maybe_inside(bench.confine):
        seconds = timed(run)
    after = os.times()
    bench.ref_cpu.append(sum(after[:4]) - sum(before[:4]))  # user, system, and the children's
    bench.keep(dest)
    return seconds


# The card read alone, by a child started inside the box as the daemon is: this process, moved
# in after it did I/O, was not always held to the read limit (cgroup v1 blkio).
READ_ALL = """
import os, sys
buffer = bytearray(1 << 20)
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        with open(os.path.join(folder, name), "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass
"""


def card_read(bench: Bench, card: Card) -> float:
    """The card alone, read cold (``--card-mbps``) where the sides run: seconds."""
    assert card.image is not None
    settle()
    argv = [sys.executable, "-c", READ_ALL, str(card.root)]
    with card.image.mounted(card.root), maybe_inside(bench.confine):
        return timed(lambda: subprocess.run(argv, check=True))


@dataclass
class Ingest:
    """One ingest of a card by the daemon, until every file is uploaded.

    Times run from the card's arrival (``arrive``) or else from the daemon's process start.
    """

    seconds: float
    proc: ProcFigures
    stopped: dict[str, Any]
    removable_s: float | None  # spool mode: when the daemon said the card can be removed
    strace: Path
    start_up_s: float | None  # arrive: process start to "ready", before the card came
    card_cpu_s: float  # CPU seconds of the daemon and its hashing processes since the card came


def daemon_ingest(
    bench: Bench,
    card: Card,
    name: str,
    *,
    spool: bool = False,
    trace: str | None = None,
    arrive: bool = False,
    target: list[str] | None = None,
    upload: list[str] | None = None,
) -> Ingest:
    """The daemon ingests ``card`` into a directory target.

    ``arrive``: the daemon is up ("ready") with a card source (``path = "INBOX/*"``, every
    folder in INBOX a card) and no card yet when the card's tree is renamed into INBOX: a card
    mounted on a box that is already running. The card is renamed back afterwards. Otherwise
    the card's folder is the source from the daemon's start.
    """
    work = bench.work / name
    state, archive, spool_dir = work / "state", work / "archive", work / "spool"
    inbox = work / "inbox"
    config = work / "dronesync.toml"
    work.mkdir()
    if arrive:
        inbox.mkdir()
    arrived = inbox / card.root.name
    if card.image is not None:  # the card's mount point, empty until the card comes
        assert arrive
        arrived.mkdir()
    write_config(
        config,
        state,
        archive,
        f"{inbox}/*" if arrive else card.root,
        stable_s=bench.args.ingest_stable_s,
        spool=spool_dir if spool else None,
        spool_gb=card.nbytes / 1024**3 * 1.2 + 1,  # never full: this measures throughput
        require_mount=card.image is not None,
        target=target,
        upload=[*(upload or []), *upload_settings(bench)],
    )
    settle()
    daemon = bench.start(config, name, trace=trace)
    start = daemon.started
    start_up = None
    start_cpu = 0.0
    journal = JournalReader(state / "journal.sqlite3")
    try:
        if arrive:
            start_up = daemon.wait_event("ready", bench.args.timeout).at - daemon.started
            start_cpu = daemon.figures().cpu_s
            start = time.perf_counter()
            if card.image is not None:
                card.image.mount(arrived)
            else:
                card.root.rename(arrived)
        done = wait_uploaded(daemon, journal, card.files, bench.args.timeout)
        figures = daemon.figures()
    finally:
        journal.close()
        if arrive and card.image is None and arrived.exists():
            arrived.rename(card.root)
    removable = [e for e in daemon.events.get("card can be removed", []) if e.at >= start]
    try:
        stopped = daemon.stop()
    finally:
        if card.image is not None:
            card.image.unmount()
    bench.problems(name, daemon)
    if target is None:  # a directory target: its archive
        got = sum(1 for _ in files_under(archive))
        if got != card.files:
            raise BenchError(f"{name}: {got} files in the archive, not {card.files}")
        bench.keep(archive)
    return Ingest(
        done - start,
        figures,
        stopped,
        removable[0].at - start if removable else None,
        daemon.strace_path,
        start_up,
        figures.cpu_s - start_cpu,
    )


def upload_settings(bench: Bench) -> list[str]:
    """The ``[upload]`` lines the command line asks for (``--hash-workers``)."""
    workers = bench.args.hash_workers
    return [] if workers is None else [f"hash_workers = {workers}"]


def bench_ingest_shape(bench: Bench, shape: str, pool: bytes, dd_rate: float) -> None:
    """The card of ``shape`` ingested by the daemon and copied by the references, in turns.

    Each of the ``--runs`` rounds times ``cp -r`` + sha256, the daemon (plain, then spool
    mode) and ``cp -r`` + sha256 + ``sync``, one after the other; each side's best round counts.
    """
    args = bench.args
    files, size, folders, label = card_shape(args, shape)
    folders = min(folders, files)
    progress(f"ingest {label}: writing the card")
    card = write_card(bench, bench.work / f"card-{shape}", files, size, folders, pool, label)
    bench.card_bytes = card.nbytes
    dest = bench.work / "cp-copy"
    modes = [m for m in ("ingest", "spool") if m in args.scenarios]
    cps: list[float] = []
    ref_syncs: list[float] = []
    ingests: dict[str, list[Ingest]] = {mode: [] for mode in modes}
    reads: list[float] = []
    for round_ in range(1, args.runs + 1):
        if card.image is not None:
            reads.append(card_read(bench, card))
            progress(f"ingest {label}, round {round_}: the card read alone {reads[-1]:.2f} s")
        cps.append(cp_reference(bench, card, dest, sync=False))
        progress(f"ingest {label}, round {round_}: cp -r + sha256 {cps[-1]:.2f} s")
        for mode in modes:
            spool = mode == "spool"
            run = daemon_ingest(bench, card, f"{mode}-{shape}-{round_}", spool=spool, arrive=True)
            ingests[mode].append(run)
            progress(f"ingest {label}, round {round_}: the daemon, {mode} {run.seconds:.2f} s")
        ref_syncs.append(cp_reference(bench, card, dest, sync=True))
        progress(f"ingest {label}, round {round_}: cp -r + sha256 + sync {ref_syncs[-1]:.2f} s")
    refs = References(cp=cps, cp_sync=ref_syncs, card=reads, dd=dd_rate)
    for mode, done in ingests.items():
        add_ingest_rows(bench, card, mode, done, refs)
    bench.ref_cpu.clear()
    bench.drop_kept()
    if card.image is not None:
        card.image.close()
        bench.cards.remove(card.image)
    remove(card.root)


@dataclass
class References:
    """The references' times of one card, each round's (s), and dd's rate (MB/s)."""

    cp: list[float]
    cp_sync: list[float]
    card: list[float]  # the card read alone (--card-mbps)
    dd: float


def add_ingest_rows(
    bench: Bench, card: Card, mode: str, done: list[Ingest], refs: References
) -> None:
    """The rows and the note of the daemon's ingests of ``card`` in ``mode``."""
    args = bench.args
    gb = card.nbytes / 1e9
    runs = f"best of {args.runs}"
    spool = mode == "spool"
    tag = f"{card.label}{', spool' if spool else ''}"
    run = min(done, key=lambda r: r.seconds)
    mbps = gb * 1e3 / run.seconds
    name = f"ingest {tag} (MB/s, {runs})"
    bench.add(
        name,
        mbps,
        reference=f"cp -r + sha256, {runs}",
        ref=gb * 1e3 / min(refs.cp),
        goal=GOAL_INGEST,
        higher=True,
    )
    sync_ref = f"cp -r + sha256 + sync, {runs}"
    bench.add(name, mbps, reference=sync_ref, ref=gb * 1e3 / min(refs.cp_sync), higher=True)
    dd_ref = f"dd {args.dd_mb} MiB conv=fsync"
    bench.add(name, mbps, reference=dd_ref, ref=refs.dd, higher=True)
    if refs.card:
        alone = f"the card read alone, {runs}"
        bench.add(name, mbps, reference=alone, ref=gb * 1e3 / min(refs.card), higher=True)
    # Python's start-up reads its modules: what an idle daemon read is not card bytes.
    # Bytes read and memory: the most of any round.
    start_up = bench.idle.rchar if bench.idle else 0
    bench.add(
        f"bytes read less start-up, {tag} (GB)",
        (max(r.proc.rchar for r in done) - start_up) / 1e9,
        reference="card size",
        ref=gb,
        goal=GOAL_READS_SPOOL if spool else GOAL_READS,
    )
    hwm = max(r.proc.vm_hwm for r in done)
    bench.add(f"peak RSS, {tag} (MB)", hwm / 1e6, goal=GOAL_RSS_MB)
    commits = int(run.stopped["journal_commits"])
    removable = "" if run.removable_s is None else f", card removable after {run.removable_s:.1f} s"
    each = ", ".join(f"{r.seconds:.2f}" for r in done)
    ref_cpu = min(bench.ref_cpu) / gb
    bench.notes.append(
        f"ingest {tag}: {each} s (cp -r + sha256: {', '.join(f'{s:.2f}' for s in refs.cp)} s);"
        f" best round: rchar {run.proc.rchar / card.nbytes:.3f} x card"
        f" ({start_up / 1e6:.1f} MB of it an idle daemon's start-up), read_bytes"
        f" {run.proc.read_bytes / card.nbytes:.2f} x; {run.card_cpu_s / gb:.2f} CPU s/GB"
        f" since the card came (cp -r + sha256: {ref_cpu:.2f});"
        f" {commits} journal commits ({commits / card.files:.2f}/file);"
        f" files_hashed={run.stopped['files_hashed']}{removable}; the daemon's start to"
        f" 'ready', before the card came: {run.start_up_s:.2f} s; {memory_note(run.proc)}"
    )


def write_card(
    bench: Bench, root: Path, files: int, size: int, folders: int, pool: bytes, label: str
) -> Card:
    """The card in a folder, warm in the page cache; or in an ext4 image (``--card-mbps``).

    The image's reads are limited, and it is unmounted: each run mounts it and reads it cold.
    """
    if not bench.args.card_mbps:
        card = make_card(root, files, size, folders, pool, label)
        for path in files_under(card.root):  # every side reads the card from the page cache
            sha256_file(path)
        return card
    assert bench.confine is not None
    room = files * (size + 8 * KIB) * 21 // 20 + 64 * MIB  # ext4's own blocks and inodes
    image = CardImage(bench.work / f"{root.name}.img", room)
    bench.cards.append(image)  # closed by the run's end whatever happens
    try:
        bench.confine.limit_reads(image.devno)
        with image.mounted(root):
            (root / "lost+found").rmdir()
            card = make_card(root, files, size, folders, pool, label)
    except BaseException:
        image.close()
        raise
    return Card(root, card.files, card.nbytes, label, image)


def memory_note(figures: ProcFigures) -> str:
    """The peak RSS row's parts, for the notes."""
    return (
        f"peak RSS {figures.vm_hwm / 1e6:.1f} MB with the hashing processes' own memory"
        f" (their RSS in full: {figures.children_rss / 1e6:.1f} MB)"
    )
