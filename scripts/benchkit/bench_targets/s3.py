"""S3: one bucket in moto (server mode, its own process) and the two clients measured on it."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from benchkit.bench_targets.data import DataSet
from benchkit.bench_targets.results import Meter, Sample
from benchkit.bench_targets.tools import Placement, Server, listen_args, run_tool
from benchkit.bench_targets.uploads import gather_uploads
from benchkit.project import (
    FAKE_S3,
    DatasetRef,
    MemoryState,
    S3Target,
    S3TargetConfig,
    Throttle,
    Transfer,
    UploadItem,
)
from benchkit.settling import settle

ACCESS_KEY = "bench"
# The rclone remote's name, as its RCLONE_CONFIG_<NAME>_* variables spell it.
REMOTE = "BENCH"
MIB = 1024 * 1024


class Bucket:
    """moto serving one bucket, and dronesync's s3 target and ``rclone copy`` writing into it.

    Both go to the same endpoint and bucket, each run under a prefix of its own; after each
    run the objects are checked (every file, whole) and deleted, so moto holds one run's
    objects at most. dronesync uses the default layout (``content``: keys by SHA-256).
    """

    def __init__(
        self,
        work: Path,
        concurrency: int,
        rclone: str | None,
        threshold_mb: int,
        part_mb: int,
        parallel_parts: int,
        place: Placement | None = None,
    ) -> None:
        self.work = work
        self.server = Server(
            FAKE_S3,
            ["--bucket", "bench", *(listen_args(place) if place else [])],
            work / "s3.log",
            "Serving",
            place.prefix() if place else (),
        )
        fields = {}
        for line in self.server.lines:
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        self.url = fields["S3 endpoint"]
        if place is not None:
            self.url = place.expose(self.url)
        self.bucket = fields["bucket"]
        self.region = fields["region"]
        # moto takes any credentials; these are made here, and reach rclone by its environment.
        self.secret = secrets.token_hex(20)
        self.secret_file = work / "s3-secret"
        self.secret_file.touch(mode=0o600)
        self.secret_file.write_text(self.secret + "\n")
        self.concurrency = concurrency
        self.rclone = rclone
        self.threshold_mb = threshold_mb
        self.part_mb = part_mb
        self.parallel_parts = parallel_parts
        self.s3: Any = boto3.session.Session().client(
            "s3",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=self.secret,
            region_name=self.region,
            endpoint_url=self.url,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
        )
        self._ids = iter(range(1, 1 << 30))

    def close(self) -> None:
        """Close the client, then stop the server."""
        self.s3.close()
        self.server.close()

    def rclone_flags(self) -> list[str]:
        """What ``rclone copy`` is given beside the folder and the remote: our sizes."""
        return [
            "--transfers",
            str(self.concurrency),
            "--s3-upload-cutoff",
            f"{self.threshold_mb}M",
            "--s3-chunk-size",
            f"{self.part_mb}M",
        ]

    def _collect(self, prefix: str, data: DataSet, who: str, *, by_hash: bool) -> None:
        """Check every file arrived whole, then delete the objects (moto keeps them)."""
        found: dict[str, int] = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                found[obj["Key"]] = obj["Size"]
        keys = list(found)
        for n in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[n : n + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        # Content layout: objects/sha256/ab/<hash>; rclone keeps the file names.
        got = Counter((key.rpartition("/")[2], size) for key, size in found.items())
        want = Counter(
            (item.sha256 if by_hash else item.path.name, item.size) for item in data.items
        )
        if got != want:
            missing = sorted((want - got).elements())
            raise SystemExit(
                f"s3, {who}: {len(missing)} of {len(data.items)} files missing or cut short"
                f" in the bucket{f', first {missing[0]}' if missing else ''}; {len(found)} objects"
            )

    def rclone_run(self, data: DataSet) -> dict[str, Sample]:
        """``rclone copy`` of the folder under a prefix of its own, configured by environment."""
        assert self.rclone is not None
        prefix = f"rclone-{next(self._ids)}/"
        # Only this remote: other RCLONE_* or AWS_* variables (a CA bundle, other keys) would
        # change what rclone does.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "AWS_"))}
        remote = {
            "TYPE": "s3",
            "PROVIDER": "Other",
            "ACCESS_KEY_ID": ACCESS_KEY,
            "SECRET_ACCESS_KEY": self.secret,
            "REGION": self.region,
            "ENDPOINT": self.url,
            "FORCE_PATH_STYLE": "true",
        }
        env |= {f"RCLONE_CONFIG_{REMOTE}_{k}": v for k, v in remote.items()}
        env["RCLONE_CONFIG"] = "/dev/null"  # no config file of the user's
        argv = [self.rclone, "copy", str(data.folder), f"{REMOTE}:{self.bucket}/{prefix}"]
        argv += self.rclone_flags()
        settle()
        with Meter(self.server.proc.pid, child=True) as meter:
            run_tool(argv, env=env)
        self._collect(prefix, data, "rclone", by_hash=False)
        return {"rclone": meter.sample}

    def dronesync_run(
        self, data: DataSet, warmup: UploadItem, throttle: Throttle | None = None
    ) -> dict[str, Sample]:
        """The target's uploads under a prefix of its own, after a warm-up upload.

        ``throttle``: the engine's bandwidth limit, when one is set.
        """
        run_id = next(self._ids)
        prefix = f"dronesync-{run_id}"
        meter = Meter(self.server.proc.pid, child=False)

        async def go() -> str:
            config = S3TargetConfig(
                type="s3",
                bucket=self.bucket,
                prefix=prefix,
                endpoint_url=self.url,
                region=self.region,
                access_key_id=ACCESS_KEY,
                secret_access_key_file=self.secret_file,
                box="bench",
                multipart_threshold_mb=self.threshold_mb,
                part_size_mb=self.part_mb,
                parallel_parts=self.parallel_parts,
            )
            state_dir = self.work / "state"
            target = S3Target(
                "bench", config, MemoryState(), state_dir=state_dir, secret=self.secret
            )
            ref = DatasetRef(run_id, f"bench-{run_id}")
            try:
                await target.ensure_dataset(ref)
                # The client's connections: made once per target in the daemon, not timed.
                warm = await target.upload(ref, warmup, Transfer())
                settle()
                with meter:
                    await gather_uploads(target, ref, data.items, self.concurrency, throttle)
            finally:
                await target.aclose()
            return warm.decode()

        # The warm-up object is not one of the files.
        self.s3.delete_object(Bucket=self.bucket, Key=asyncio.run(go()))
        self._collect(f"{prefix}/", data, "dronesync", by_hash=True)
        return {"dronesync": meter.sample}
