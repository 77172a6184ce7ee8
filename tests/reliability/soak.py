"""The flaky-servers soak: many images in several datasets, a share of requests failing at random.

Used by ``tests/reliability/test_soak.py`` (a small run in CI) and by ``scripts/soak`` (the long
run). What it proves, checked on the server side by content hash: every image reaches its target
exactly once and byte-identical (none lost, none stored twice, none truncated), processing starts
once per dataset, every file ends ``uploaded`` or ``duplicate``, and the daemon is still running
at the end and stops cleanly.

Faults, drawn per request from a seeded generator:

* PIX4Dcloud: ``rate`` of API requests (5xx, 429 with Retry-After, reset before or after the
  request took effect, a stall, an HTML page with 200, truncated JSON) and ``rate`` of S3
  requests (5xx, reset, reset mid-body, reply dropped after the object was stored, a stall).
* NodeODM: ``rate`` of requests on every route other than uploads, from every kind the node
  fake has. On the upload route, ``rate`` in all, of which ``ambiguous_rate`` are kinds that
  leave the daemon unable to know whether the image was stored (500, cut mid-body, cut after
  the body, an HTML page, a stall) and the rest are ``{"error"}`` replies the node gives
  before it reads the body (``Invalid uuid (not set)``), which say plainly that nothing was
  stored. Every ambiguous upload makes the daemon replace the whole task and send
  the dataset again (the only way to keep a committed task free of duplicates and truncated
  images), so a run converges only when a dataset's images all go through between two
  ambiguous faults; see docs/reliability.md.

The routes that start processing and follow it get ``processing_rate`` instead (CI lowers it:
the daemon waits 5 s, 10 s, 20 s... between failed starts). Stalls last longer than both
``stall_s`` and the request timeout, so the daemon has to give up on them rather than wait.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import Box
from tests.fakes.nodeodm import FAULT_KINDS as NODE_FAULT_KINDS
from tests.fakes.nodeodm import FakeNodeODM, Fault, Faults
from tests.fakes.pix4dcloud import (
    API_FAULT_KINDS,
    API_RANDOM_KINDS,
    API_ROUTES,
    FakePix4DCloud,
)
from tests.fakes.s3proxy import S3_RANDOM_KINDS, FaultPlan
from tests.fakes.s3proxy import Fault as PlannedFault

TARGETS = ("pix4dcloud", "nodeodm")
# Longer than stall_s and than the targets' request timeout: a stalled request is abandoned.
STALL_DELAY_S = 3.0
REQUEST_TIMEOUT_S = 2.0
# Above the 5 MiB multipart threshold configured below: such an image goes to S3 in two parts.
BIG_SIZE = 5 * 1024 * 1024 + 300_000
SMALL_SIZES = (4_000, 48_000)
PIX4D_SECRET = "soak-client-secret"
NODE_TOKEN = "soak-node-token"
NODE_PROCESSING_ROUTES = frozenset({"commit", "info"})
PIX4D_PROCESSING_ROUTES = frozenset({"register", "start", "project"})
# Upload faults after which the daemon cannot know whether the node stored the image.
NODE_AMBIGUOUS: tuple[tuple[str, bool], ...] = (
    ("status500", False),
    ("cut_mid_body", False),
    ("cut_after_body", False),
    ("garbage", False),
    ("stall", True),
)


@dataclass(frozen=True)
class SoakOptions:
    """The size of a run and how hostile the servers are."""

    files: int = 600  # image files the daemon finds, byte-identical copies included
    datasets: int = 4
    duplicates: int = 6  # byte-identical copies, spread over the datasets
    big: int = 1  # images large enough for a multipart upload
    rate: float = 0.3
    ambiguous_rate: float = 0.01  # NodeODM upload route only; part of ``rate``
    # Routes of the processing start and its follow-up (PIX4Dcloud register, start, project;
    # NodeODM commit, info); None: ``rate``. The daemon retries a failed start after 5 s,
    # doubling each time, so at 30 % a dataset can wait minutes there by bad luck.
    processing_rate: float | None = None
    seed: int = 1
    concurrency: int = 4
    attempts: int = 100
    stall_s: float = 2.0
    deadline_s: float = 900.0

    def check(self) -> None:
        """Refuse sizes no run can satisfy (PIX4Dcloud wants 6 images per project)."""
        if self.datasets < 1:
            raise ValueError("at least one dataset")
        if self.duplicates < 0 or self.big < 0:
            raise ValueError("duplicates and big must not be negative")
        if self.files - self.duplicates < 6 * self.datasets:
            raise ValueError("need at least 6 unique images per dataset")
        if not 0.0 <= self.ambiguous_rate <= self.rate <= 1.0:
            raise ValueError("need 0 <= ambiguous_rate <= rate <= 1")
        if not 0.0 <= self.start_rate <= 1.0:
            raise ValueError("need 0 <= processing_rate <= 1")

    @property
    def start_rate(self) -> float:
        return self.rate if self.processing_rate is None else self.processing_rate


@dataclass
class Flight:
    """One dataset as the pilot made it: unique images, and byte-identical copies of some."""

    name: str
    images: dict[str, str] = field(default_factory=dict)  # sha256 -> path in the dataset
    copies: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return len(self.images) + len(self.copies)


def make_flights(staging: Path, opts: SoakOptions) -> list[Flight]:
    """Write the datasets under ``staging``; DCIM sub-folders repeat names, as cards do."""
    rng = random.Random(opts.seed)
    unique = opts.files - opts.duplicates
    flights = [Flight(f"flight-{d + 1:02d}") for d in range(opts.datasets)]
    contents: list[list[bytes]] = [[] for _ in flights]
    for n in range(unique):
        d = n % opts.datasets
        flight, index = flights[d], len(contents[d])
        size = BIG_SIZE if n < opts.big else rng.randint(*SMALL_SIZES)
        data = rng.randbytes(size)
        media = "100MEDIA" if index % 2 == 0 else "101MEDIA"
        rel = f"DCIM/{media}/DJI_{index // 2:04d}.JPG"
        _write(staging / flight.name / rel, data)
        flight.images[hashlib.sha256(data).hexdigest()] = rel
        contents[d].append(data)
    for n in range(opts.duplicates):
        d = n % opts.datasets
        rel = f"DCIM/100MEDIA/COPY_{n:04d}.JPG"
        _write(staging / flights[d].name / rel, rng.choice(contents[d]))
        flights[d].copies.append(rel)
    return flights


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --------------------------------------------------------------------------- faults


class NodeFaults(Faults):
    """NodeODM faults with one mix for the upload route and another for every other route."""

    def __init__(self, opts: SoakOptions) -> None:
        super().__init__()
        self._opts = opts
        self._rng = random.Random(opts.seed + 1)
        self._mix_lock = threading.Lock()
        self.by_route: Counter[str] = Counter()  # "upload:error200" -> count

    def take(self, route: str) -> Fault | None:
        fault = super().take(route)
        if fault is not None:
            return fault
        opts = self._opts
        with self._mix_lock:
            draw = self._rng.random()
            if route == "upload":
                if draw < opts.ambiguous_rate:
                    kind, before = self._rng.choice(NODE_AMBIGUOUS)
                elif draw < opts.rate:
                    # What a real node's preUpload says before it reads the body: nothing
                    # stored. Its other {"error"} replies may follow a part of the file
                    # written, and the daemon takes those as ambiguous.
                    kind, before = "error200", False
                else:
                    return None
            elif draw < (opts.start_rate if route in NODE_PROCESSING_ROUTES else opts.rate):
                kind, before = self._rng.choice(NODE_FAULT_KINDS), False
            else:
                return None
            self.by_route[f"{route}:{kind}"] += 1
        if route == "upload" and kind == "error200":
            return Fault(kind, delay_s=STALL_DELAY_S, message="Invalid uuid (not set)")
        return Fault(kind, delay_s=STALL_DELAY_S, before=before)

    def on_uploads(self) -> dict[str, int]:
        """Drawn upload faults: ``ambiguous`` (the task gets replaced) and ``clear``."""
        ambiguous = {f"upload:{kind}" for kind, _ in NODE_AMBIGUOUS}
        with self._mix_lock:
            return {
                "ambiguous": sum(n for k, n in self.by_route.items() if k in ambiguous),
                "clear": self.by_route["upload:error200"],
            }

    @property
    def injected(self) -> dict[str, int]:
        counts = Counter(super().injected)
        with self._mix_lock:
            for key, n in self.by_route.items():
                counts[key.split(":", 1)[1]] += n
        return dict(counts)


class ApiFaults(FaultPlan):
    """PIX4Dcloud API faults, drawn at ``start_rate`` on the processing routes, else ``rate``."""

    def __init__(self, opts: SoakOptions) -> None:
        super().__init__(
            API_FAULT_KINDS,
            API_ROUTES,
            API_RANDOM_KINDS,
            fixed_routes={"start_ambiguous": "start"},
        )
        self._opts = opts
        self._draws = random.Random(opts.seed + 1)

    def take(self, route: str, accept: Callable[[str], bool] | None = None) -> PlannedFault | None:
        fault = super().take(route, accept)
        if fault is not None:
            return fault
        rate = self._opts.start_rate if route in PIX4D_PROCESSING_ROUTES else self._opts.rate
        with self._lock:  # the plan's own lock also guards ``injected``
            if self._draws.random() >= rate:
                return None
            kinds = [k for k in (*API_RANDOM_KINDS, "stall") if accept is None or accept(k)]
            kind = self._draws.choice(kinds)
            self.injected[kind] += 1
        return PlannedFault(kind, route, 1, delay_s=STALL_DELAY_S, is_random=True)


def _pix4d_faults(cloud: FakePix4DCloud, opts: SoakOptions) -> None:
    cloud.api_faults = ApiFaults(opts)
    cloud.s3_faults.random(
        opts.rate, opts.seed + 2, kinds=(*S3_RANDOM_KINDS, "stall"), delay_s=STALL_DELAY_S
    )


# --------------------------------------------------------------------------- configuration


def _upload_settings(opts: SoakOptions) -> str:
    # Attempts high enough that 30 % faults never use them up by bad luck (0.3^100).
    return (
        f"concurrency = {opts.concurrency}\nattempts = {opts.attempts}\nstall_s = {opts.stall_s}\n"
    )


def configure_pix4d(box: Box, cloud: FakePix4DCloud, opts: SoakOptions, upload: str = "") -> None:
    """The box's configuration for ``cloud``, with the run's ``[upload]`` settings."""
    secret = box.root / "pix4d.secret"
    secret.write_text(cloud.client_secret + "\n")
    secret.chmod(0o600)
    box.write_config(
        upload=_upload_settings(opts) + upload,
        extra=(
            f'[targets.cloud]\ntype = "pix4dcloud"\nurl = "{cloud.url}"\n'
            f'client_id = "{cloud.client_id}"\nclient_secret_file = "{secret}"\n'
            f"poll_s = 0.2\ntimeout_s = {REQUEST_TIMEOUT_S}\n"
            "multipart_threshold_mb = 5\npart_size_mb = 5\n"
        ),
        source_target="cloud",
    )


def configure_nodeodm(box: Box, node: FakeNodeODM, opts: SoakOptions) -> None:
    """The box's configuration for ``node``, with the run's ``[upload]`` settings."""
    token = box.root / "node.token"
    token.write_text(NODE_TOKEN + "\n")
    token.chmod(0o600)
    box.write_config(
        upload=_upload_settings(opts),
        extra=(
            f'[targets.odm]\ntype = "nodeodm"\nurl = "{node.url}"\ntoken_file = "{token}"\n'
            f"poll_s = 0.2\ntimeout_s = {REQUEST_TIMEOUT_S}\n"
            # Ambiguous faults are frequent here by design: the soak measures convergence,
            # not the replacement budget (tests/integration/test_nodeodm_faults.py does).
            "max_task_replacements = 100\n"
        ),
        source_target="odm",
    )


# --------------------------------------------------------------------------- what landed


@dataclass
class Landing:
    """What one dataset left on the server, by content hash."""

    stored: Counter[str] = field(default_factory=Counter)  # sha256 -> copies stored
    truncated: int = 0
    processing_starts: int = 0  # start_processing calls, or committed tasks
    finished: bool = False  # the server says processing is done
    notes: list[str] = field(default_factory=list)


def node_landing(node: FakeNodeODM, flight: Flight) -> Landing:
    committed = [t for t in node.tasks().values() if t.name == flight.name and t.committed]
    landing = Landing(processing_starts=len(committed))
    for task in committed:
        landing.stored.update(f.sha256 for f in task.files.values() if not f.truncated)
        landing.truncated += sum(f.truncated for f in task.files.values())
        landing.finished = task.status_code == 40
    return landing


def pix4d_landing(cloud: FakePix4DCloud, flight: Flight) -> tuple[Landing, int]:
    """The landing over every project of that name, and how many were left empty."""
    landing = Landing()
    empty = 0
    for project in cloud.projects().values():
        if project.name != flight.name:
            continue
        # Once DONE the fake writes outputs (a report, a mosaic) under the same prefix.
        objects = {
            k: v for k, v in cloud.objects(project.prefix + "/").items() if k.endswith(".JPG")
        }
        landing.stored.update(sha for _, sha in objects.values())
        landing.processing_starts += project.start_calls
        if not objects and not project.start_calls:
            empty += 1
            continue
        landing.finished = project.public_status == "DONE"
        if project.registered != set(objects):
            landing.notes.append(
                f"project {project.id}: {len(project.registered)} keys registered,"
                f" {len(objects)} images stored"
            )
    return landing, empty


# --------------------------------------------------------------------------- a run


@dataclass
class SoakResult:
    """What a run found: the properties that failed (none, hopefully) and its figures."""

    target: str
    problems: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)  # dataset -> status counts
    states: dict[str, str] = field(default_factory=dict)  # dataset -> state
    lost: int = 0  # images on no server, in a dataset that does not show failed
    held_back: int = 0  # images not on the server, in a dataset that shows failed (visibly)
    sent_twice: int = 0  # extra copies stored
    truncated: int = 0
    requests: int = 0  # requests the servers answered (or failed on purpose)
    upload_faults: dict[str, int] = field(default_factory=dict)  # NodeODM: "ambiguous", "clear"
    empty_projects: int = 0  # PIX4Dcloud projects created but never used
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


@contextmanager
def serve(target: str, box: Box, opts: SoakOptions) -> Iterator[FakeNodeODM | FakePix4DCloud]:
    """The target's local server, with the box configured for it; NodeODM with its faults."""
    if target == "nodeodm":
        with FakeNodeODM(
            box.root / "node", token=NODE_TOKEN, setup_s=0.1, queued_s=0.1, running_s=0.5
        ) as node:
            node.faults = NodeFaults(opts)
            configure_nodeodm(box, node, opts)
            yield node
    elif target == "pix4dcloud":
        with FakePix4DCloud(
            client_id="soak-box", client_secret=PIX4D_SECRET, processing_s=(0.3, 0.6)
        ) as cloud:
            _pix4d_faults(cloud, opts)
            configure_pix4d(box, cloud, opts)
            yield cloud
    else:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def run_soak(
    target: str,
    box: Box,
    opts: SoakOptions,
    progress: Callable[[str], None] | None = None,
) -> SoakResult:
    """Ingest the flights through flaky servers and check what landed; never raises on a
    failed property (it is listed in ``problems``)."""
    opts.check()
    say = progress or (lambda line: None)
    result = SoakResult(target)
    flights = make_flights(box.root / "staging", opts)
    with serve(target, box, opts) as server:
        proc = box.start(env={"DRONESYNC_UPLOAD__BACKOFF_INITIAL_S": "0.05"})
        started = time.monotonic()
        for flight in flights:
            (box.root / "staging" / flight.name).rename(box.inbox / flight.name)
        result.problems += _wait_settled(box, proc.poll, flights, started, opts, say)
        result.wall_s = time.monotonic() - started
        if isinstance(server, FakeNodeODM):
            result.faults = server.faults.injected
            if isinstance(server.faults, NodeFaults):
                result.upload_faults = server.faults.on_uploads()
            server.faults.clear()
        else:
            result.faults = {f"api {k}": n for k, n in server.api_faults.injected.items()}
            result.faults |= {f"s3 {k}": n for k, n in server.s3_faults.injected.items()}
            server.api_faults.clear()
            server.s3_faults.clear()
        _check_statuses(box, flights, result)
        _check_landings(server, flights, result)
        if proc.poll() is not None:
            result.problems.append(f"the daemon exited ({proc.returncode}) during the run")
        else:
            code = box.stop(proc, signal.SIGTERM)
            if code != 0:
                result.problems.append(f"the daemon exited {code} on SIGTERM")
        result.requests = sum(server.requests.values())
        if isinstance(server, FakePix4DCloud):
            result.requests += sum(server.s3_requests.values())
    result.figures = _figures(box, opts, flights, result)
    return result


