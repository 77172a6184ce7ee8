"""Putting one file into S3 with botocore: one read of the source, verified where it lands.

An object already stored under the key with the same size and SHA-256 (in its metadata) is
not sent again: a retry after a crash or a lost reply costs one HEAD. Otherwise the file is
read once, in 1 MiB chunks: each chunk is hashed (SHA-256 to compare with the
journal, MD5 to compare with the ETag S3 computes) and sent. Small files go in one PutObject,
large ones in parts (each part carries its own SHA-256 for S3 to check). The object counts as
stored only when the bytes sent match the recorded hash and S3's size and ETag match what was
sent; a file that changed on the way raises FileChangedError, and S3 never publishes a
PutObject or multipart upload that was cut off.

Signing, retries of our own and multipart bookkeeping stay with botocore; its own retries are
off, because the upload engine owns retry and backoff.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from daemon.errors import (
    DronesyncError,
    FileChangedError,
    PermanentTargetError,
    SourceError,
    TargetError,
    TransientTargetError,
)
from daemon.hashing import CHUNK, open_regular
from daemon.targets.base import Transfer, UploadItem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACL: Final = "bucket-owner-full-control"
# Object metadata holding the file's SHA-256: a retry after a crash finds the object there.
SHA256_META = "sha256"
# Codes that mean "these credentials are no longer good": fetch new ones and try again.
CREDENTIAL_CODES = {
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccessDenied",
    "SignatureDoesNotMatch",
}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}


class CredentialsExpiredError(TransientTargetError):
    """S3 refused the temporary credentials: fetch new ones, then try again."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What S3 confirmed about the stored object."""

    size: int
    etag: str


def s3_error(action: str, exc: BaseException) -> TargetError:
    """Translate a botocore error into the project's tree (credential, transient, permanent)."""
    if isinstance(exc, ClientError):
        error: dict[str, Any] = dict(exc.response.get("Error", {}))
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"S3 {action}: {code or status}: {error.get('Message', '')}".rstrip(": ")
        # A HEAD reply has no body: an expired credential shows only as a bare 400 or 403.
        if code in CREDENTIAL_CODES or (action == "HeadObject" and code in ("400", "403")):
            return CredentialsExpiredError(text)
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return TransientTargetError(text)
        return PermanentTargetError(text)
    return TransientTargetError(f"S3 {action}: {type(exc).__name__}: {exc}")


