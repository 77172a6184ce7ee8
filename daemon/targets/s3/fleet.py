"""Every box's datasets, read from the manifests under ``PREFIX/datasets/`` (``dronesync fleet``).

A manifest is written once a dataset is done, so the listing is the fleet's finished work,
read straight from the bucket: no server of its own, and only ``ListBucket`` and
``GetObject`` on ``datasets/``. The manifests are read several at a time. One that cannot
be read (not JSON, removed meanwhile, refused) is a row saying why; a listing that fails is
a TargetError.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeGuard

from botocore.exceptions import BotoCoreError

from daemon.errors import PermanentTargetError, TargetError
from daemon.targets.base import FleetRow
from daemon.targets.kit.s3api import call
from daemon.targets.s3 import S3TargetConfig, manifest
from daemon.targets.s3.keys import manifest_place, manifests_prefix
from daemon.targets.s3.target import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

READERS = 16  # manifests read at once (the client pools 32 connections)


def fleet(config: S3TargetConfig, secret: str | None) -> list[FleetRow]:
    """A row per manifest under the table's prefix, in no particular order."""
    try:
        s3 = make_client(config, secret)
    except (BotoCoreError, ValueError) as exc:  # an unknown profile, say
        raise PermanentTargetError(str(exc)) from exc
    with contextlib.closing(s3):
        places = manifest_keys(s3, config.bucket, config.prefix)
        with ThreadPoolExecutor(READERS) as pool:
            return list(pool.map(lambda found: _row(s3, config.bucket, *found), places.items()))


def manifest_keys(s3: S3Client, bucket: str, prefix: str) -> dict[str, tuple[str, str]]:
    """Key -> (box, dataset) of every manifest under ``prefix``."""
    found: dict[str, tuple[str, str]] = {}
    page: dict[str, Any] = {"Bucket": bucket, "Prefix": manifests_prefix(prefix)}
    while True:
        reply = call("ListObjectsV2", s3.list_objects_v2, **page)
        for obj in reply.get("Contents", []):
            place = manifest_place(prefix, obj["Key"])
            if place is not None:
                found[obj["Key"]] = place
        if not reply.get("IsTruncated"):
            return found
        page["ContinuationToken"] = reply["NextContinuationToken"]


def _row(s3: S3Client, bucket: str, key: str, place: tuple[str, str]) -> FleetRow:
    box, dataset = place
    where = f"s3://{bucket}/{key}"
    try:
        document = manifest.read(s3, bucket, key)
    except TargetError as exc:
        return FleetRow(box, dataset, 0, 0, None, where, str(exc))
    if document is None:
        return FleetRow(box, dataset, 0, 0, None, where, "not JSON")
    count, size, finished = document.get("count"), document.get("bytes"), document.get("finished")
    if not (_count(count) and _count(size)):
        return FleetRow(box, dataset, 0, 0, None, where, "no count or bytes in it")
    return FleetRow(
        _text(document.get("box"), box),
        _text(document.get("dataset"), dataset),
        count,
        size,
        finished if isinstance(finished, str) else None,
        where,
    )


def _count(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


def _text(value: object, default: str) -> str:
    return value if isinstance(value, str) and value else default