def _wait_settled(
    box: Box,
    exited: Callable[[], int | None],
    flights: list[Flight],
    started: float,
    opts: SoakOptions,
    say: Callable[[str], None],
) -> list[str]:
    """Wait until every dataset ended (processed or failed), a file failed, or the deadline."""
    names = {f.name for f in flights}
    total = sum(f.files for f in flights)
    next_report = started + 10.0
    while True:
        datasets = {n: d for n, d in box.datasets().items() if n in names}
        done = sum(d["files"]["uploaded"] + d["files"]["duplicate"] for d in datasets.values())
        failed = sum(d["files"]["failed"] for d in datasets.values())
        states = sorted(d["state"] for d in datasets.values())
        if len(datasets) == len(names) and set(states) <= {"processed", "failed"}:
            return []
        if failed:
            return [f"{failed} file(s) failed; see `dronesync status --files`"]
        if exited() is not None:
            return ["the daemon exited during the run"]
        now = time.monotonic()
        if now - started > opts.deadline_s:
            return [
                f"not settled after {opts.deadline_s:g} s: {done}/{total} files uploaded or"
                f" duplicate, datasets {states}"
            ]
        if now >= next_report:
            say(f"  {now - started:5.0f} s: {done}/{total} files done, datasets {states}")
            next_report = now + 10.0
        time.sleep(0.25)


