"""WebODM: the local WebODM-compatible server and the two clients measured against it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
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
    FAKE_WEBODM,
    MemoryState,
    Throttle,
    WebODMTarget,
    WebODMTargetConfig,
)
from benchkit.settling import settle

USER = "bench"


class WebODM:
    """The local WebODM-compatible server, one project on it, and the clients measured.

    Both clients sign in and find the project before anything is timed (the daemon does so
    once per target, not per dataset); each run is then timed over the task's creation, the
    uploads and the commit.
    """

    def __init__(
        self,
        work: Path,
        concurrency: int,
        curl: str | None,
        batch: int,
        *,
        fault_rate: float = 0.0,
        place: Placement | None = None,
    ) -> None:
        """``fault_rate``: the share of uploads answered 502 by the server (then retried)."""
        self.work = work
        self.root = work / ("webodm-faults" if fault_rate else "webodm")
        self.password = secrets.token_hex(16)
        args = [*listen_args(place), "--root", str(self.root)]
        args += ["--user", USER, "--password", self.password]
        if fault_rate:
            args += ["--upload-fault-rate", str(fault_rate), "--upload-fault", "status502"]
        self.retrying = bool(fault_rate)
        self.server = Server(
            FAKE_WEBODM,
            args,
            self.root.with_suffix(".log"),
            "http://",
            place.prefix() if place else (),
        )
        self.url = self.server.lines[-1].strip()
        if place is not None:
            self.url = place.expose(self.url)
        self.http = httpx.Client(base_url=self.url, timeout=600)
        signed = self.http.post(
            "/api/token-auth/", data={"username": USER, "password": self.password}
        )
        self.token = str(signed.raise_for_status().json()["token"])
        self.http.headers["authorization"] = f"JWT {self.token}"
        made = self.http.post("/api/projects/", json={"name": "bench"})
        self.project = int(made.raise_for_status().json()["id"])
        self.concurrency = concurrency
        self.curl = curl
        self.batch = batch
        self._ids = iter(range(1, 1 << 30))

    def close(self) -> None:
        """Close the client, then stop the server."""
        self.http.close()
        self.server.close()

    def _collect(self, task: str, data: DataSet, who: str) -> None:
        """Check the task holds every file, whole, then delete them (``<project>/<task id>``)."""
        project, _, task_id = task.partition("/")
        folder = self.root / "project" / project / "task" / task_id
        sizes = {p.name: p.stat().st_size for p in folder.iterdir()} if folder.is_dir() else {}
        shutil.rmtree(folder, ignore_errors=True)
        want = {item.path.name: item.size for item in data.items}
        if sizes != want:
            raise SystemExit(
                f"webodm, {who}: the task holds {len(sizes)} files of {sum(sizes.values())}"
                f" bytes, not {len(want)} of {sum(want.values())}"
            )

    def curl_run(self, data: DataSet) -> dict[str, Sample]:
        """``curl`` makes a partial task, ``curl -F`` each file into it, ``curl`` commits."""
        assert self.curl is not None
        run = next(self._ids)
        tasks = f"{self.url}/api/projects/{self.project}/tasks/"
        auth = f"Authorization: JWT {self.token}"
        base = [self.curl, "-sS", "--fail", "-H", auth]
        body = json.dumps({"partial": True, "name": f"reference-curl-{run}"})
        create = [*base, "-H", "Content-Type: application/json", "-d", body, tasks]
        settle()
        with Meter(self.server.proc.pid, child=True) as meter:
            task_id = str(json.loads(run_tool(create))["id"])
            route = f"{tasks}{task_id}/"
            if len(data.items) == 1:
                form = f"images=@{data.paths[0]}"
                run_tool([*base, "-o", "/dev/null", "-F", form, f"{route}upload/"])
            else:
                # The route holds the task's id: the batches are written once it is known.
                entries = [
                    [
                        f"url = {quote(route + 'upload/')}",
                        f"header = {quote(auth)}",
                        f"form = {quote(f'images=@{p}')}",
                    ]
                    for p in data.paths
                ]
                configs = curl_batches(self.work, entries, self.batch, "webodm")
                xargs_curl(self.curl, configs, self.concurrency)
            run_tool([*base, "-o", "/dev/null", "-X", "POST", f"{route}commit/"])
        self._collect(f"{self.project}/{task_id}", data, "curl")
        return {"curl": meter.sample}

    def dronesync_run(self, data: DataSet, throttle: Throttle | None = None) -> dict[str, Sample]:
        """The target's uploads into a new task (made by the first), then its commit.

        ``throttle``: the engine's bandwidth limit, when one is set.
        """
        run_id = next(self._ids)
        meter = Meter(self.server.proc.pid, child=False)

        async def go() -> str:
            config = WebODMTargetConfig(
                type="webodm", url=self.url, username=USER, project=str(self.project)
            )
            target = WebODMTarget("bench", config, MemoryState(), password=self.password)
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(target.aclose)
                engine, ref = await run_dataset(
                    stack, target, run_id, self.concurrency, engine=self.retrying
                )
                await target.ensure_dataset(ref)  # the token and the project
                settle()
                with meter:
                    if engine:
                        keys = await engine.upload(data.items)
                    else:
                        keys = await gather_uploads(
                            target, ref, data.items, self.concurrency, throttle
                        )
                    return await target.start_processing(ref, keys)

        self._collect(asyncio.run(go()), data, "dronesync")
        return {"dronesync": meter.sample}
