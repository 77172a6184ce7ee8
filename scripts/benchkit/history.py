"""A year of history: the daemon on a journal of a million files, beside an empty journal.

    scripts/bench-history [--files 1000000] [--datasets 5000] [--card-files 2000]
                          [--card-kb 256] [--runs 2] [--status-runs 5] [--api-runs 3]
                          [--api-gap 5.2] [--idle-s 3] [--tmp DIR]

Two state folders are made: ``empty`` (a new box) and ``history`` (``--files`` files in
``--datasets`` datasets, processed long ago, on the watched folder's volume; written straight
into SQLite through the journal's own schema, benchkit/history_journal.py). On each, ``--runs``
times, the real daemon (``python -m daemon run``, the directory target, the page on a free
port of 127.0.0.1) is started and measured:

- restart: from the process start to its "ready" log line (READY=1: the first scan queued).
- loop idle: the share of one core the event loop's thread (the main thread: its CPU seconds
  from /proc/PID/task/PID/stat) spends over ``--idle-s`` with nothing to do. All of it is
  bookkeeping: counts, dataset states, live figures, commits.
- loop ingest: the same share while a new card (``--card-files`` of ``--card-kb`` KiB,
  renamed into the watched folder) is ingested until every file is uploaded, and the loop's
  CPU seconds for the card. The bookkeeping a year of history costs while a card is ingested
  is history's loop CPU for the card minus the empty journal's (median), over the ingest's
  wall time: the same card, the same work, but for what the history adds.
- status: ``dronesync status`` and ``status --json`` as subprocesses, wall time (min and
  median of ``--status-runs``). References: ``python -c 'import daemon.cli'`` (the floor of
  any command) and ``sqlite3 JOURNAL 'SELECT count(*) FROM files'``.
- api: ``GET /api/status`` after ``--api-gap`` s without a request (the page then computes a
  fresh document: its cache holds one for 5 s), and ``GET /metrics`` (computed each scrape).
- peak RSS: the daemon's ``VmHWM`` after the ingest. journal: its size on disk, and what
  ``status --json`` reports (``journal.bytes``, when the daemon reports it).

Goals: loop bookkeeping < 5 %, status and /api/status < 200 ms, ready < 5 s, peak RSS
< 150 MB. Progress goes to stderr, the table to stdout; the exit code is 0 unless the harness
fails (this is a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchkit.bench.child import Daemon, daemon_env
from benchkit.env import ROOT
from benchkit.history_journal import JOURNAL, build, journal_bytes
from benchkit.table import machine
from tests.webpage import page_url

GOALS = {"loop": 5.0, "status_ms": 200.0, "api_ms": 200.0, "ready_s": 5.0, "rss_mb": 150.0}
MB = 1_000_000


def say(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Figures:
    """Every sample of one journal kind, over the runs."""

    ready_s: list[float] = field(default_factory=list)
    loop_idle: list[float] = field(default_factory=list)  # percent of one core
    loop_ingest: list[float] = field(default_factory=list)
    loop_cpu_s: list[float] = field(default_factory=list)  # the loop's CPU seconds per card
    ingest_s: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    status_json_ms: list[float] = field(default_factory=list)
    api_ms: list[float] = field(default_factory=list)
    metrics_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    floor_ms: list[float] = field(default_factory=list)
    sqlite_ms: list[float] = field(default_factory=list)
    journal_mb: float = 0.0
    reported: object = None
    files: int = 0


def write_config(root: Path) -> Path:
    """The daemon's configuration: one watched folder, the directory target, the page."""
    config = root / "dronesync.toml"
    config.write_text(
        f'state_dir = "{root / "state"}"\nlog_level = "info"\n'
        '[web]\nlisten = "127.0.0.1:0"\n'
        f'[targets.archive]\ntype = "directory"\npath = "{root / "archive"}"\n'
        f'[[sources]]\npath = "{root / "inbox"}"\ntarget = "archive"\n'
        "stable_s = 0.5\nquiet_s = 3600\n",
        encoding="utf-8",
    )
    (root / "inbox").mkdir(exist_ok=True)
    return config


def make_card(folder: Path, files: int, kib: int, seed: int) -> None:
    """A card of ``files`` images of ``kib`` KiB in ``folder``, each of its own content."""
    folder.mkdir(parents=True)
    block = random.Random(seed).randbytes(kib * 1024)  # noqa: S311 - not a secret
    for i in range(files):
        # Content of its own (no duplicates): the block, stamped with the card and the file.
        (folder / f"DJI_{i:05d}.JPG").write_bytes(b"%08d%08d" % (seed, i) + block[16:])


def loop_cpu_s(pid: int) -> float:
    """CPU seconds of the process's main thread: the daemon's event loop."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mb(pid: int) -> float:
    """The process's peak RSS, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