def _check_statuses(box: Box, flights: list[Flight], result: SoakResult) -> None:
    """What the operator sees: every file uploaded or duplicate, every dataset processed."""
    for flight in flights:
        shown = box.status(flight.name, files=True)["datasets"]
        if not shown:
            result.problems.append(f"{flight.name}: not in status")
            continue
        dataset = shown[0]
        result.states[flight.name] = dataset["state"]
        counts = Counter(f["status"] for f in dataset["file_list"])
        result.statuses[flight.name] = counts
        if dataset["state"] != "processed":
            result.problems.append(
                f"{flight.name}: state {dataset['state']} ({dataset.get('detail')})"
            )
        want = Counter({"uploaded": len(flight.images), "duplicate": len(flight.copies)})
        if counts != want:
            result.problems.append(f"{flight.name}: statuses {dict(counts)}, want {dict(want)}")


def _check_landings(
    server: FakeNodeODM | FakePix4DCloud, flights: list[Flight], result: SoakResult
) -> None:
    """Server side, by hash: each image once, none lost, none truncated, one start."""
    for flight in flights:
        if isinstance(server, FakeNodeODM):
            landing = node_landing(server, flight)
        else:
            landing, empty = pix4d_landing(server, flight)
            result.empty_projects += empty
        lost = set(flight.images) - set(landing.stored)
        twice = {sha: n for sha, n in landing.stored.items() if n > 1}
        foreign = set(landing.stored) - set(flight.images)
        if result.states.get(flight.name) == "failed":
            result.held_back += len(lost)
        else:
            result.lost += len(lost)
        result.sent_twice += sum(n - 1 for n in twice.values())
        result.truncated += landing.truncated
        if lost:
            paths = sorted(flight.images[sha] for sha in lost)
            result.problems.append(f"{flight.name}: {len(lost)} image(s) not landed: {paths[:5]}")
        if twice:
            result.problems.append(f"{flight.name}: {len(twice)} image(s) stored more than once")
        if foreign:
            result.problems.append(f"{flight.name}: {len(foreign)} object(s) match no image")
        if landing.truncated:
            result.problems.append(f"{flight.name}: {landing.truncated} truncated image(s)")
        if landing.processing_starts != 1:
            result.problems.append(
                f"{flight.name}: processing started {landing.processing_starts} times"
            )
        if not landing.finished:
            result.problems.append(f"{flight.name}: the server did not finish processing")
        result.problems += [f"{flight.name}: {note}" for note in landing.notes]


