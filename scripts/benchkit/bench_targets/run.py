"""Upload throughput of the HTTP targets against the local servers, each beside a reference.

Each reference is measured in the same run, on the same files and the same server (ratios
survive a noisy box).

    scripts/bench-targets [--big-mb 1024] [--files 500] [--file-mb 8] [--runs 3]
                          [--targets nodeodm,pix4dcloud,webodm,s3] [--scenarios big,many]
                          [--s3-big-files 4] [--s3-big-mb 256] [--s3-file-mb 2-8]
                          [--spooled | --unsealed] [--cpu-quota 0.25 [--cpu N]]

Scenarios: "big" is one file of --big-mb MiB; "many" is --files files of --file-mb MiB sent
--concurrency at a time (default 4, the engine's default); "drops" (nodeodm only) is
--drop-files images of --drop-file-mb MiB to a second node that answers about half the uploads
HTTP 500 unread (its --test-drop-uploads, as a real node's --test_drop_uploads): dronesync,
retrying as the engine does ([upload] defaults), against pyodm's create_task with its own
retries, both timed over init, uploads and commit.

- nodeodm: the local NodeODM-compatible server (tests/fakes/nodeodm.py), in its own process,
  storing without hashing as NodeODM does (--node-digest: hashing every file, as before).
  dronesync (NodeODMTarget.upload, gathered under a semaphore as the engine does) against
  `curl -F` of the same files to the same task route (`xargs -P` for concurrency), and against
  pyodm's Node.create_task (init, uploads, commit; timed against the same three steps of
  dronesync).
- pix4dcloud: the local PIX4Dcloud server (tests/fakes/pix4dcloud.py: API, S3 proxy that checks
  temporary credentials, moto behind it), in its own process. dronesync (Pix4DCloudTarget.upload)
  against `curl -T` to presigned PUT URLs and `rclone copy`, all three through the same S3
  endpoint (the proxy) with temporary credentials of their own project.
- webodm: the local WebODM-compatible server (tests/fakes/webodm.py), in its own process.
  dronesync (WebODMTarget.upload, gathered under a semaphore, then start_processing) against
  `curl` making a partial task, `curl -F` of the same files to its upload route (`xargs -P`)
  and `curl` committing it; both timed over the task's creation, uploads and commit, both
  signed in and in the project beforehand.
- s3: moto in server mode (tests/fakes/s3store.py), in its own process, one bucket. dronesync
  (S3Target.upload, default content layout, gathered under a semaphore) against `rclone copy`
  of the folder (--transfers --concurrency, its upload cutoff and chunk size the target's
  multipart threshold and part size, the remote in RCLONE_CONFIG_* variables), same endpoint
  and bucket, each run under a prefix of its own. Files of its own: "big" is --s3-big-files
  files of --s3-big-mb MiB (in parts on both sides), "many" --files images of --s3-file-mb
  (2-8 MiB, evenly spread; one PUT each).

dronesync sends the files as a card's files hashed in this boot: sealed, size and mtime
checked, the content not hashed again. ``--unsealed``: as files hashed before a reboot, hashed
as they are sent. ``--spooled``: as a box with ``spool = true`` sends its own copies. The
references read the same files.

``--cpu-quota``: every timed transfer (dronesync's, in this process, and each reference tool's)
runs in a cgroup holding one CPU at that share of it (``benchkit.smallcpu``); the servers stay
outside.

Files are hashed before anything is timed (the recorded SHA-256 is an input of an upload), which
also puts them in the page cache: every side reads warm files. Before each timed transfer the
page cache is filled (tests/bench/settle.py; --no-settle only syncs), so that what the server
stores goes into reclaimed memory, not memory the last transfer's deletion handed back.
Figures are MB/s (10^6 bytes), best of --runs; ratio = dronesync / reference, higher is
better. After the table: how the references compare with each other, and the CPU seconds per
GB the client and the server process spent in each client's best run. Every run's time goes
to stderr. docs/performance.md has the figures and what bounds them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import structlog

from benchkit.bench_targets.groups import build_groups
from benchkit.bench_targets.results import Group, Meter, mbps, print_table
from benchkit.bench_targets.tools import tool_version
from benchkit.cli import csv, summary
from benchkit.settling import SETTLER, start
from benchkit.smallcpu import add_small_box, small_box
from benchkit.table import machine


def parse_args() -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the big file (MiB)")
    parser.add_argument("--files", type=int, default=500, help="how many files in 'many'")
    parser.add_argument("--file-mb", type=float, default=8, help="size of each of them (MiB)")
    parser.add_argument("--concurrency", type=int, default=4, help="uploads at a time")
    parser.add_argument(
        "--drop-files", type=int, default=10, help="how many images in 'drops' (nodeodm)"
    )
    parser.add_argument("--drop-file-mb", type=float, default=4, help="size of each of them")
    parser.add_argument("--s3-big-files", type=int, default=4, help="files in s3's 'big'")
    parser.add_argument("--s3-big-mb", type=int, default=256, help="size of each of them (MiB)")
    parser.add_argument(
        "--s3-file-mb", type=mib_range, default=(2.0, 8.0), help="sizes in s3's 'many' (MiB)"
    )
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--targets",
        type=csv,
        default=["nodeodm", "pix4dcloud", "webodm", "s3"],
        help="nodeodm,pix4dcloud,webodm,s3",
    )
    parser.add_argument(
        "--scenarios",
        type=csv,
        default=["big", "many"],
        help="big (one file), many (--files), drops (nodeodm: --drop-files, half dropped)",
    )
    parser.add_argument(
        "--curl-batch",
        type=int,
        default=25,
        help="files per curl process in 'many' (one connection each); 1: a process per file",
    )
    parser.add_argument(
        "--pyodm-threads",
        type=int,
        default=None,
        help="pyodm's parallel_uploads (default: --concurrency; pyodm's own default is 10)",
    )
    parser.add_argument(
        "--multipart-threshold-mb",
        type=int,
        default=None,
        help="the pix4dcloud and s3 targets' multipart_threshold_mb (default: the daemon's)",
    )
    parser.add_argument(
        "--parallel-parts",
        type=int,
        default=None,
        help="the pix4dcloud and s3 targets' parallel_parts (default: the daemon's default)",
    )
    parser.add_argument(
        "--part-size-mb",
        type=int,
        default=None,
        help="the s3 target's part_size_mb (default: the daemon's default)",
    )
    parser.add_argument(
        "--node-digest",
        action="store_true",
        help="the fake node hashes every file it stores (for the tests; NodeODM does not)",
    )
    parser.add_argument(
        "--spooled",
        action="store_true",
        help="dronesync sends the files as the spool's own copies (spool = true)",
    )
    parser.add_argument(
        "--unsealed",
        action="store_true",
        help="dronesync hashes the files as it sends them (hashed before a reboot)",
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where the files are written")
    add_small_box(parser, card=False)
    parser.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="before each timed run only sync, without filling the page cache",
    )
    args = parser.parse_args()
    if not set(args.targets) <= {"nodeodm", "pix4dcloud", "webodm", "s3"}:
        parser.error("--targets: nodeodm, pix4dcloud, webodm, s3")
    if not set(args.scenarios) <= {"big", "many", "drops"}:
        parser.error("--scenarios: big, many, drops")
    counts: tuple[int, ...] = (
        args.big_mb,
        args.files,
        args.concurrency,
        args.runs,
        args.curl_batch,
    )
    counts += (args.s3_big_files, args.s3_big_mb)
    if min(counts) < 1 or args.file_mb <= 0 or (args.pyodm_threads or 1) < 1:
        parser.error("sizes, counts and runs must be at least 1")
    return args


def mib_range(value: str) -> tuple[float, float]:
    """``2-8`` -> ``(2.0, 8.0)``; one figure is a range of one size."""
    low, _, high = value.partition("-")
    sizes = (float(low), float(high or low))
    if not 0 < sizes[0] <= sizes[1]:
        raise argparse.ArgumentTypeError(f"{value!r}: LOW-HIGH, 0 < LOW <= HIGH")
    return sizes


def run(groups: list[Group], runs: int) -> None:
    """Every step of every group, ``runs`` times; each key's best sample kept."""
    started = time.perf_counter()
    for g in groups:
        for run in range(runs):
            for step in g.steps:
                for key, sample in step().items():
                    if key not in g.best or sample.seconds < g.best[key].seconds:
                        g.best[key] = sample
                    print(
                        f"  [{time.perf_counter() - started:4.0f} s] {g.target} {g.scenario}"
                        f" run {run + 1}: {key} {sample.seconds:.2f} s"
                        f" ({mbps(g.nbytes, sample.seconds):.1f} MB/s)",
                        file=sys.stderr,
                        flush=True,
                    )


def main() -> int:
    """Build the groups, run them, print the table."""
    args = parse_args()
    # The targets log every task and project they create; errors are enough here.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    print(
        f"{machine()},"
        f" {tool_version('curl', '--version')}, {tool_version('rclone', 'version')};"
        f" best of {args.runs}; files in the page cache for every side",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="dronesync-bench-targets-", dir=args.tmp) as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        # No deletion here is of many files: no wait for deleted inodes to age.
        start(work, fill=args.settle, age=False)
        filler = SETTLER.filler
        if filler is not None:
            stack.callback(filler.close)
        groups = build_groups(args, work, stack)  # the servers start outside the box
        notes: list[str] = []
        box = small_box(args, notes)
        if box is not None:
            stack.callback(box.close)
            Meter.BOX = box
        run(groups, args.runs)
        print_table(groups, sys.stdout)
        for note in notes:
            print(f"- {note}")
        if filler is not None:
            print(f"- {filler.note()}")
    return 0
