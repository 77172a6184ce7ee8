"""The daemon's performance goals, each beside a reference measured in the same run.

    scripts/bench [--scenarios hash,ingest,spool,restart,latency] [--shapes big,images,small]
                  [--hash-mb 1024] [--big-files 64] [--big-mb 64] [--image-files 400]
                  [--image-mb 10] [--small-files 10000] [--small-kb 400]
                  [--restart-files 100000] [--latency-files 20] [--latency-stable 1,3]
                  [--runs 2] [--dd-mb 1024] [--tmp DIR] [--no-settle]
                  [--cpu-quota 0.25 [--cpu N]] [--card-mbps 90] [--link-mbit 200]
                  [--hash-workers N]

The real daemon runs as a child process (``python -m daemon run --config FILE``, a TOML file
written to a temporary folder, the directory target); completion is read from its journal
(read-only, polled) and from its JSON log lines on stderr.

- hash: ``daemon.hashing.hash_file`` against hashlib sha256 on the same cached file, taking
  turns, best of 5.
- ingest / spool: a synthetic card (``big``: 64 x 64 MiB; ``images``: 400 x 10 MiB, a survey
  card's images; ``small``: 10,000 x 400 KiB, a stress of the cost per file) ingested without
  and with spool mode (the spool on the archive's filesystem), timed from the card's arrival at
  a running daemon (its tree renamed into the folder of a card source, ``path = "INBOX/*"``)
  until every file is 'uploaded' in the journal; against ``cp -r`` of the same tree plus
  hashlib sha256 of every copied file (and the same plus ``sync``, and ``dd conv=fsync``: what
  bounds a durable ingest). The references and the daemon take turns, ``--runs`` rounds; each
  side's best round counts. Peak RSS and bytes read are read just before the daemon is
  stopped: the daemon's VmHWM plus its hashing processes' own memory (``ProcFigures``), and
  ``/proc/PID/io`` of all of them; a daemon on an empty folder, just after its first scan (no
  hashing process yet), shows what start-up alone reads and holds.
- restart: a card of 100,000 small files ingested once (files/s, journal commits per file),
  then the daemon started again: the start-up scan ("source online" to "first scan done" in
  its log; also from the process start, interpreter and imports included), against an
  os.scandir + stat walk of the same tree (best of 3); the "stopped" line must report
  files_hashed=0. Then, when strace is there, an ingest of --strace-files files under strace
  (fsync-family calls only) counts the syncs of the journal's files per file.
- latency: files written one at a time into a watched folder; close to upload start (the earlier
  of the file's status leaving 'waiting' in the journal, polled every 10 ms, and its "file
  uploaded" log line), against ``stable_s`` + 1 s.

A small box (``benchkit.smallcpu``): ``--cpu-quota`` runs the daemon and each reference in a
cgroup holding one CPU at that share of it; ``--card-mbps`` makes the card an ext4 image on a
loop device, mounted at its arrival (``require_mount``) and read cold at that rate at most;
``--link-mbit``: the ingest and spool runs send to a local NodeODM node at that rate instead
(``scripts/benchkit/bench/link.py``), against the link and ``curl -F --limit-rate``.

Caches cannot be dropped here: every side reads files warm in the page cache. Before every timed
run the page cache is filled and the files deleted by the run before have aged
(``tests/bench/settle.py``; ``--no-settle`` only syncs), so that no run pays for what the run
before it left. Progress goes to stderr, the table to stdout. The exit code is 0 when goals
are not met (this is a benchmark); only a harness error (the daemon died, a timeout) exits
non-zero.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from benchkit.bench.child import BenchError
from benchkit.bench.harness import Bench, print_table
from benchkit.bench.hashing import bench_hash
from benchkit.bench.ingest import bench_idle, bench_ingest_shape, disk_rate
from benchkit.bench.latency import bench_latency
from benchkit.bench.link import bench_link_shape
from benchkit.bench.restart import bench_restart
from benchkit.cli import csv, floats, summary
from benchkit.files import random_pool
from benchkit.settling import SETTLER, start
from benchkit.smallcpu import ConfineError, add_small_box, small_box
from benchkit.table import machine

SCENARIOS = ("hash", "ingest", "spool", "restart", "latency")
SHAPES = ("big", "images", "small")


def parse_args() -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(description=summary(__doc__))
    add = parser.add_argument
    add("--scenarios", type=csv, default=list(SCENARIOS), help=",".join(SCENARIOS))
    add("--shapes", type=csv, default=list(SHAPES), help=f"cards to ingest: {','.join(SHAPES)}")
    add("--hash-mb", type=int, default=1024, help="hashing: file size (MiB)")
    add("--big-files", type=int, default=64, help="big card: files")
    add("--big-mb", type=float, default=64, help="big card: size of each (MiB)")
    add("--image-files", type=int, default=400, help="images card: files")
    add("--image-mb", type=float, default=10, help="images card: size of each (MiB)")
    add("--small-files", type=int, default=10_000, help="small card: files")
    add("--small-kb", type=float, default=400, help="small card: size of each (KiB)")
    add("--ingest-stable-s", type=float, default=0, help="stable_s of the ingest runs")
    add("--runs", type=int, default=2, help="ingest: rounds (references and daemon in turns)")
    add("--dd-mb", type=int, default=1024, help="dd conv=fsync: MiB written")
    add("--restart-files", type=int, default=100_000, help="restart: files on the card")
    add("--restart-kb", type=float, default=1, help="restart: size of each (KiB)")
    add("--restart-hold-s", type=float, default=2, help="restart: run this long after the scan")
    add("--strace-files", type=int, default=10_000, help="journal fsyncs: files ingested")
    add("--no-strace", dest="strace", action="store_false", help="no journal fsync count")
    add("--latency-files", type=int, default=20, help="latency: files written one at a time")
    add("--latency-kb", type=float, default=256, help="latency: size of each (KiB)")
    add("--latency-stable", type=floats, default=[1.0, 3.0], help="latency: stable_s values")
    add("--timeout", type=float, default=3600, help="longest wait for one daemon step (s)")
    add("--tmp", type=Path, default=None, help="where the work folder goes")
    add("--hash-workers", type=int, default=None, help="the daemon's hash_workers (default: 2)")
    add(
        "--link-mbit",
        type=float,
        default=None,
        help="ingest and spool send to a local NodeODM node through a link this fast (the"
        " daemon's bandwidth_limit), against curl --limit-rate",
    )
    add_small_box(parser)
    add(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="before each timed run only sync: no page cache fill, no wait for deletions to age",
    )
    args = parser.parse_args()
    if not set(args.scenarios) <= set(SCENARIOS):
        parser.error(f"--scenarios: {','.join(SCENARIOS)}")
    if not set(args.shapes) <= set(SHAPES):
        parser.error(f"--shapes: {','.join(SHAPES)}")
    counts = [args.hash_mb, args.big_files, args.image_files, args.small_files]
    counts += [args.restart_files, args.runs, args.dd_mb, args.latency_files, args.strace_files]
    sizes = (args.big_mb, args.image_mb, args.small_kb, args.restart_kb, args.latency_kb)
    if min(counts) < 1 or min(sizes) < 1 or not args.latency_stable:
        parser.error("sizes, counts and runs must be at least 1")
    if args.card_mbps and not {"ingest", "spool"} & set(args.scenarios):
        parser.error("--card-mbps: for the ingest and spool scenarios")
    return args


def run(bench: Bench) -> None:
    """The scenarios asked for, in their order."""
    args = bench.args
    pool = random_pool()
    if "hash" in args.scenarios:
        bench_hash(bench)
    if {"ingest", "spool"} & set(args.scenarios) and args.link_mbit:
        for shape in args.shapes:
            bench_link_shape(bench, shape, pool)
    elif {"ingest", "spool"} & set(args.scenarios):
        bench_idle(bench)
        dd_rate = disk_rate(bench)
        for shape in args.shapes:
            bench_ingest_shape(bench, shape, pool, dd_rate)
    if "restart" in args.scenarios:
        bench_restart(bench, pool)
    if "latency" in args.scenarios:
        for stable_s in args.latency_stable:
            bench_latency(bench, stable_s)


def main() -> int:
    """Run the scenarios, print the table; 1 on a harness error, else 0."""
    args = parse_args()
    print(
        f"{machine()}, Linux {platform.release()}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="dronesync-bench-", dir=args.tmp) as tmp:
        bench = Bench(args, Path(tmp))
        start(Path(tmp), fill=args.settle, age=args.settle)
        try:
            bench.confine = small_box(args, bench.notes)
            run(bench)
        except (BenchError, ConfineError, subprocess.CalledProcessError, OSError) as exc:
            for daemon in bench.daemons:
                daemon.kill()
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            for daemon in bench.daemons:
                daemon.kill()
            bench.close_small_box()
            if SETTLER.filler is not None:
                bench.notes.insert(0, SETTLER.filler.note())
                SETTLER.filler.close()
            if SETTLER.age:
                bench.notes.insert(
                    0,
                    "each timed run began at least a minute after the last deletion of many"
                    " files (ext4 without a journal skips recently freed inodes;"
                    f" {SETTLER.waited_s:.0f} s of waiting, not timed)",
                )
    bench.notes.insert(
        0,
        (
            f"the card an ext4 image on a loop device, mounted for each run and read cold at"
            f" {args.card_mbps:g} MB/s at most; every other file warm in the page cache"
            if args.card_mbps
            else "every file warm in the page cache (caches cannot be dropped here)"
        )
        + "; ingest times run"
        " from the card's arrival at a running daemon, restart and first-ingest times from the"
        " daemon's process start (interpreter start-up included); ingest stable_s"
        f" = {args.ingest_stable_s:g}, quiet_s = 3600 (no processing); ratio = dronesync /"
        " reference (rates: higher is better; times and bytes: lower is better); bytes read"
        " are rchar of /proc/PID/io: every read of the process, the journal's included",
    )
    print_table(bench.rows, bench.notes, sys.stdout)
    return 0
