"""A dataset's manifest: every file of the dataset, where its bytes are, written last and whole.

``datasets/<box>/<dataset>/manifest.json`` is a JSON object::

    {"format": 1, "dataset": "...", "box": "...", "target": "...", "layout": "content",
     "bucket": "...", "prefix": "...", "created": "2025-...Z", "finished": "2025-...Z",
     "count": 2, "bytes": 123,
     "files": [{"path": "DCIM/100MEDIA/DJI_0001.JPG", "size": 61, "mtime": "2025-...Z",
                "mtime_ns": 1..., "sha256": "ab...", "key": "objects/sha256/ab/ab..."}]}

Every file is listed, duplicates included (their ``key`` is their original's): a processing
job needs every image of the folder, wherever its bytes are. A path that is not UTF-8 keeps
its bytes as lone surrogates (Python's ``surrogateescape``, escaped in the JSON). It is written
once, with ``If-None-Match: *``: a manifest already there with the same files is this one,
written before a crash; one with other files is never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.errors import PermanentTargetError
from daemon.targets.base import SentFile
from daemon.targets.kit.s3api import KeyTakenError, b64, call

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

FORMAT = 1


def iso(seconds: float) -> str:
    """A UTC time as the manifest writes it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build(
    files: Sequence[SentFile], *, created: float, finished: float, **about: str
) -> dict[str, Any]:
    """The manifest of a dataset's ``files``; ``about``: dataset, box, target, layout, ..."""
    listed = [
        {
            "path": os.fsdecode(path),
            "size": size,
            "mtime": iso(mtime_ns / 1e9),
            "mtime_ns": mtime_ns,
            "sha256": sha256,
            "key": (key or b"").decode("ascii"),
        }
        for path, size, mtime_ns, sha256, key in files
    ]
    return {
        "format": FORMAT,
        **about,
        "created": iso(created),
        "finished": iso(finished),
        "count": len(listed),
        "bytes": sum(size for _, size, _, _, _ in files),
        "files": listed,
    }


def encode(manifest: dict[str, Any]) -> bytes:
    """The manifest's bytes (ASCII JSON)."""
    return json.dumps(manifest, indent=1).encode("ascii")


def _same_files(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def files(m: dict[str, Any]) -> list[tuple[Any, Any]]:
        return [(f.get("path"), f.get("sha256")) for f in m.get("files", [])]

    return files(a) == files(b)


def write(s3: S3Client, bucket: str, key: str, manifest: dict[str, Any]) -> None:
    """Put the manifest once; the same one already there (a retry) is fine."""
    body = encode(manifest)
    try:
        call(
            "PutObject",
            s3.put_object,
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            ChecksumSHA256=b64(hashlib.sha256(body).digest()),
            IfNoneMatch="*",
        )
    except KeyTakenError:
        there = read(s3, bucket, key)
        if there is None or not _same_files(there, manifest):
            raise PermanentTargetError(
                f"s3://{bucket}/{key}: another manifest with other files is there and is never"
                " overwritten; give this box another `box` name or the dataset another name"
            ) from None


def read(s3: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    """The manifest under ``key``; None when it is not one (unreadable JSON)."""
    reply = call("GetObject", s3.get_object, Bucket=bucket, Key=key)
    with contextlib.closing(reply["Body"]) as body:
        data = body.read()
    try:
        found = json.loads(data)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None