def settled(journal: Path, name: str) -> int:
    """The card's files that are done with (not waiting, not uploading)."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM files f JOIN datasets d ON d.id = f.dataset_id"
            " WHERE d.name = ? AND f.status NOT IN ('waiting', 'uploading')",
            (name,),
        ).fetchone()
    return int(row[0])


def wall_ms(argv: list[str]) -> float:
    """Milliseconds ``argv`` takes, start to exit."""
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=daemon_env(), stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000


def get_ms(client: httpx.Client, path: str) -> float:
    """Milliseconds a GET of ``path`` takes."""
    started = time.perf_counter()
    client.get(path).raise_for_status()
    return (time.perf_counter() - started) * 1000


def measure_cli(config: Path, journal: Path, runs: int, out: Figures) -> None:
    """``status`` and ``status --json`` as subprocesses, and the references beside them."""
    python = [sys.executable, "-m", "daemon"]
    sqlite = shutil.which("sqlite3")
    for _ in range(runs):
        out.status_ms.append(wall_ms([*python, "status", "--config", str(config)]))
        out.status_json_ms.append(wall_ms([*python, "status", "--json", "--config", str(config)]))
        out.floor_ms.append(wall_ms([sys.executable, "-c", "import daemon.cli"]))
        if sqlite:
            out.sqlite_ms.append(wall_ms([sqlite, str(journal), "SELECT count(*) FROM files"]))


def measure_api(url: str, args: argparse.Namespace, out: Figures) -> None:
    """``/api/status`` after a gap that outlasts the page's cache, and ``/metrics``."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(args.api_runs):
            time.sleep(args.api_gap)  # the page's document is older than its cache keeps it
            out.api_ms.append(get_ms(client, "/api/status"))
            out.metrics_ms.append(get_ms(client, "/metrics"))


def ingest(root: Path, name: str, args: argparse.Namespace, daemon: Daemon, out: Figures) -> None:
    """A new card renamed into the watched folder; wall time and loop share until all is sent."""
    card = root / "cards" / name
    make_card(card, args.card_files, args.card_kb, seed=sum(map(ord, name)))
    journal = root / "state" / JOURNAL
    started = time.monotonic()
    cpu = loop_cpu_s(daemon.pid)
    card.rename(root / "inbox" / name)
    while settled(journal, name) < args.card_files:
        daemon.check_alive()
        if time.monotonic() - started > 1800:
            raise TimeoutError(f"{name}: not uploaded in 30 minutes")
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    out.ingest_s.append(elapsed)
    cpu = loop_cpu_s(daemon.pid) - cpu
    out.loop_cpu_s.append(cpu)
    out.loop_ingest.append(100 * cpu / elapsed)


def one_run(root: Path, config: Path, run: int, args: argparse.Namespace, out: Figures) -> None:
    """One start of the daemon on ``root``'s state, and every figure of it."""
    state = root / "state"
    (state / "web.json").unlink(missing_ok=True)
    daemon = Daemon(config, root / f"daemon-{run}.log")
    try:
        ready = daemon.wait_event("ready", timeout=300)
        out.ready_s.append(ready.at - daemon.started)
        url = page_url(state)
        time.sleep(1.0)  # the first ticks after ready: the session settles
        cpu, started = loop_cpu_s(daemon.pid), time.monotonic()
        time.sleep(args.idle_s)
        out.loop_idle.append(100 * (loop_cpu_s(daemon.pid) - cpu) / (time.monotonic() - started))
        measure_cli(config, state / JOURNAL, args.status_runs, out)
        measure_api(url, args, out)
        ingest(root, f"card-{run}", args, daemon, out)
        out.rss_mb.append(vm_hwm_mb(daemon.pid))
        document = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "--json", "--config", str(config)],
            cwd=ROOT,
            env=daemon_env(),
            capture_output=True,
            check=True,
        ).stdout
        out.reported = json.loads(document).get("journal", {}).get("bytes")
        daemon.stop()
    except BaseException:
        daemon.kill()
        raise
    out.journal_mb = journal_bytes(state / JOURNAL) / MB


def bench_kind(tmp: Path, kind: str, args: argparse.Namespace) -> Figures:
    """The journal of one kind (empty or history), then ``--runs`` runs on it."""
    root = tmp / kind
    root.mkdir()
    config = write_config(root)
    files = args.files if kind == "history" else 0
    started = time.monotonic()
    build(
        root / "state",
        files=files,
        datasets=args.datasets,
        volume=str(root / "inbox"),
        source=str(root / "inbox"),
    )
    say(f"{kind}: journal of {files} files written in {time.monotonic() - started:.1f} s")
    out = Figures(files=files)
    for run in range(1, args.runs + 1):
        say(f"{kind}: run {run} of {args.runs}")
        one_run(root, config, run, args, out)
    return out


