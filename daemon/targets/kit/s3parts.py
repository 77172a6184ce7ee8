"""The parts of a large file, several at a time; unfinished uploads swept.

The parts go several at a time (:class:`PartSenders`): the file is read and hashed in order in
the upload's thread while earlier parts are on the wire, each part hashed for its checksum
header in the thread that sends it. A part is held in memory from its read until S3 has it, so
the number in flight, shared by every upload of the target, bounds the memory:
``parallel_parts * part_size``. Every UploadPart carries its part's SHA-256, and
CompleteMultipartUpload is sent only once the whole file matched its recorded hash.

A multipart upload is never resumed across a crash or a restart (a part list left by a
crash is not trusted): the file is sent again in a new upload. The one left behind holds
its parts in the bucket until it is aborted, so :func:`abort_stale_uploads` aborts every
unfinished upload under a prefix that no upload of this process is sending. Where other
writers share the prefix (a fleet of boxes), a :class:`MultipartLog` records each upload
begun and ended instead, and only this writer's leftovers are aborted.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from daemon.errors import TransientTargetError
from daemon.hashing import CHUNK, StableRead
from daemon.targets.base import Transfer, UploadItem
from daemon.targets.kit.s3api import (
    SHA256_META,
    Stored,
    b64,
    call,
    checksum_differs,
    confirmed,
    discard,
    s3_error,
    with_acl,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Multipart uploads this process is sending, whichever target object started them (a reload
# builds new targets while the old ones finish): a sweep never aborts one of these.
_ACTIVE_UPLOADS: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


class MultipartLog(Protocol):
    """Hears of each multipart upload begun and ended, to abort what a crash left."""

    def started(self, key: str, upload_id: str) -> None:
        """An upload was created (before any part is sent)."""

    def ended(self, upload_id: str) -> None:
        """The upload was completed or aborted (not called when its abort failed)."""


def put_parts(
    s3: S3Client,
    bucket: str,
    key: str,
    read: StableRead,
    item: UploadItem,
    transfer: Transfer,
    part_size: int,
    senders: PartSenders,
    acl: str | None,
    *,
    if_absent: bool = False,
    log: MultipartLog | None = None,
) -> Stored:
    """Store ``item`` from ``read`` in a multipart upload; returns what S3 confirmed.

    The whole file is checked against its recorded hash as its last part is read: a file
    whose content differs never has its last part sent, nor its upload completed. With
    ``if_absent``, a key taken meanwhile raises KeyTakenError and replaces nothing.
    """
    upload_id = str(
        call(
            "CreateMultipartUpload",
            s3.create_multipart_upload,
            Bucket=bucket,
            Key=key,
            ChecksumAlgorithm="SHA256",
            Metadata={SHA256_META: item.sha256},
            **with_acl(acl),
        )["UploadId"]
    )
    with _ACTIVE_LOCK:
        _ACTIVE_UPLOADS.add(upload_id)
    if log is not None:
        log.started(key, upload_id)
    condition = {"IfNoneMatch": "*"} if if_absent else {}
    try:
        stored = _send_parts(
            s3, bucket, key, read, item, transfer, part_size, senders, upload_id, condition, log
        )
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE_UPLOADS.discard(upload_id)
    if log is not None:
        log.ended(upload_id)
    return stored


def _send_parts(
    s3: S3Client,
    bucket: str,
    key: str,
    read: StableRead,
    item: UploadItem,
    transfer: Transfer,
    part_size: int,
    senders: PartSenders,
    upload_id: str,
    condition: dict[str, str],
    log: MultipartLog | None,
) -> Stored:
    source = _Cutter(read)
    sending: list[Future[_Part]] = []
    try:
        offset = 0
        while offset < item.size:
            size = min(part_size, item.size - offset)
            senders.take(transfer, sending)
            try:
                data = source.part(size)
                part = _PartBody(len(sending) + 1, data, transfer)
                del data  # the part's bytes go as soon as it is sent (_PartBody.drop)
                future = senders.send(part, _send_part, s3, bucket, key, upload_id)
            except BaseException:
                senders.give_back()
                raise
            sending.append(future)
            offset += size
        parts = [future.result() for future in sending]  # in order: the first failure raises
        reply_done = call(
            "CompleteMultipartUpload",
            s3.complete_multipart_upload,
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [part.listed for part in parts]},
            **condition,
        )
    except BaseException:
        # Parts still on the wire finish (or fail) first: the abort is the upload's last word.
        # A part cancelled before it ran never will (nor is it ever "done" after a shutdown).
        wait([future for future in sending if not future.cancel()])
        if _abort(s3, bucket, key, upload_id) and log is not None:
            log.ended(upload_id)  # else it stays in the log, for a later sweep
        raise
    digests = b"".join(part.digest for part in parts)
    composite = f"{b64(hashlib.sha256(digests).digest())}-{len(parts)}"
    named = checksum_differs(reply_done, composite)
    if named is not None:
        discard(s3, bucket, key)
        raise TransientTargetError(f"S3 multipart {key}: checksum {named}, sent {composite}")
    return confirmed(s3, bucket, key, item, reply_done)


@dataclass(frozen=True, slots=True)
class _Part:
    """A part S3 stored: how CompleteMultipartUpload lists it, and its SHA-256."""

    listed: dict[str, Any]
    digest: bytes


class PartSenders:
    """The parts of large files in flight at once, shared by every upload of one target.

    A part is held in memory from its read until S3 has it (its SHA-256 goes in the header,
    before the body), so ``count`` bounds that memory to ``count * part_size``. One large
    file alone uses every place; several share them, in turn: a freed place goes to the
    upload that has waited longest, never back to the one that freed it while others wait.
    """

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._free = count
        self._waiting: deque[threading.Event] = deque()
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="s3-part")

    def take(self, transfer: Transfer, sending: list[Future[_Part]]) -> None:
        """Wait for a place; stop at once when the transfer or one of its parts failed.

        Waiting for the parts of other files is not a stall: the transfer is kept alive
        meanwhile. While its own parts are on the wire, they show whether it moves.
        """
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        while not turn.wait(0.1):
            failed = transfer.aborted or any(_failed(future) for future in sending)
            if failed:
                with self._lock:
                    if not turn.is_set():
                        self._waiting.remove(turn)
                if turn.is_set():
                    self.give_back()  # handed over meanwhile: pass it on
                if transfer.aborted:
                    raise TransientTargetError(transfer.abort_reason or "transfer aborted")
                for future in sending:
                    if _failed(future):
                        future.result()  # raises the part's error
            if all(future.done() for future in sending):
                transfer.keep_alive()

    def give_back(self) -> None:
        """Free a place: to the upload waiting longest, if any."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._free += 1

    def send(self, part: _PartBody, call: Callable[..., _Part], /, *args: Any) -> Future[_Part]:
        """Send ``part`` with ``call`` in a sending thread; its place is freed when it ends.

        The part's bytes go first, also when it was cancelled before it ran.
        """
        try:
            future = self._pool.submit(call, *args, part)
        except RuntimeError as exc:  # closed while this part was being read
            raise TransientTargetError("S3 upload stopped: the target is closing") from exc

        def ended(_: Future[_Part]) -> None:
            part.drop()
            self.give_back()

        future.add_done_callback(ended)
        return future

    def close(self) -> None:
        """Stop the sending threads (parts on the wire finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _failed(future: Future[_Part]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is not None


class _PartBody:
    """One part as botocore reads it: counted as it goes out, 1 MiB at a time."""

    def __init__(self, number: int, data: bytearray, transfer: Transfer) -> None:
        self.number = number
        self.data = data
        self._view = memoryview(data)
        self._transfer = transfer
        self._at = 0
        self._counted = 0

    def drop(self) -> None:
        """Let go of the part's bytes (it was sent, or failed)."""
        self.data = bytearray()
        self._view = memoryview(self.data)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the part (all that is left when ``size`` is negative)."""
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._at + size)
        out = bytes(self._view[self._at : end])
        self._at = end
        if end - self._counted >= CHUNK or end == len(self._view):
            self._transfer.progress(end - self._counted)  # raises once the transfer is aborted
            self._counted = end
        return out


def _send_part(s3: S3Client, bucket: str, key: str, upload_id: str, part: _PartBody) -> _Part:
    """One UploadPart, its checksum computed here (beside the reading of the next parts)."""
    digest = hashlib.sha256(part.data).digest()
    checksum = b64(digest)
    try:
        reply = call(
            f"UploadPart {part.number}",
            s3.upload_part,
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=part.number,
            Body=part,
            ContentLength=len(part.data),
            ChecksumSHA256=checksum,
        )
    finally:
        # Its place is freed next: the memory goes first, whoever still holds the body.
        part.drop()
    named = checksum_differs(reply, checksum)
    if named is not None:
        raise TransientTargetError(
            f"S3 UploadPart {part.number} of {key}: checksum {named}, sent {checksum}"
        )
    listed = {"ETag": reply["ETag"], "PartNumber": part.number, "ChecksumSHA256": checksum}
    return _Part(listed, digest)


class _Cutter:
    """The file's bytes in order, cut into parts, each copied into a buffer of its own.

    The read hashes each chunk as it comes, while it is still in the CPU's cache; a part
    outlives the chunk (a view of the thread's one read buffer), so it holds a copy.
    """

    def __init__(self, read: StableRead) -> None:
        self._chunks = read.chunks()
        self._rest = memoryview(b"")  # the end of a chunk a part boundary cut

    def part(self, size: int) -> bytearray:
        """The next ``size`` bytes of the file."""
        data = bytearray(size)
        done = 0
        try:
            while done < size:
                if not self._rest:
                    self._rest = next(self._chunks)
                count = min(len(self._rest), size - done)
                data[done : done + count] = self._rest[:count]
                self._rest = self._rest[count:]
                done += count
        except BaseException:
            # The error's traceback keeps this frame alive, and its place is already free.
            del data
            raise
        return data


def sending(upload_id: str) -> bool:
    """Whether an upload of this process is sending ``upload_id`` (a reload's old target)."""
    with _ACTIVE_LOCK:
        return upload_id in _ACTIVE_UPLOADS


def abort_stale_uploads(s3: S3Client, bucket: str, prefix: str) -> list[str]:
    """Abort the unfinished multipart uploads under ``prefix`` this process is not sending.

    Returns the keys of the uploads aborted. Raises the project's errors when the uploads
    cannot be listed (a credential that does not allow it, say); an upload that vanished
    meanwhile (finished or aborted by someone else) is not an error.
    """
    aborted: list[str] = []
    try:
        pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                upload_id, key = upload.get("UploadId"), upload.get("Key")
                if not isinstance(upload_id, str) or not isinstance(key, str):
                    continue  # a listing this cannot read is no reason to stop uploading
                with _ACTIVE_LOCK:
                    if upload_id in _ACTIVE_UPLOADS:
                        continue
                try:
                    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
                aborted.append(key)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error("ListMultipartUploads", exc) from exc
    return aborted


def _abort(s3: S3Client, bucket: str, key: str, upload_id: str) -> bool:
    """Best effort (a log's sweep or a lifecycle rule reaps what is left); True if aborted."""
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        return exc.response.get("Error", {}).get("Code") == "NoSuchUpload"
    except BotoCoreError:
        return False
    return True
