"""The groups of a run: per target and scenario, the steps each run takes and the rows."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from functools import partial
from pathlib import Path

from benchkit.bench_targets.data import DataSet, make_files
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
from benchkit.bench_targets.tools import pyodm_missing
from benchkit.files import MIB, random_pool


def build_groups(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> list[Group]:
    curl = shutil.which("curl")
    rclone = shutil.which("rclone")
    no_curl = None if curl else "curl not found on PATH"
    no_rclone = None if rclone else "rclone not found on PATH"
    no_pyodm = pyodm_missing()
    c = args.concurrency
    pool = random_pool()
    data: dict[str, DataSet] = {}
    labels: dict[str, str] = {}
    if "big" in args.scenarios:
        data["big"] = make_files(work / "big", 1, args.big_mb * MIB, "big-{i}.bin", pool)
        labels["big"] = f"1 x {args.big_mb:g} MiB"
    if "drops" in args.scenarios and "nodeodm" in args.targets:
        size = int(args.drop_file_mb * MIB)
        data["drops"] = make_files(work / "drops", args.drop_files, size, "DJI_{i:04d}.JPG", pool)
        labels["drops"] = f"{args.drop_files} x {args.drop_file_mb:g} MiB, half dropped"
    if "many" in args.scenarios:
        size = int(args.file_mb * MIB)
        data["many"] = make_files(work / "many", args.files, size, "IMG_{i:05d}.JPG", pool)
        labels["many"] = f"{args.files} x {args.file_mb:g} MiB, {c} at a time"
    warmup = make_files(work / "warmup", 1, 4096, "warmup.jpg", pool).items[0]
    groups: list[Group] = []
    if "nodeodm" in args.targets:
        node = NodeODM(
            work, c, curl, args.curl_batch, args.pyodm_threads or c, digest=args.node_digest
        )
        stack.callback(node.close)
        for scenario, ds in data.items():
            if scenario == "drops":
                groups.append(_drops_group(args, work, stack, ds, labels[scenario], no_pyodm))
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
                    no_curl,
                ),
                Row(
                    "nodeodm",
                    labels[scenario],
                    f"pyodm create_task, {node.pyodm_threads} threads *",
                    GOAL_PYODM,
                    "pyodm",
                    "dronesync task",
                    no_pyodm,
                ),
            ]
            if curl:
                g.steps.append(partial(node.curl_run, ds))
            g.steps.append(partial(node.dronesync_run, ds))
            if no_pyodm is None:
                g.steps.append(partial(node.pyodm_run, ds))
            groups.append(g)
    if "pix4dcloud" in args.targets:
        data.pop("drops", None)
        cloud = Cloud(
            work,
            c,
            curl,
            rclone,
            args.curl_batch,
            args.multipart_threshold_mb,
            args.parallel_parts,
        )
        stack.callback(cloud.close)
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
                    no_curl,
                ),
                Row(
                    "pix4dcloud",
                    labels[scenario],
                    "rclone copy" if big else f"rclone copy --transfers {c}",
                    GOAL_RCLONE,
                    "rclone",
                    "dronesync",
                    no_rclone,
                ),
            ]
            if curl:
                g.steps.append(partial(cloud.curl_run, ds))
            g.steps.append(partial(cloud.dronesync_run, ds, warmup))
            if rclone:
                g.steps.append(partial(cloud.rclone_run, ds))
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
    """dronesync and pyodm, each making a task on a node that drops half the uploads."""
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