def span(values: list[float], digits: int = 0) -> str:
    """``low-high`` of the samples."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    if round(low, digits) == round(high, digits):
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}-{high:.{digits}f}"


def med(values: list[float], digits: int = 0) -> str:
    """``min / median`` of the samples."""
    if not values:
        return "-"
    return f"{min(values):.{digits}f} / {statistics.median(values):.{digits}f}"


def verdict(values: list[float], goal: float) -> str:
    """Whether every sample is under the goal."""
    return "-" if not values else ("ok" if max(values) < goal else "over")


def report(empty: Figures, history: Figures, args: argparse.Namespace) -> None:
    """The table: each figure beside the empty journal's, with its goal."""
    # What the history adds to the loop's work for the same card, over the ingest's time.
    base = statistics.median(empty.loop_cpu_s) if empty.loop_cpu_s else 0.0
    extra = [
        100 * (cpu - base) / wall
        for cpu, wall in zip(history.loop_cpu_s, history.ingest_s, strict=True)
    ]
    rows = [
        ("ready after start, s", span(empty.ready_s, 2), span(history.ready_s, 2),
         verdict(history.ready_s, GOALS["ready_s"]), "< 5"),
        ("loop busy idle, % of a core", span(empty.loop_idle, 1), span(history.loop_idle, 1),
         verdict(history.loop_idle, GOALS["loop"]), "< 5"),
        ("loop busy ingest, %", span(empty.loop_ingest, 1), span(history.loop_ingest, 1),
         "", ""),
        ("loop CPU per card, s", span(empty.loop_cpu_s, 2), span(history.loop_cpu_s, 2), "", ""),
        ("  history's part, % of ingest", "", span(extra, 1), verdict(extra, GOALS["loop"]), "< 5"),
        ("ingest wall time, s", span(empty.ingest_s, 1), span(history.ingest_s, 1), "", ""),
        ("status, ms min / median", med(empty.status_ms), med(history.status_ms),
         verdict(history.status_ms, GOALS["status_ms"]), "< 200"),
        ("status --json, ms", med(empty.status_json_ms), med(history.status_json_ms),
         verdict(history.status_json_ms, GOALS["status_ms"]), "< 200"),
        ("  ref: python -c 'import daemon.cli'", med(empty.floor_ms), med(history.floor_ms),
         "", ""),
        ("  ref: sqlite3 count(*) files", med(empty.sqlite_ms), med(history.sqlite_ms), "", ""),
        ("GET /api/status fresh, ms", med(empty.api_ms), med(history.api_ms),
         verdict(history.api_ms, GOALS["api_ms"]), "< 200"),
        ("GET /metrics, ms", med(empty.metrics_ms), med(history.metrics_ms), "", ""),
        ("peak RSS (VmHWM), MB", span(empty.rss_mb), span(history.rss_mb),
         verdict(history.rss_mb, GOALS["rss_mb"]), "< 150"),
        ("journal on disk, MB", f"{empty.journal_mb:.1f}", f"{history.journal_mb:.1f}", "", ""),
        ("  reported by status --json, MB", _reported(empty), _reported(history), "", ""),
    ]  # fmt: skip
    print(f"# {machine()}; load {Path('/proc/loadavg').read_text().strip()}")
    print(
        f"# history: {args.files} files in {args.datasets} datasets; card: {args.card_files}"
        f" x {args.card_kb} KiB; {args.runs} run(s) each"
    )
    print(f"  {'':38}{'empty':>16}{'history':>16}  {'':5} goal")
    for name, a, b, ok, goal in rows:
        print(f"  {name:38}{a:>16}{b:>16}  {ok:5} {goal}")
    if history.files:
        per = history.journal_mb * MB / history.files
        print(f"  journal per file: {per:.0f} bytes")


def _reported(figures: Figures) -> str:
    if isinstance(figures.reported, int):
        return f"{figures.reported / MB:.1f}"
    return "not reported"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--datasets", type=int, default=5000)
    parser.add_argument("--card-files", type=int, default=2000)
    parser.add_argument("--card-kb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--status-runs", type=int, default=5)
    parser.add_argument("--api-runs", type=int, default=3)
    parser.add_argument("--api-gap", type=float, default=5.2, help="seconds between API asks")
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--tmp", type=Path, default=None, help="where the state goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 unless the harness failed."""
    args = parse(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-", dir=args.tmp))
    try:
        empty = bench_kind(tmp, "empty", args)
        history = bench_kind(tmp, "history", args)
        report(empty, history, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
