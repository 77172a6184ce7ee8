"""Per target, the steps of one run across the link: the clients of scripts/bench-targets."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from benchkit.bench_targets.data import DataSet, make_files
from benchkit.bench_targets.nodeodm import NodeODM
from benchkit.bench_targets.pix4dcloud import Cloud
from benchkit.bench_targets.results import Sample
from benchkit.bench_targets.s3 import Bucket
from benchkit.bench_targets.tools import pyodm_missing
from benchkit.bench_targets.webodm import WebODM
from benchkit.files import random_pool
from benchkit.link.place import Across
from benchkit.project import S3TargetConfig, TokenBucket

TARGETS = ("nodeodm", "pix4dcloud", "webodm", "s3")


@dataclass(frozen=True)
class Step:
    """One transfer of the data set: what it is (``kind``: full, limit, faults, peer)."""

    kind: str
    run: Callable[[], dict[str, Sample]]


Steps = Callable[[float], list[Step]]


def build(
    name: str,
    args: argparse.Namespace,
    place: Across,
    data: DataSet,
    stack: contextlib.ExitStack,
    work: Path,
) -> Steps:
    """The servers of ``name`` across the link (closed by ``stack``); its steps per capacity.

    Two servers per target: one as it is, one failing ``--fault-rate`` of the uploads (s3:
    one, moto without failures).
    """
    curl = shutil.which("curl")
    c = args.concurrency
    if name == "nodeodm":
        node = NodeODM(work, c, curl, args.curl_batch, c, digest=False, place=place)
        stack.callback(node.close)
        faulty = NodeODM(
            work, c, None, 1, c, digest=False, drop_rate=args.fault_rate or None, place=place
        )
        stack.callback(faulty.close)

        def node_steps(capacity: float) -> list[Step]:
            limit = TokenBucket(int(capacity * 1e6 * args.limit_share))
            steps = [Step("full", partial(node.dronesync_run, data))]
            steps.append(Step("limit", partial(node.dronesync_run, data, limit)))
            steps.append(Step("faults", partial(faulty.dronesync_run, data)))
            if curl:
                steps.append(Step("peer", partial(node.curl_run, data)))
            if pyodm_missing() is None:
                steps.append(Step("peer", partial(node.pyodm_run, data)))
            return steps

        return node_steps
    if name == "pix4dcloud":
        rclone = shutil.which("rclone")
        cloud = Cloud(work, c, curl, rclone, args.curl_batch, None, None, place=place)
        stack.callback(cloud.close)
        faulty_c = Cloud(
            work, c, None, None, 1, None, None, fault_rate=args.fault_rate, place=place
        )
        stack.callback(faulty_c.close)
        warmup = make_files(work / "warmup", 1, 4096, "warmup.jpg", random_pool()).items[0]

        def cloud_steps(capacity: float) -> list[Step]:
            limit = TokenBucket(int(capacity * 1e6 * args.limit_share))
            steps = [Step("full", partial(cloud.dronesync_run, data, warmup))]
            steps.append(Step("limit", partial(cloud.dronesync_run, data, warmup, limit)))
            steps.append(Step("faults", partial(faulty_c.dronesync_run, data, warmup)))
            if curl:
                steps.append(Step("peer", partial(cloud.curl_run, data)))
            if rclone:
                steps.append(Step("peer", partial(cloud.rclone_run, data)))
            return steps

        return cloud_steps
    if name == "s3":
        return _s3(args, place, data, stack, work)
    webodm = WebODM(work, c, curl, args.curl_batch, place=place)
    stack.callback(webodm.close)
    faulty_w = WebODM(work, c, None, 1, fault_rate=args.fault_rate, place=place)
    stack.callback(faulty_w.close)

    def webodm_steps(capacity: float) -> list[Step]:
        limit = TokenBucket(int(capacity * 1e6 * args.limit_share))
        steps = [Step("full", partial(webodm.dronesync_run, data))]
        steps.append(Step("limit", partial(webodm.dronesync_run, data, limit)))
        steps.append(Step("faults", partial(faulty_w.dronesync_run, data)))
        if curl:
            steps.append(Step("peer", partial(webodm.curl_run, data)))
        return steps

    return webodm_steps


def _s3(
    args: argparse.Namespace,
    place: Across,
    data: DataSet,
    stack: contextlib.ExitStack,
    work: Path,
) -> Steps:
    """The s3 target on moto across the link, beside ``rclone copy`` (no failing server)."""
    rclone = shutil.which("rclone")
    defaults = S3TargetConfig.model_fields
    bucket = Bucket(
        work,
        args.concurrency,
        rclone,
        defaults["multipart_threshold_mb"].default,
        defaults["part_size_mb"].default,
        defaults["parallel_parts"].default,
        place=place,
    )
    stack.callback(bucket.close)
    warmup = make_files(work / "s3-warmup", 1, 4096, "warmup.jpg", random_pool()).items[0]

    def s3_steps(capacity: float) -> list[Step]:
        limit = TokenBucket(int(capacity * 1e6 * args.limit_share))
        steps = [Step("full", partial(bucket.dronesync_run, data, warmup))]
        steps.append(Step("limit", partial(bucket.dronesync_run, data, warmup, limit)))
        if rclone:
            steps.append(Step("peer", partial(bucket.rclone_run, data)))
        return steps

    return s3_steps