def _call(action: str, method: Callable[..., Any], /, **kwargs: Any) -> Any:
    """One S3 call; our own errors raised while botocore read the body come out unwrapped."""
    try:
        return method(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        inner = getattr(exc, "kwargs", {}).get("error")
        if isinstance(inner, DronesyncError):
            raise inner from exc  # a changed file, a read error, an abort
        raise s3_error(action, exc) from exc


class _Source:
    """The whole file as botocore reads it: chunks hashed and counted, checked at the end."""

    def __init__(self, fd: int, item: UploadItem, transfer: Transfer) -> None:
        self._fd = fd
        self._item = item
        self._transfer = transfer
        self._left = item.size
        self._pending = memoryview(b"")
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()  # noqa: S324 (compared with S3's ETag, not for security)
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (botocore asks for small blocks; the disk is read by 1 MiB)."""
        if not self._pending:
            self._fill()
        if size is None or size < 0 or size >= len(self._pending):
            out, self._pending = bytes(self._pending), memoryview(b"")
            return out
        out = bytes(self._pending[:size])
        self._pending = self._pending[size:]
        return out

    def _fill(self) -> None:
        if self._left <= 0:
            return
        try:
            chunk = os.read(self._fd, min(CHUNK, self._left))
        except OSError as exc:
            raise SourceError(f"{self._item.path}: read error: {exc.strerror}") from exc
        if not chunk:
            raise FileChangedError(f"{self._item.path}: shrank while it was being uploaded")
        self._left -= len(chunk)
        self.count += len(chunk)
        self.sha256.update(chunk)
        self.md5.update(chunk)
        if self._left == 0 and self.sha256.hexdigest() != self._item.sha256:
            # Refuse before the last bytes go out: S3 never stores a body cut short.
            raise FileChangedError(f"{self._item.path}: content differs from its recorded hash")
        self._transfer.progress(len(chunk))
        self._pending = memoryview(chunk)


def put_file(
    s3: S3Client,
    bucket: str,
    key: str,
    item: UploadItem,
    transfer: Transfer,
    *,
    threshold: int,
    part_size: int,
) -> Stored:
    """Store ``item`` under ``key`` and verify it; raises the project's errors only."""
    fd, info = open_regular(item.path)
    try:
        if info.st_size != item.size or info.st_mtime_ns != item.mtime_ns:
            raise FileChangedError(f"{item.path}: changed since it was hashed")
        already = _already_stored(s3, bucket, key, item)
        if already is not None:
            return already  # sent before a crash or a lost reply: never sent twice
        if item.size <= threshold:
            stored, sha = _put_single(s3, bucket, key, fd, item, transfer)
        else:
            stored, sha = _put_parts(s3, bucket, key, fd, item, transfer, part_size)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if after.st_size != item.size or after.st_mtime_ns != item.mtime_ns or sha != item.sha256:
        # Stored from bytes that are not the recorded ones: the next attempt overwrites it.
        raise FileChangedError(f"{item.path}: changed while it was being uploaded")
    return stored


def _already_stored(s3: S3Client, bucket: str, key: str, item: UploadItem) -> Stored | None:
    """The object, when it is there already with this size and this SHA-256 in its metadata."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise s3_error("HeadObject", exc) from exc
    except BotoCoreError as exc:
        raise s3_error("HeadObject", exc) from exc
    size = int(head.get("ContentLength", -1))
    if size != item.size or head.get("Metadata", {}).get(SHA256_META) != item.sha256:
        return None
    return Stored(size, str(head.get("ETag", "")).strip('"'))


def _put_single(
    s3: S3Client, bucket: str, key: str, fd: int, item: UploadItem, transfer: Transfer
) -> tuple[Stored, str]:
    source = _Source(fd, item, transfer)
    reply = _call(
        "PutObject",
        s3.put_object,
        Bucket=bucket,
        Key=key,
        Body=source,
        ContentLength=item.size,
        ChecksumSHA256=base64.b64encode(bytes.fromhex(item.sha256)).decode(),
        Metadata={SHA256_META: item.sha256},
        ACL=ACL,
    )
    if source.count != item.size:
        raise FileChangedError(f"{item.path}: changed while it was being uploaded")
    etag = str(reply.get("ETag", "")).strip('"')
    if etag and etag != source.md5.hexdigest():
        raise TransientTargetError(f"S3 PutObject {key}: ETag {etag} differs from what was sent")
    return _verify(s3, bucket, key, item.size, etag), source.sha256.hexdigest()


def _put_parts(
    s3: S3Client,
    bucket: str,
    key: str,
    fd: int,
    item: UploadItem,
    transfer: Transfer,
    part_size: int,
) -> tuple[Stored, str]:
    upload_id = str(
        _call(
            "CreateMultipartUpload",
            s3.create_multipart_upload,
            Bucket=bucket,
            Key=key,
            ACL=ACL,
            ChecksumAlgorithm="SHA256",
            Metadata={SHA256_META: item.sha256},
        )["UploadId"]
    )
    whole = hashlib.sha256()
    md5s = b""
    parts: list[dict[str, Any]] = []
    try:
        offset = 0
        number = 0
        while offset < item.size:
            number += 1
            size = min(part_size, item.size - offset)
            data = _read_part(fd, item, transfer, size)
            whole.update(data)
            md5s += hashlib.md5(data).digest()  # noqa: S324 (ETag check)
            checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
            reply = _call(
                f"UploadPart {number}",
                s3.upload_part,
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentLength=size,
                ChecksumSHA256=checksum,
            )
            parts.append({"ETag": reply["ETag"], "PartNumber": number, "ChecksumSHA256": checksum})
            offset += size
        if whole.hexdigest() != item.sha256:
            raise FileChangedError(f"{item.path}: content differs from its recorded hash")
        reply_done = _call(
            "CompleteMultipartUpload",
            s3.complete_multipart_upload,
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        _abort(s3, bucket, key, upload_id)
        raise
    expected = f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"  # noqa: S324 (ETag check)
    etag = str(reply_done.get("ETag", "")).strip('"')
    if etag and etag != expected:
        raise TransientTargetError(f"S3 multipart {key}: ETag {etag} differs from what was sent")
    return _verify(s3, bucket, key, item.size, etag), whole.hexdigest()


def _read_part(fd: int, item: UploadItem, transfer: Transfer, size: int) -> bytes:
    chunks = []
    left = size
    while left:
        try:
            chunk = os.read(fd, min(CHUNK, left))
        except OSError as exc:
            raise SourceError(f"{item.path}: read error: {exc.strerror}") from exc
        if not chunk:
            raise FileChangedError(f"{item.path}: shrank while it was being uploaded")
        transfer.progress(len(chunk))
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _abort(s3: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Best effort; a bucket lifecycle rule reaps what is left if this fails too."""
    with contextlib.suppress(ClientError, BotoCoreError):
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def _verify(s3: S3Client, bucket: str, key: str, size: int, etag: str) -> Stored:
    """Read the stored object's metadata back: its size and ETag must be the ones sent."""
    head = _call("HeadObject", s3.head_object, Bucket=bucket, Key=key)
    stored = Stored(int(head.get("ContentLength", -1)), str(head.get("ETag", "")).strip('"'))
    if stored.size != size or (etag and stored.etag != etag):
        raise TransientTargetError(
            f"S3 {key}: stored object has {stored.size} bytes and ETag {stored.etag}, expected"
            f" {size} and {etag}"
        )
    return stored
