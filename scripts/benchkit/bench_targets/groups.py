"""The groups of a run: per target and scenario, the steps each run takes and the rows."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from benchkit.bench_targets.data import DataSet, as_sent, make_files, make_sized, spread
from benchkit.bench_targets.nodeodm import NodeODM
from benchkit.bench_targets.pix4dcloud import Cloud
from benchkit.bench_targets.results import (
    GOAL_CURL_BIG,
    GOAL_CURL_MANY,
    GOAL_PYODM,
    GOAL_PYODM_DROPS,
    GOAL_RCLONE,
    Group,
    Row,
)
from benchkit.bench_targets.s3 import Bucket
from benchkit.bench_targets.tools import pyodm_missing
from benchkit.bench_targets.webodm import WebODM
from benchkit.files import MIB, random_pool
from benchkit.project import S3TargetConfig, UploadItem


@dataclass(frozen=True)
class Tools:
    """The reference tools found, and why the rows of those missing are skipped."""

    curl: str | None
    rclone: str | None
    no_pyodm: str | None

    @property
    def no_curl(self) -> str | None:
        """Why the curl rows are skipped, or None."""
        return None if self.curl else "curl not found on PATH"

    @property
    def no_rclone(self) -> str | None:
        """Why the rclone rows are skipped, or None."""
        return None if self.rclone else "rclone not found on PATH"


def build_groups(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> list[Group]:
    """The files, the servers (closed by ``stack``) and the groups the arguments ask for."""
    tools = Tools(shutil.which("curl"), shutil.which("rclone"), pyodm_missing())
    c = args.concurrency
    pool = random_pool()
    data: dict[str, DataSet] = {}
    labels: dict[str, str] = {}
    others = set(args.targets) - {"s3"}  # the s3 target has files of its own
    if "big" in args.scenarios and others:
        data["big"] = make_files(work / "big", 1, args.big_mb * MIB, "big-{i}.bin", pool)
        labels["big"] = f"1 x {args.big_mb:g} MiB"
    if "drops" in args.scenarios and "nodeodm" in args.targets:
        size = int(args.drop_file_mb * MIB)
        data["drops"] = make_files(work / "drops", args.drop_files, size, "DJI_{i:04d}.JPG", pool)
        labels["drops"] = f"{args.drop_files} x {args.drop_file_mb:g} MiB, half dropped"
    if "many" in args.scenarios and others:
        size = int(args.file_mb * MIB)
        data["many"] = make_files(work / "many", args.files, size, "IMG_{i:05d}.JPG", pool)
        labels["many"] = f"{args.files} x {args.file_mb:g} MiB, {c} at a time"
    for scenario, ds in data.items():
        data[scenario], sent = as_sent(ds, args)
        labels[scenario] += sent
    warmup = make_files(work / "warmup", 1, 4096, "warmup.jpg", pool).items[0]
    groups: list[Group] = []
    if "nodeodm" in args.targets:
        groups += _nodeodm_groups(args, work, stack, tools, data, labels)
    data.pop("drops", None)
    if "pix4dcloud" in args.targets:
        groups += _cloud_groups(args, work, stack, tools, data, labels, warmup)
    if "webodm" in args.targets:
        groups += _webodm_groups(args, work, stack, tools, data, labels)
    if "s3" in args.targets:
        groups += _s3_groups(args, work, stack, tools, pool, warmup)
    return groups


def _s3_groups(
    args: argparse.Namespace,
    work: Path,
    stack: contextlib.ExitStack,
    tools: Tools,
    pool: bytes,
    warmup: UploadItem,
) -> list[Group]:
    """Per scenario, dronesync's s3 target against ``rclone copy`` into one bucket in moto.

    big: --s3-big-files files of --s3-big-mb MiB, in parts on both sides; many: --files
    images of --s3-file-mb (2-8 MiB by default), each in one PUT on both sides.
    """
    c = args.concurrency
    defaults = S3TargetConfig.model_fields
    threshold = args.multipart_threshold_mb or defaults["multipart_threshold_mb"].default
    part = args.part_size_mb or defaults["part_size_mb"].default
    parallel = args.parallel_parts or defaults["parallel_parts"].default
    bucket = Bucket(work, c, tools.rclone, threshold, part, parallel)
    stack.callback(bucket.close)
    data: dict[str, tuple[DataSet, str]] = {}
    if "big" in args.scenarios:
        n, mb = args.s3_big_files, args.s3_big_mb
        if mb <= threshold:
            raise SystemExit(f"--s3-big-mb {mb} must be above the multipart threshold {threshold}")
        ds = make_files(work / "s3-big", n, mb * MIB, "big-{i}.bin", pool)
        data["big"] = ds, f"{n} x {mb:g} MiB, {part} MiB parts"
    if "many" in args.scenarios:
        low, high = args.s3_file_mb
        if high > threshold:
            raise SystemExit(f"--s3-file-mb {high} is above the multipart threshold {threshold}")
        sizes = spread(args.files, int(low * MIB), int(high * MIB))
        ds = make_sized(work / "s3-many", sizes, "IMG_{i:05d}.JPG", pool)
        data["many"] = ds, f"{args.files} x {low:g}-{high:g} MiB, {c} at a time"
    note = (
        f"** {' '.join(bucket.rclone_flags())}, the remote in RCLONE_CONFIG_* variables;"
        " dronesync: the s3 target, content layout"
    )
    groups = []
    for scenario, (sent, made) in data.items():
        ds, how = as_sent(sent, args)
        label = made + how
        g = Group("s3", scenario, ds.nbytes, notes=[note])
        reference = f"rclone copy --transfers {c} **"
        g.rows = [Row("s3", label, reference, GOAL_RCLONE, "rclone", "dronesync", tools.no_rclone)]
        if tools.rclone:
            g.steps.append(partial(bucket.rclone_run, ds))
        g.steps.append(partial(bucket.dronesync_run, ds, warmup))
        groups.append(g)
    return groups


def _nodeodm_groups(
    args: argparse.Namespace,
    work: Path,
    stack: contextlib.ExitStack,
    tools: Tools,
    data: dict[str, DataSet],
    labels: dict[str, str],
) -> list[Group]:
    """Per scenario, dronesync against curl and pyodm on the node (drops: a node of its own)."""
    c = args.concurrency
    node = NodeODM(
        work, c, tools.curl, args.curl_batch, args.pyodm_threads or c, digest=args.node_digest
    )
    stack.callback(node.close)
    groups = []
    for scenario, ds in data.items():
        if scenario == "drops":
            groups.append(_drops_group(args, work, stack, ds, labels[scenario], tools.no_pyodm))
            continue
        big = scenario == "big"
        g = Group("nodeodm", scenario, ds.nbytes)
        g.rows = [
            Row(
                "nodeodm",
                labels[scenario],
                "curl -F" if big else f"curl -F, xargs -P {c}",
                GOAL_CURL_BIG if big else GOAL_CURL_MANY,
                "curl",
                "dronesync",
                tools.no_curl,
            ),
            Row(
                "nodeodm",
                labels[scenario],
                f"pyodm create_task, {node.pyodm_threads} threads *",
                GOAL_PYODM,
                "pyodm",
                "dronesync task",
                tools.no_pyodm,
            ),
        ]
        if tools.curl:
            g.steps.append(partial(node.curl_run, ds))
        g.steps.append(partial(node.dronesync_run, ds))
        if tools.no_pyodm is None:
            g.steps.append(partial(node.pyodm_run, ds))
        groups.append(g)
    return groups


def _cloud_groups(
    args: argparse.Namespace,
    work: Path,
    stack: contextlib.ExitStack,
    tools: Tools,
    data: dict[str, DataSet],
    labels: dict[str, str],
    warmup: UploadItem,
) -> list[Group]:
    """Per scenario, dronesync against curl and rclone on the PIX4Dcloud server."""
    c = args.concurrency
    cloud = Cloud(
        work,
        c,
        tools.curl,
        tools.rclone,
        args.curl_batch,
        args.multipart_threshold_mb,
        args.parallel_parts,
    )
    stack.callback(cloud.close)
    groups = []
    for scenario, ds in data.items():
        big = scenario == "big"
        g = Group("pix4dcloud", scenario, ds.nbytes)
        g.rows = [
            Row(
                "pix4dcloud",
                labels[scenario],
                "curl -T presigned" if big else f"curl -T presigned, xargs -P {c}",
                GOAL_CURL_BIG if big else GOAL_CURL_MANY,
                "curl",
                "dronesync",
                tools.no_curl,
            ),
            Row(
                "pix4dcloud",
                labels[scenario],
                "rclone copy" if big else f"rclone copy --transfers {c}",
                GOAL_RCLONE,
                "rclone",
                "dronesync",
                tools.no_rclone,
            ),
        ]
        if tools.curl:
            g.steps.append(partial(cloud.curl_run, ds))
        g.steps.append(partial(cloud.dronesync_run, ds, warmup))
        if tools.rclone:
            g.steps.append(partial(cloud.rclone_run, ds))
        groups.append(g)
    return groups


def _webodm_groups(
    args: argparse.Namespace,
    work: Path,
    stack: contextlib.ExitStack,
    tools: Tools,
    data: dict[str, DataSet],
    labels: dict[str, str],
) -> list[Group]:
    """Per scenario, dronesync against curl on the WebODM server, both making a task."""
    c = args.concurrency
    webodm = WebODM(work, c, tools.curl, args.curl_batch)
    stack.callback(webodm.close)
    groups = []
    for scenario, ds in data.items():
        big = scenario == "big"
        g = Group("webodm", scenario, ds.nbytes)
        g.rows = [
            Row(
                "webodm",
                labels[scenario],
                "curl -F *" if big else f"curl -F, xargs -P {c} *",
                GOAL_CURL_BIG if big else GOAL_CURL_MANY,
                "curl",
                "dronesync",
                tools.no_curl,
            )
        ]
        if tools.curl:
            g.steps.append(partial(webodm.curl_run, ds))
        g.steps.append(partial(webodm.dronesync_run, ds))
        groups.append(g)
    return groups


def _drops_group(
    args: argparse.Namespace,
    work: Path,
    stack: contextlib.ExitStack,
    ds: DataSet,
    label: str,
    no_pyodm: str | None,
) -> Group:
    """The drops scenario: dronesync and pyodm, each making a task on a node dropping half."""
    c = args.concurrency
    node = NodeODM(work, c, None, 1, args.pyodm_threads or c, digest=False, drops=True)
    stack.callback(node.close)
    g = Group("nodeodm", "drops", ds.nbytes)
    g.rows = [
        Row(
            "nodeodm",
            label,
            f"pyodm create_task, {node.pyodm_threads} threads *",
            GOAL_PYODM_DROPS,
            "pyodm",
            "dronesync task",
            no_pyodm,
        )
    ]
    g.steps.append(partial(node.dronesync_run, ds))
    if no_pyodm is None:
        g.steps.append(partial(node.pyodm_run, ds))
    return g
