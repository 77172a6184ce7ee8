"""NodeODM: the local NodeODM-compatible server and the three clients measured against it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from pathlib import Path

import httpx

from benchkit.bench_targets.data import DataSet
from benchkit.bench_targets.engine import run_dataset
from benchkit.bench_targets.results import Meter, Sample
from benchkit.bench_targets.tools import (
    Placement,
    Server,
    curl_batches,
    listen_args,
    quote,
    run_tool,
    xargs_curl,
)
from benchkit.bench_targets.uploads import gather_uploads
from benchkit.project import (
    FAKE_NODEODM,
    MemoryState,
    NodeODMTarget,
    NodeODMTargetConfig,
    Throttle,
)
from benchkit.settling import settle


class NodeODM:
    """The local NodeODM-compatible server and the three clients measured against it."""

    def __init__(
        self,
        work: Path,
        concurrency: int,
        curl: str | None,
        batch: int,
        pyodm_threads: int,
        *,
        digest: bool,
        drops: bool = False,
        drop_rate: float | None = None,
        place: Placement | None = None,
    ) -> None:
        """``drops``: the node drops about half the uploads (``drop_rate``: that share)."""
        self.work = work
        drops = drops or bool(drop_rate)
        self.root = work / ("nodeodm-drops" if drops else "nodeodm")
        self.drops = drops
        # Committed tasks stay in setup (no background file moves while others are timed)
        # until they are removed. The node stores without hashing unless asked to, as
        # NodeODM does: its SHA-256 was a third of its CPU, which bounded every client.
        self.server = Server(
            FAKE_NODEODM,
            [*listen_args(place), "--root", str(self.root), "--setup-s", "86400"]
            + ([] if digest else ["--no-digest"])
            + (["--test-drop-uploads"] if drops and drop_rate is None else [])
            + (["--drop-rate", str(drop_rate)] if drop_rate else []),
            self.root.with_suffix(".log"),
            "http://",
            place.prefix() if place else (),
        )
        self.url = self.server.lines[-1].strip()
        if place is not None:
            self.url = place.expose(self.url)
        self.http = httpx.Client(base_url=self.url, timeout=600)
        self.concurrency = concurrency
        self.curl = curl
        self.batch = batch
        self.pyodm_threads = pyodm_threads
        self._ids = iter(range(1, 1 << 30))

    def close(self) -> None:
        """Close the client, then stop the server."""
        self.http.close()
        self.server.close()

    def _init(self) -> str:
        reply = self.http.post("/task/new/init", files={"name": (None, "bench-reference")})
        return str(reply.json()["uuid"])

    def _drop(self, uuid: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self.http.post("/task/remove", data={"uuid": uuid})
        shutil.rmtree(self.root / "tmp" / uuid, ignore_errors=True)
        shutil.rmtree(self.root / "data" / uuid, ignore_errors=True)

    def _check(self, uuid: str, data: DataSet, who: str) -> None:
        """What the node stored for the task: every file, whole."""
        folder = self.root / "tmp" / uuid
        sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "body.json"}
        want = {item.path.name: item.size for item in data.items}
        if sizes != want:
            raise SystemExit(
                f"nodeodm, {who}: the node stored {len(sizes)} files of {sum(sizes.values())}"
                f" bytes, not {len(want)} of {sum(want.values())}"
            )

    def curl_run(self, data: DataSet) -> dict[str, Sample]:
        """``curl -F`` of every file to a task's upload route (``xargs -P`` for several)."""
        assert self.curl is not None
        uuid = self._init()
        route = f"{self.url}/task/new/upload/{uuid}"
        meter = Meter(self.server.proc.pid, child=True)
        try:
            if len(data.items) == 1:
                argv = [self.curl, "-sS", "--fail", "-o", "/dev/null"]
                argv += ["-F", f"images=@{data.paths[0]}", route]
                settle()
                with meter:
                    run_tool(argv)
            else:
                entries = [
                    [f"url = {quote(route)}", f"form = {quote(f'images=@{p}')}"] for p in data.paths
                ]
                configs = curl_batches(self.work, entries, self.batch, "nodeodm")
                settle()
                with meter:
                    xargs_curl(self.curl, configs, self.concurrency)
            self._check(uuid, data, "curl")
        finally:
            self._drop(uuid)
        return {"curl": meter.sample}

    def dronesync_run(self, data: DataSet, throttle: Throttle | None = None) -> dict[str, Sample]:
        """Init, uploads, commit; the uploads alone compare with curl, all three with pyodm.

        ``throttle``: the engine's bandwidth limit, when one is set.
        """
        run_id = next(self._ids)
        meter = Meter(self.server.proc.pid, child=False)

        async def go() -> tuple[float, str]:
            config = NodeODMTargetConfig(type="nodeodm", url=self.url)
            target = NodeODMTarget("bench", config, MemoryState())
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(target.aclose)
                engine, ref = await run_dataset(
                    stack, target, run_id, self.concurrency, engine=self.drops
                )
                start = time.perf_counter()
                await target.ensure_dataset(ref)
                with meter:
                    if engine:
                        keys = await engine.upload(data.items)
                    else:
                        keys = await gather_uploads(
                            target, ref, data.items, self.concurrency, throttle
                        )
                sent = time.perf_counter()
                uuid = target.current_task(ref) or ""
                self._check(uuid, data, "dronesync")
                checked = time.perf_counter()
                await target.start_processing(ref, keys)
                end = time.perf_counter()
            return (sent - start) + (end - checked), uuid

        settle()
        task_s, uuid = asyncio.run(go())
        self._drop(uuid)
        return {"dronesync": meter.sample, "dronesync task": Sample(task_s)}

    def pyodm_run(self, data: DataSet) -> dict[str, Sample]:
        """The pyodm reference, ``Node.create_task``: init, uploads and commit, timed together."""
        from pyodm import Node  # noqa: PLC0415 - optional: a row is skipped without it

        node = Node.from_url(self.url, timeout=600)
        paths = [str(p) for p in data.paths]
        settle()
        try:
            with Meter(self.server.proc.pid, child=False) as meter:
                task = node.create_task(paths, parallel_uploads=self.pyodm_threads)
        except Exception as exc:  # pyodm raises several unrelated kinds
            if not self.drops:
                raise
            # pyodm tries each file 6 times: with half dropped, 1 file in 64 runs out.
            print(f"  pyodm gave up on the task: {exc!r}", file=sys.stderr, flush=True)
            return {}
        self._drop(task.uuid)
        return {"pyodm": meter.sample}