# --------------------------------------------------------------------------- figures


def log_events(box: Box) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (anything else in the log is skipped)."""
    events: list[dict[str, Any]] = []
    for line in box.log().splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _journal_attempts(box: Box) -> tuple[int, int]:
    """Files that needed more than one attempt, and the most attempts any file needed."""
    con = sqlite3.connect(f"file:{box.state / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        retried, most = con.execute(
            "SELECT count(*) FILTER (WHERE attempts > 1), coalesce(max(attempts), 0) FROM files"
        ).fetchone()
    finally:
        con.close()
    return int(retried), int(most)


def _figures(
    box: Box,
    opts: SoakOptions,
    flights: list[Flight],
    result: SoakResult,
) -> dict[str, str]:
    events = log_events(box)
    uploaded = [e for e in events if e.get("event") == "file uploaded"]
    resets = [e for e in events if e.get("event") == "new task for the dataset"]
    # Only an event with an old task replaced anything.
    replaced = [e for e in resets if e.get("old_task")]
    retried, most = _journal_attempts(box)
    faults = sum(result.faults.values())
    unique = sum(len(f.images) for f in flights)
    figures = {
        "target": result.target,
        "files": f"{sum(f.files for f in flights)} ({unique} unique, "
        f"{sum(len(f.copies) for f in flights)} byte-identical copies, {opts.big} multipart)",
        "datasets": str(len(flights)),
        "seed": str(opts.seed),
        "requests served": str(result.requests),
        "faults injected": f"{faults} ({faults / max(result.requests, 1):.0%} of requests)",
    }
    for kind, n in sorted(result.faults.items()):
        figures[f"  {kind}"] = str(n)
    if result.upload_faults:
        figures["  of which on uploads"] = (
            f"{result.upload_faults['clear']} clear refusals,"
            f" {result.upload_faults['ambiguous']} ambiguous"
        )
    figures |= {
        "failed attempts, retried": str(
            sum(max(int(e.get("attempt", 1)) - 1, 0) for e in uploaded)
        ),
        "uploads parked (backoff)": str(sum(e.get("event") == "upload parked" for e in events)),
        "files retried (journal)": f"{retried} (most attempts for one file: {most})",
    }
    if result.target == "nodeodm":
        figures["task resets"] = str(len(replaced))
        figures["images sent again by resets"] = str(
            sum(int(e.get("files_sent_again", 0)) for e in replaced)
        )
    else:
        figures["empty projects left behind"] = str(result.empty_projects)
    figures |= _landed_figures(result, flights)
    figures["wall time"] = f"{result.wall_s:.1f} s"
    figures["result"] = "PASS" if result.ok else f"FAIL ({len(result.problems)} problem(s))"
    return figures


def _landed_figures(result: SoakResult, flights: list[Flight]) -> dict[str, str]:
    statuses: Counter[str] = Counter()
    for counts in result.statuses.values():
        statuses.update(counts)
    return {
        "statuses": ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none",
        "datasets processed": f"{sum(s == 'processed' for s in result.states.values())}"
        f"/{len(flights)}",
        "duplicates sent": str(result.sent_twice),
        "files lost": str(result.lost),
        "files held back, dataset shown failed": str(result.held_back),
        "truncated images": str(result.truncated),
    }
