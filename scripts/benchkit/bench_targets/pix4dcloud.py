"""PIX4Dcloud: the local server (API, S3 proxy, moto) and the clients measured against it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

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
    FAKE_PIX4DCLOUD,
    MemoryState,
    Pix4DCloudTarget,
    Pix4DCloudTargetConfig,
    Throttle,
    Transfer,
    UploadItem,
)
from benchkit.settling import settle


class Cloud:
    """The local PIX4Dcloud server (API, S3 proxy, moto) and the clients measured against it."""

    def __init__(
        self,
        work: Path,
        concurrency: int,
        curl: str | None,
        rclone: str | None,
        batch: int,
        multipart_threshold_mb: int | None,
        parallel_parts: int | None = None,
        *,
        fault_rate: float = 0.0,
        place: Placement | None = None,
    ) -> None:
        """``fault_rate``: the share of PutObject requests answered 503 (then retried)."""
        self.work = work
        args = [*listen_args(place), "--s3-credentials-ttl", "86400", "--token-ttl", "86400"]
        if place is not None:
            # The S3 endpoint is reached through the link too, at an address made beforehand.
            s3_port = place.port()
            args += ["--s3-port", str(s3_port)]
            args += ["--s3-public-url", place.expose(f"http://{place.host}:{s3_port}")]
        if fault_rate:
            args += ["--s3-fault-rate", str(fault_rate)]
        self.retrying = bool(fault_rate)
        self.server = Server(
            FAKE_PIX4DCLOUD,
            args,
            work / ("pix4dcloud-faults.log" if fault_rate else "pix4dcloud.log"),
            "Serving",
            place.prefix() if place else (),
        )
        fields = {}
        for line in self.server.lines:
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        self.url = fields["PIX4Dcloud API"]
        if place is not None:
            self.url = place.expose(self.url)
        self.client_id = fields["client id"]
        self.secret = fields["client secret"]
        # The endpoint line goes on with the bucket and region, in brackets.
        self.s3_url = fields["S3 endpoint"].split()[0]
        self.http = httpx.Client(base_url=self.url, timeout=600)
        token = self.http.post(
            "/oauth2/token/",
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.secret,
            },
        ).json()["access_token"]
        self.http.headers["authorization"] = f"Bearer {token}"
        self.concurrency = concurrency
        self.curl = curl
        self.rclone = rclone
        self.batch = batch
        self.multipart_threshold_mb = multipart_threshold_mb
        self.parallel_parts = parallel_parts
        self._ids = iter(range(1, 1 << 30))

    def close(self) -> None:
        """Close the client, then stop the server."""
        self.http.close()
        self.server.close()

    def _project(self, name: str) -> int:
        return int(self.http.post("/project/api/v3/projects/", json={"name": name}).json()["id"])

    def _credentials(self, project: int) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(
            f"/project/api/v3/projects/{project}/s3_credentials/"
        ).json()
        # Every client of a ratio goes to this one endpoint: the proxy, which checks the
        # temporary credentials, with moto behind it.
        if body["endpoint_override"] != self.s3_url:
            raise SystemExit(f"unexpected S3 endpoint {body['endpoint_override']}")
        return body

    @staticmethod
    def _client(creds: dict[str, Any]) -> Any:
        return boto3.session.Session().client(
            "s3",
            aws_access_key_id=creds["access_key"],
            aws_secret_access_key=creds["secret_key"],
            aws_session_token=creds["session_token"],
            region_name=creds.get("region") or "us-east-1",
            endpoint_url=creds["endpoint_override"],
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                max_pool_connections=16,
                retries={"total_max_attempts": 1},
            ),
        )

    def _collect(self, creds: dict[str, Any], prefix: str, data: DataSet, who: str) -> None:
        """Check every object arrived whole, then delete them (moto keeps them on disk)."""
        s3 = self._client(creds)
        try:
            found: dict[str, int] = {}
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=creds["bucket"], Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    found[obj["Key"]] = obj["Size"]
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda key: s3.delete_object(Bucket=creds["bucket"], Key=key), found))
        finally:
            s3.close()
        sizes = {key.rpartition("/")[2]: size for key, size in found.items()}
        want = {item.path.name: item.size for item in data.items}
        if not want.items() <= sizes.items():
            missing = sorted(set(want.items()) - set(sizes.items()))
            raise SystemExit(
                f"pix4dcloud, {who}: {len(missing)} of {len(want)} files missing or cut short"
                f" in S3, first {missing[0]}"
            )

    def curl_run(self, data: DataSet) -> dict[str, Sample]:
        """``curl -T`` of every file to a presigned PUT URL (``xargs -P`` for several)."""
        assert self.curl is not None
        run = next(self._ids)
        creds = self._credentials(self._project(f"reference-curl-{run}"))
        prefix = f"{creds['key']}/curl/"
        s3 = self._client(creds)
        urls = [
            s3.generate_presigned_url(
                "put_object",
                Params={"Bucket": creds["bucket"], "Key": prefix + p.name},
                ExpiresIn=86400,
            )
            for p in data.paths
        ]
        s3.close()
        meter = Meter(self.server.proc.pid, child=True)
        if len(urls) == 1:
            argv = [self.curl, "-sS", "--fail", "-o", "/dev/null", "-T", str(data.paths[0])]
            settle()
            with meter:
                run_tool([*argv, urls[0]])
        else:
            entries = [
                [f"url = {quote(url)}", f"upload-file = {quote(str(p))}"]
                for url, p in zip(urls, data.paths, strict=True)
            ]
            configs = curl_batches(self.work, entries, self.batch, "s3")
            settle()
            with meter:
                xargs_curl(self.curl, configs, self.concurrency)
        self._collect(creds, prefix, data, "curl")
        return {"curl": meter.sample}

    def rclone_run(self, data: DataSet) -> dict[str, Sample]:
        """``rclone copy`` of the folder, with the project's temporary credentials."""
        assert self.rclone is not None
        run = next(self._ids)
        creds = self._credentials(self._project(f"reference-rclone-{run}"))
        prefix = f"{creds['key']}/rclone/"
        conf = self.work / "rclone.conf"
        conf.unlink(missing_ok=True)
        conf.touch(mode=0o600)
        conf.write_text(
            "[bench]\n"
            "type = s3\n"
            "provider = Other\n"
            f"access_key_id = {creds['access_key']}\n"
            f"secret_access_key = {creds['secret_key']}\n"
            f"session_token = {creds['session_token']}\n"
            f"region = {creds.get('region') or 'us-east-1'}\n"
            f"endpoint = {creds['endpoint_override']}\n"
            "force_path_style = true\n"
            # The credentials cover the project's prefix only, as PIX4Dcloud's do: no bucket
            # calls.
            "no_check_bucket = true\n"
        )
        argv = [self.rclone, "--config", str(conf), "copy", str(data.folder)]
        argv += [f"bench:{creds['bucket']}/{prefix}", "--transfers", str(self.concurrency)]
        # Only the remote above: RCLONE_* or AWS_* variables (a CA bundle, other keys) would
        # change what rclone does or break its HTTP transport.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "AWS_"))}
        settle()
        with Meter(self.server.proc.pid, child=True) as meter:
            run_tool(argv, env=env)
        self._collect(creds, prefix, data, "rclone")
        return {"rclone": meter.sample}

    def dronesync_run(
        self, data: DataSet, warmup: UploadItem, throttle: Throttle | None = None
    ) -> dict[str, Sample]:
        """The target's uploads, after a warm-up upload that sets up the project.

        ``throttle``: the engine's bandwidth limit, when one is set.
        """
        run_id = next(self._ids)
        meter = Meter(self.server.proc.pid, child=False)

        async def go() -> int | None:
            extra = {}
            if self.multipart_threshold_mb is not None:
                extra["multipart_threshold_mb"] = self.multipart_threshold_mb
            if self.parallel_parts is not None:
                extra["parallel_parts"] = self.parallel_parts
            config = Pix4DCloudTargetConfig(
                type="pix4dcloud", url=self.url, client_id=self.client_id, **extra
            )
            target = Pix4DCloudTarget("bench", config, MemoryState(), client_secret=self.secret)
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(target.aclose)
                engine, ref = await run_dataset(
                    stack, target, run_id, self.concurrency, engine=self.retrying
                )
                await target.ensure_dataset(ref)
                # Token, project, S3 credentials and botocore's client: once per project in the
                # daemon, so not timed here either.
                if engine:
                    await engine.upload([warmup])
                else:
                    await target.upload(ref, warmup, Transfer())
                settle()
                with meter:
                    if engine:
                        await engine.upload(data.items)
                    else:
                        await gather_uploads(target, ref, data.items, self.concurrency, throttle)
                return target.project_id(ref)

        project = asyncio.run(go())
        assert project is not None
        creds = self._credentials(project)
        self._collect(creds, creds["key"] + "/", data, "dronesync")
        return {"dronesync": meter.sample}
