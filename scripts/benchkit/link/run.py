"""The HTTP targets through a limited link, beside the link's capacity and the peers.

    scripts/bench-link [--links 4g,lan] [--targets nodeodm,pix4dcloud,webodm] [--files 30]
                       [--scale 1] [--runs 1] [--spooled | --unsealed]

The servers (the project's local NodeODM, PIX4Dcloud with moto, WebODM servers) run in a network
namespace of their own, joined to this one by a veth pair limited to the link's rate with
``tc ... tbf`` at both ends; a delaying proxy here (benchkit/link/delay.py) adds the round trip.
Links: "4g" 20 Mbit/s with 60 ms, "lan" 200 Mbit/s with 10 ms (the default two), "sat"
10 Mbit/s with 600 ms. The capacity is one
``curl -T`` of --capacity-s seconds' worth to a sink across the same link and proxy, at the
start and at the end of each link's runs (the better counts).

Per target, --files images of 2-8 MB (times --scale; sizes drawn with a fixed seed), sent
--concurrency at a time as scripts/bench-targets sends them (the target's ``upload`` under a
semaphore, as the engine's workers): the MB/s against the capacity (goal >= 0.95); with the
engine's bandwidth limit (TokenBucket, the ``bandwidth_limit`` setting) at --limit-share of
the capacity, held within 3 %; against a second server failing --fault-rate of the uploads
(NodeODM: dropped as its --test_drop_uploads; PIX4Dcloud: S3 503 SlowDown; WebODM: 502),
retried by the daemon's upload engine (goal: the link >= 0.80 busy); beside ``curl`` (and pyodm
on NodeODM, rclone on PIX4Dcloud) on the same files and server; and the client's CPU seconds
per GB beside curl's (goal <= 1.3x). dronesync sends the images as a card's hashed in this
boot (sealed: not hashed again); --unsealed: as files hashed before a reboot, hashed as they
are sent; --spooled: as the spool's own copies, as with ``spool = true``. "wire" is what
left this side of the link (headers, retries and resent bytes included) over the capacity's.
Needs root, ``ip`` and ``tc`` (iproute2), curl; pyodm in .venv for its row (``pip install -e
'.[bench]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import structlog

from benchkit.bench_targets.data import DataSet, as_sent, make_sized
from benchkit.bench_targets.results import Meter
from benchkit.bench_targets.tools import pyodm_missing, run_tool, tool_version
from benchkit.cli import csv, summary
from benchkit.files import random_pool, write_distinct
from benchkit.link.netns import LINKS, LinkSpec, Namespace, netns_missing
from benchkit.link.place import Across
from benchkit.link.report import Measured, print_link
from benchkit.link.targets import TARGETS, Step, build
from benchkit.project import tune_process
from benchkit.settling import start
from benchkit.table import machine


def parse_args() -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--links", type=csv, default=["4g", "lan"], help="4g,lan (or sat)")
    parser.add_argument("--targets", type=csv, default=list(TARGETS), help=",".join(TARGETS))
    parser.add_argument("--files", type=int, default=30, help="images per transfer (full: 300)")
    parser.add_argument("--scale", type=float, default=1.0, help="times the 2-8 MB sizes")
    parser.add_argument("--concurrency", type=int, default=4, help="uploads at a time")
    parser.add_argument("--runs", type=int, default=1, help="best of this many runs")
    parser.add_argument(
        "--limit-share", type=float, default=0.6, help="bandwidth_limit, share of capacity"
    )
    parser.add_argument("--fault-rate", type=float, default=0.3, help="share of uploads failing")
    parser.add_argument(
        "--capacity-s", type=float, default=10, help="seconds' worth of the capacity transfer"
    )
    parser.add_argument("--curl-batch", type=int, default=25, help="files per curl process")
    parser.add_argument(
        "--spooled",
        action="store_true",
        help="dronesync sends the images as the spool's own copies (spool = true)",
    )
    parser.add_argument(
        "--unsealed",
        action="store_true",
        help="dronesync hashes the images as it sends them (hashed before a reboot)",
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where the files are written")
    args = parser.parse_args()
    if not set(args.links) <= set(LINKS):
        parser.error(f"--links: {', '.join(LINKS)}")
    if not set(args.targets) <= set(TARGETS):
        parser.error(f"--targets: {', '.join(TARGETS)}")
    if min(args.files, args.concurrency, args.runs, args.curl_batch) < 1 or args.scale <= 0:
        parser.error("counts and --scale must be positive")
    if not 0 < args.limit_share < 1 or not 0 <= args.fault_rate < 1:
        parser.error("--limit-share in (0, 1), --fault-rate in [0, 1)")
    return args


def _stop(signum: int, _frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: every `with` removes what it made.
    raise KeyboardInterrupt(f"signal {signum}")


def images(work: Path, files: int, scale: float) -> DataSet:
    """``files`` images of 2-8 MB times ``scale``, the same sizes every run."""
    rng = random.Random(26)  # noqa: S311 - sizes, not secrets
    sizes = [max(1024, int(rng.uniform(2e6, 8e6) * scale)) for _ in range(files)]
    return make_sized(work / "images", sizes, "DJI_{i:04d}.JPG", random_pool())


def capacity(place: Across, ns: Namespace, bulk: Path) -> Measured:
    """One ``curl -T`` of ``bulk`` to a sink across the link: what one connection gets."""
    sink, url = place.sink()
    try:
        argv = ["curl", "-sS", "--fail", "-o", "/dev/null", "-T", str(bulk), url]
        before = ns.tx_bytes()
        with Meter(sink.proc.pid, child=True) as meter:
            run_tool(argv)
        return Measured("capacity", meter.sample, bulk.stat().st_size, ns.tx_bytes() - before)
    finally:
        sink.close()


def timed(ns: Namespace, target: str, step: Step, nbytes: int) -> list[Measured]:
    """One step of a target, with the bytes that left this side of the link meanwhile."""
    before = ns.tx_bytes()
    samples = step.run()
    wire = ns.tx_bytes() - before
    return [Measured(key, s, nbytes, wire, target, step.kind) for key, s in samples.items()]


def run_link(args: argparse.Namespace, ns: Namespace, spec: LinkSpec, work: Path) -> None:
    """Every target across one link, with the capacity before and after."""
    ns.shape(spec)
    bulk = work / f"bulk-{spec.name}.bin"
    write_distinct(bulk, 0, max(1 << 20, int(spec.bytes_per_s * args.capacity_s)), random_pool())
    data = images(work / spec.name, args.files, args.scale)
    data, _ = as_sent(data, args)
    results: list[Measured] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        place = Across(ns, spec, work / spec.name)
        stack.callback(place.close)
        caps = [capacity(place, ns, bulk)]
        for name in args.targets:
            steps = build(name, args, place, data, stack, work / spec.name)
            for _ in range(args.runs):
                for step in steps(caps[0].mbps):
                    for m in timed(ns, name, step, data.nbytes):
                        results.append(m)
                        print(
                            f"  [{time.perf_counter() - started:4.0f} s] {spec.name} {name}"
                            f" {m.kind} {m.key}: {m.sample.seconds:.2f} s ({m.mbps:.2f} MB/s)",
                            file=sys.stderr,
                            flush=True,
                        )
        caps.append(capacity(place, ns, bulk))
    print_link(spec, caps, results, data, args, sys.stdout)


def main() -> int:
    """The links one after the other, each a table."""
    args = parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    print(
        f"{machine()}, {tool_version('curl', '--version')};"
        f" {'pyodm: ' + (pyodm_missing() or 'installed')}; load {load()}",
        flush=True,
    )
    missing = netns_missing()
    if missing:
        print(f"skipped: {missing}")
        return 0
    signal.signal(signal.SIGTERM, _stop)
    # The client's CPU is the daemon's: its collector and GIL settings, as it runs them.
    tune_process()
    with (
        tempfile.TemporaryDirectory(prefix="dronesync-bench-link-", dir=args.tmp) as tmp,
        Namespace() as ns,
    ):
        start(Path(tmp), fill=False, age=False)
        for name in args.links:
            (Path(tmp) / name).mkdir()
            run_link(args, ns, LINKS[name], Path(tmp))
    print(f"load {load()}")
    return 0


def load() -> str:
    """The box's load averages (1, 5, 15 min)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
