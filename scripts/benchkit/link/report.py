"""What scripts/bench-link prints: per link, the capacity, then each target against it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import IO

from benchkit.bench_targets.data import DataSet
from benchkit.bench_targets.results import Sample
from benchkit.link.netns import LinkSpec
from benchkit.table import left, right

GOAL_CAPACITY = 0.95
GOAL_LIMIT = 0.03  # held within 3 % of the limit
GOAL_FAULTS = 0.80
GOAL_PEER = 1.00
GOAL_CPU = 1.30  # client CPU per GB, at most this times curl's


@dataclass(frozen=True)
class Measured:
    """One timed transfer across the link; ``wire``: bytes that left this side meanwhile."""

    key: str
    sample: Sample
    nbytes: int
    wire: int
    target: str = ""
    kind: str = ""

    @property
    def mbps(self) -> float:
        """MB/s (10^6 bytes) of the payload."""
        return self.nbytes / 1e6 / self.sample.seconds

    @property
    def wire_mbps(self) -> float:
        """MB/s of what left this side of the link, frames and retries included."""
        return self.wire / 1e6 / self.sample.seconds

    @property
    def cpu_per_gb(self) -> float | None:
        """The client's CPU seconds per GB of payload."""
        cpu = self.sample.client_cpu
        return None if cpu is None else cpu / (self.nbytes / 1e9)


HEAD = ("target", "transfer", "MB/s", "against", "ratio", "range", "goal")
WIDTHS = (10, 36, 7, 13, 5, 9, 7)


def _best(results: list[Measured], target: str, kind: str, key: str) -> list[Measured]:
    """Every run of one client in one kind of transfer, fastest first."""
    found = [m for m in results if (m.target, m.kind, m.key) == (target, kind, key)]
    return sorted(found, key=lambda m: m.sample.seconds)


def _line(
    cells: tuple[str, str], values: tuple[str, str, str, str], goal: str, ok: bool, out: IO[str]
) -> None:
    verdict = "ok" if ok else "below goal"
    print(f"{left(cells, WIDTHS)}  {right((*values, goal), WIDTHS[2:])}  {verdict}", file=out)


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""


def print_link(
    spec: LinkSpec,
    caps: list[Measured],
    results: list[Measured],
    data: DataSet,
    args: argparse.Namespace,
    out: IO[str],
) -> None:
    """The link's capacity, then per target every ratio against its goal."""
    cap = max(caps, key=lambda m: m.mbps)
    print(
        f"\nlink {spec.name}: {spec.mbit:g} Mbit/s, {spec.rtt_ms:g} ms RTT; capacity (curl -T"
        f" of {cap.nbytes / 1e6:.0f} MB to a sink, 1 connection): {cap.mbps:.2f} MB/s"
        f" ({', '.join(f'{m.mbps:.2f}' for m in caps)}), wire {cap.wire_mbps:.2f} MB/s;"
        f" curl {cap.cpu_per_gb or 0:.2f} CPU-s/GB",
        file=out,
    )
    print(
        f"data: {len(data.items)} images, {data.nbytes / 1e6:.0f} MB,"
        f" {args.concurrency} at a time; best of {args.runs}",
        file=out,
    )
    print(left(HEAD, WIDTHS) + "  result", file=out)
    for target in args.targets:
        _target_rows(target, cap, caps[0], results, args, out)
    print("* both sides timed over task init, uploads and commit", file=out)


def _target_rows(
    target: str,
    cap: Measured,
    first: Measured,
    results: list[Measured],
    args: argparse.Namespace,
    out: IO[str],
) -> None:
    full = _best(results, target, "full", "dronesync")
    if not full:
        return
    c = args.concurrency
    ratios = [m.mbps / cap.mbps for m in full]
    values = (f"{full[0].mbps:.2f}", "capacity", f"{ratios[0]:.2f}", _span(ratios))
    _line(
        (target, f"dronesync, {c} at a time"),
        values,
        f">={GOAL_CAPACITY:.2f}",
        ratios[0] >= GOAL_CAPACITY,
        out,
    )
    limited = _best(results, target, "limit", "dronesync")
    if limited:
        limit = first.mbps * args.limit_share  # as set: from the capacity measured first
        ratios = [m.mbps / limit for m in limited]
        worst = max(abs(r - 1) for r in ratios)
        values = (f"{limited[0].mbps:.2f}", f"limit {limit:.2f}", f"{ratios[0]:.2f}", _span(ratios))
        _line(
            (target, f"bandwidth_limit {args.limit_share:g} x capacity"),
            values,
            f"1±{GOAL_LIMIT:.2f}",
            worst <= GOAL_LIMIT,
            out,
        )
    faults = _best(results, target, "faults", "dronesync")
    if faults:
        # The link kept busy is what retries can change: a server that refuses an upload
        # after reading its body spends that body's share of the link, so the goodput of
        # servers that do (NodeODM, WebODM) is bound near 1 - the failing share.
        ratios = [m.wire_mbps / cap.wire_mbps for m in faults]
        goodput = faults[0].mbps / cap.mbps
        values = (f"{faults[0].wire_mbps:.2f}", "capacity", f"{ratios[0]:.2f}", _span(ratios))
        _line(
            (target, f"{args.fault_rate:.0%} of uploads failing, goodput {goodput:.2f}"),
            values,
            f">={GOAL_FAULTS:.2f}",
            ratios[0] >= GOAL_FAULTS,
            out,
        )
    peers = [
        ("curl", "dronesync", f"curl, {c} at a time"),
        ("rclone", "dronesync", f"rclone, --transfers {c}"),
        ("pyodm", "dronesync task", f"pyodm, {c} threads *"),
    ]
    for key, ours_key, label in peers:
        theirs, ours = _best(results, target, "peer", key), _best(results, target, "full", ours_key)
        if not theirs or not ours:
            continue
        ratio = ours[0].mbps / theirs[0].mbps
        _line(
            (target, f"dronesync beside {label}"),
            (f"{ours[0].mbps:.2f}", f"{key} {theirs[0].mbps:.2f}", f"{ratio:.2f}", ""),
            f">={GOAL_PEER:.2f}",
            ratio >= GOAL_PEER,
            out,
        )
    curl = _best(results, target, "peer", "curl")
    ours_cpu = full[0].cpu_per_gb
    if curl and ours_cpu is not None and curl[0].cpu_per_gb:
        ratio = ours_cpu / curl[0].cpu_per_gb
        values = (f"{ours_cpu:.2f}", f"curl {curl[0].cpu_per_gb:.2f}", f"{ratio:.2f}", "")
        _line(
            (target, "client CPU-s per GB"),
            values,
            f"<={GOAL_CPU:.2f}",
            ratio <= GOAL_CPU,
            out,
        )
