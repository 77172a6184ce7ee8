"""Whether an S3 store checks ``x-amz-checksum-sha256`` itself: asked once, by a put it must refuse.

Every PutObject carries the file's recorded SHA-256, and S3 refuses a body that does not hash
to it (``BadDigest``). Where the store checks, hashing the bytes again on the box as they go
out proves nothing more, and it is most of the CPU an image's upload costs. Not every store
checks: moto takes the header on trust, and S3-compatible servers differ by version. So a
target asks its store once per process: a small object put with a checksum that is not its
own.

- refused (``BadDigest``; MinIO says ``XAmzContentChecksumMismatch``): the store checks, and
  single PutObjects leave the check to it;
- stored: it does not; the object is deleted again, and every upload of a card's file that
  is not still sealed since it was hashed hashes its bytes as they are read (which stops a
  whole other file from being stored);
- anything else (the store down, the credentials refused): not known. Uploads hash, and the
  question is asked again after :data:`ASK_AGAIN_S`.

The answer is kept per endpoint and bucket. The probe is put as the uploads are (with their
ACL), so a policy that refuses one refuses the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from daemon.errors import TargetError
from daemon.targets.kit.s3api import BadDigestError, b64, call, with_acl

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("dronesync.s3")

PROBE_BODY = b"dronesync: does this store check x-amz-checksum-sha256?\n"
# The checksum of nothing: never the probe body's.
_WRONG = b64(hashlib.sha256(b"").digest())
ASK_AGAIN_S = 600.0


class StoreChecks:
    """What a target knows of its stores, per endpoint and bucket: whether they check SHA-256s."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._known: dict[tuple[str, str], bool] = {}
        self._asked_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    async def answer(self, s3: S3Client, bucket: str, key: str, *, acl: str | None = None) -> bool:
        """The answer; when not known yet, asked in a worker thread (False: hash)."""
        known = self._known.get((s3.meta.endpoint_url, bucket))
        if known is not None:
            return known
        return await asyncio.to_thread(self.ask, s3, bucket, key, acl=acl)

    def ask(self, s3: S3Client, bucket: str, key: str, *, acl: str | None = None) -> bool:
        """The answer, asking the store under ``key`` if need be (worker thread); False: hash.

        While one thread asks, the others hash rather than wait for the reply.
        """
        where = (s3.meta.endpoint_url, bucket)
        with self._lock:
            if where in self._known:
                return self._known[where]
            asked = self._asked_at.get(where)
            if asked is not None and self._clock() - asked < ASK_AGAIN_S:
                return False  # asked lately, or being asked now
            self._asked_at[where] = self._clock()
        answer = store_checks_sha256(s3, bucket, key, acl=acl)
        if answer is None:
            return False
        with self._lock:
            self._known[where] = answer
        return answer


def store_checks_sha256(
    s3: S3Client, bucket: str, key: str, *, acl: str | None = None
) -> bool | None:
    """True when the store refuses a body that does not match its checksum; None: not known."""
    try:
        call(
            "PutObject",
            s3.put_object,
            Bucket=bucket,
            Key=key,
            Body=PROBE_BODY,
            ChecksumSHA256=_WRONG,
            **with_acl(acl),
        )
    except BadDigestError:
        log.info("the store checks each upload's SHA-256", bucket=bucket)
        return True
    except TargetError as exc:
        log.info("cannot tell whether the store checks SHA-256; uploads are hashed", error=str(exc))
        return None
    try:
        call("DeleteObject", s3.delete_object, Bucket=bucket, Key=key)
    except TargetError as exc:
        log.warning("checksum probe left in the bucket", bucket=bucket, key=key, error=str(exc))
    log.info("the store does not check SHA-256; uploads are hashed as they are sent", bucket=bucket)
    return False
