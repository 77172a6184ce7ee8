"""The link scenario (``--link-mbit``): a card ingested and sent to a node through a slow link.

The daemon sends to the local NodeODM-compatible server (its own process, outside the small
box) with ``bandwidth_limit`` at the link's rate, the card arriving as in the ingest scenario:
reading, hashing, copying (spool mode) and sending share the daemon's CPU. Timed from the
card's arrival until every file is uploaded, against the link's rate and against ``curl -F``
sending the same files one after the other at ``--limit-rate`` from the same box.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import httpx

from benchkit.bench.card import Card, card_shape
from benchkit.bench.harness import Bench
from benchkit.bench.ingest import Ingest, card_read, daemon_ingest, write_card
from benchkit.bench_targets.tools import Server, curl_batches, quote, xargs_curl
from benchkit.files import files_under
from benchkit.project import FAKE_NODEODM
from benchkit.settling import remove, settle
from benchkit.smallcpu import maybe_inside
from benchkit.timing import progress, timed

GOAL_LINK = 0.95  # sent / the link's rate


class Node:
    """The local NodeODM-compatible server, storing without hashing, as NodeODM does."""

    def __init__(self, work: Path) -> None:
        self.root = work / "node"
        args = ["--port", "0", "--root", str(self.root), "--setup-s", "86400", "--no-digest"]
        self.server = Server(FAKE_NODEODM, args, work / "node.log", "http://")
        self.url = self.server.lines[-1].strip()

    def stored(self) -> int:
        """Files the node holds in all its tasks."""
        return sum(1 for p in files_under(self.root / "tmp") if not p.endswith("body.json"))

    def clear(self) -> None:
        """Forget every task's files (between runs)."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        shutil.rmtree(self.root / "data", ignore_errors=True)

    def close(self) -> None:
        """Stop the server."""
        self.server.close()


def curl_send(bench: Bench, card: Card, node: Node, rate: int) -> float:
    """``curl -F`` of every file, one after another at ``--limit-rate``, on the box: seconds."""
    curl = shutil.which("curl") or "curl"
    uuid = httpx.post(f"{node.url}/task/new/init", files={"name": (None, "curl")}).json()["uuid"]
    route = f"{node.url}/task/new/upload/{uuid}"
    mounted = card.image.mounted(card.root) if card.image else contextlib.nullcontext()
    with mounted:
        entries = [
            [f"url = {quote(route)}", f"form = {quote(f'images=@{p}')}", f"limit-rate = {rate}"]
            for p in files_under(card.root)
        ]
        configs = curl_batches(bench.work, entries, len(entries), "link")
        settle()
        with maybe_inside(bench.confine):
            seconds = timed(lambda: xargs_curl(curl, configs, 1))
    got = node.stored()
    node.clear()
    if got != card.files:
        raise SystemExit(f"curl: the node stored {got} files, not {card.files}")
    return seconds


def bench_link_shape(bench: Bench, shape: str, pool: bytes) -> None:
    """The card of ``shape`` sent through the link by the daemon and by curl, in turns."""
    args = bench.args
    files, size, folders, label = card_shape(args, shape)
    rate = round(args.link_mbit * 1e6 / 8)
    progress(f"link {label}: writing the card")
    folders = min(folders, files)
    card = write_card(bench, bench.work / f"card-{shape}", files, size, folders, pool, label)
    node = Node(bench.work)  # started here: outside the box
    target = ['type = "nodeodm"', f'url = "{node.url}"']
    upload = [f"bandwidth_limit = {rate}"]
    modes = [m for m in ("ingest", "spool") if m in args.scenarios]
    curls: list[float] = []
    reads: list[float] = []
    runs: dict[str, list[Ingest]] = {mode: [] for mode in modes}
    try:
        for round_ in range(1, args.runs + 1):
            if card.image is not None:
                reads.append(card_read(bench, card))
            curls.append(curl_send(bench, card, node, rate))
            progress(f"link {label}, round {round_}: curl {curls[-1]:.2f} s")
            for mode in modes:
                name = f"link-{mode}-{shape}-{round_}"
                run = daemon_ingest(
                    bench, card, name, spool=mode == "spool", arrive=True, target=target,
                    upload=upload,
                )  # fmt: skip
                got = node.stored()
                node.clear()
                remove(bench.work / name)  # the spool's copies
                if got != card.files:
                    raise SystemExit(f"{name}: the node stored {got} files, not {card.files}")
                runs[mode].append(run)
                progress(f"link {label}, round {round_}: the daemon, {mode} {run.seconds:.2f} s")
    finally:
        node.close()
    for mode, done in runs.items():
        add_link_rows(bench, card, mode, done, curls, reads)
    if card.image is not None:
        card.image.close()
        bench.cards.remove(card.image)
    remove(card.root)


def add_link_rows(
    bench: Bench, card: Card, mode: str, done: list[Ingest], curls: list[float], reads: list[float]
) -> None:
    """The rows and the note of the daemon's runs in ``mode`` over the link."""
    args = bench.args
    mb = card.nbytes / 1e6
    best = f"best of {args.runs}"
    tag = f"{card.label}{', spool' if mode == 'spool' else ''}"
    run = min(done, key=lambda r: r.seconds)
    name = f"sent over {args.link_mbit:g} Mbit/s, {tag} (MB/s, {best})"
    ours = mb / run.seconds
    link = args.link_mbit / 8
    bench.add(name, ours, reference="the link", ref=link, goal=GOAL_LINK, higher=True)
    curl = f"curl -F --limit-rate, {best}"
    bench.add(name, ours, reference=curl, ref=mb / min(curls), higher=True)
    removable = "" if run.removable_s is None else f"; card removable at {run.removable_s:.1f} s"
    alone = f" (the card read alone: {min(reads):.1f} s)" if reads else ""
    bench.notes.append(
        f"link {tag}: {', '.join(f'{r.seconds:.1f}' for r in done)} s (curl:"
        f" {', '.join(f'{s:.1f}' for s in curls)} s); best round:"
        f" {run.card_cpu_s * 1e3 / mb:.2f} CPU s/GB since the card came{removable}{alone}"
    )
