"""Putting one file into S3 with botocore: one read of the source, verified where it lands.

What is verified, and by whom:

- **the bytes sent are the recorded ones**: the file is read once, in 1 MiB chunks, and every
  chunk is hashed with SHA-256 as it goes out; the body is refused before its last bytes leave
  when the whole does not match the journal's hash (a file that changed raises
  FileChangedError), and S3 never publishes a PutObject or multipart upload cut off;
- **the bytes S3 received are the bytes sent**: every PutObject carries the recorded hash in
  ``x-amz-checksum-sha256``, every UploadPart its part's SHA-256, and S3 hashes what it
  received and refuses a mismatch with ``BadDigest`` (a body altered on the way: transient,
  sent again). A reply that names a ``ChecksumSHA256`` must name the one sent (else the
  object is deleted, so that a retry does not take it for the file, and the upload fails as
  transient). No MD5 is computed: the ETag is S3's to choose;
- **the object is there**: S3 is read-after-write consistent, so a PutObject or
  CompleteMultipartUpload reply with an ETag counts as stored; only a reply without one is
  followed by a HeadObject (this size and this SHA-256 in the metadata);
- **nothing is stored twice**: a file up to the multipart threshold goes in one PutObject with
  ``If-None-Match: *``, one request for a new file. When S3 answers ``412 PreconditionFailed``
  (the key is taken: a retry after a crash or a lost reply) the object's metadata is read: with
  this size and this SHA-256 it is the file, kept as it is; otherwise (other content under the
  key) the file is read again from its start and put without the condition. A store that
  ignores the condition overwrites the object with the same bytes: correct, only sent twice.
  A file above the threshold is looked up with a HeadObject first, because a condition on
  CompleteMultipartUpload would refuse only after every part had been sent again; beside
  the parts (the threshold is tens of MiB) the HEAD costs nothing.

The parts of a large file go several at a time (:class:`PartSenders`): the file is read and
hashed in order in the upload's thread while earlier parts are on the wire, each part hashed
for its checksum header in the thread that sends it. A part is held in memory from its read
until S3 has it, so the number in flight, shared by every upload of the target, bounds the
memory: ``parallel_parts * part_size``.

A multipart upload is never resumed across a crash or a restart (a part list left by a
crash is not trusted): the file is sent again in a new upload. The one left behind holds
its parts in the bucket until it is aborted, so :func:`abort_stale_uploads` aborts every
unfinished upload under a prefix that no upload of this process is sending.

Signing, retries of our own and multipart bookkeeping stay with botocore; its own retries are
off, because the upload engine owns retry and backoff.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    # The body S3 received does not hash to the checksum sent with it: it was altered on the
    # way (the source was checked against its recorded hash as it was read). Send it again.
    "BadDigest",
    # 409: a conditional write raced another write of the key; S3 says to retry.
    "ConditionalRequestConflict",
}


# Multipart uploads this process is sending, whichever target object started them (a reload
# builds new targets while the old ones finish): a sweep never aborts one of these.
_ACTIVE_UPLOADS: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


class CredentialsExpiredError(TransientTargetError):
    """S3 refused the temporary credentials: fetch new ones, then try again."""


class _KeyTakenError(TransientTargetError):
    """A conditional PutObject found an object under the key (412 PreconditionFailed)."""


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
        if isinstance(exc, ClientError) and "IfNoneMatch" in kwargs and _status(exc) == 412:
            raise _KeyTakenError(f"S3 {action}: the key is taken") from exc
        raise s3_error(action, exc) from exc


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _Source:
    """The whole file as botocore reads it: chunks hashed and counted, checked at the end."""

    def __init__(self, fd: int, item: UploadItem, transfer: Transfer) -> None:
        self._fd = fd
        self._item = item
        self._transfer = transfer
        self._left = item.size
        self._pending = memoryview(b"")
        self.sha256 = hashlib.sha256()
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
    senders: PartSenders,
) -> Stored:
    """Store ``item`` under ``key`` and verify it; raises the project's errors only."""
    fd, info = open_regular(item.path)
    try:
        if info.st_size != item.size or info.st_mtime_ns != item.mtime_ns:
            raise FileChangedError(f"{item.path}: changed since it was hashed")
        if item.size <= threshold:
            try:
                stored, sha = _put_single(s3, bucket, key, fd, item, transfer, if_absent=True)
            except _KeyTakenError:
                already = _already_stored(s3, bucket, key, item)
                if already is not None:
                    return already  # sent before a crash or a lost reply: never stored twice
                # Other content under the key (an earlier version of the file): replace it.
                os.lseek(fd, 0, os.SEEK_SET)
                stored, sha = _put_single(s3, bucket, key, fd, item, transfer, if_absent=False)
        else:
            already = _already_stored(s3, bucket, key, item)
            if already is not None:
                return already  # sent before a crash or a lost reply: never sent twice
            stored, sha = _put_parts(s3, bucket, key, fd, item, transfer, part_size, senders)
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
    s3: S3Client,
    bucket: str,
    key: str,
    fd: int,
    item: UploadItem,
    transfer: Transfer,
    *,
    if_absent: bool,
) -> tuple[Stored, str]:
    """One PutObject; with ``if_absent`` a taken key raises _KeyTakenError, nothing stored."""
    source = _Source(fd, item, transfer)
    checksum = _b64(bytes.fromhex(item.sha256))
    condition: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
    reply = _call(
        "PutObject",
        s3.put_object,
        Bucket=bucket,
        Key=key,
        Body=source,
        ContentLength=item.size,
        ChecksumSHA256=checksum,
        Metadata={SHA256_META: item.sha256},
        ACL=ACL,
        **condition,
    )
    if source.count != item.size:
        raise FileChangedError(f"{item.path}: changed while it was being uploaded")
    named = _checksum_differs(reply, checksum)
    if named is not None:
        _discard(s3, bucket, key)
        raise TransientTargetError(f"S3 PutObject {key}: checksum {named}, sent {checksum}")
    return _confirmed(s3, bucket, key, item, reply), source.sha256.hexdigest()


def _put_parts(
    s3: S3Client,
    bucket: str,
    key: str,
    fd: int,
    item: UploadItem,
    transfer: Transfer,
    part_size: int,
    senders: PartSenders,
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
    with _ACTIVE_LOCK:
        _ACTIVE_UPLOADS.add(upload_id)
    try:
        return _send_parts(s3, bucket, key, fd, item, transfer, part_size, senders, upload_id)
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE_UPLOADS.discard(upload_id)


def _send_parts(
    s3: S3Client,
    bucket: str,
    key: str,
    fd: int,
    item: UploadItem,
    transfer: Transfer,
    part_size: int,
    senders: PartSenders,
    upload_id: str,
) -> tuple[Stored, str]:
    whole = hashlib.sha256()
    sending: list[Future[_Part]] = []
    try:
        offset = 0
        while offset < item.size:
            size = min(part_size, item.size - offset)
            senders.take(transfer, sending)
            try:
                data = _read_part(fd, item, size, whole.update)
                part = _PartBody(len(sending) + 1, data, transfer)
                del data  # the part's bytes go as soon as it is sent (_PartBody.drop)
                future = senders.send(part, _send_part, s3, bucket, key, upload_id)
            except BaseException:
                senders.give_back()
                raise
            sending.append(future)
            offset += size
        parts = [future.result() for future in sending]  # in order: the first failure raises
        if whole.hexdigest() != item.sha256:
            raise FileChangedError(f"{item.path}: content differs from its recorded hash")
        reply_done = _call(
            "CompleteMultipartUpload",
            s3.complete_multipart_upload,
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [part.listed for part in parts]},
        )
    except BaseException:
        # Parts still on the wire finish (or fail) first: the abort is the upload's last word.
        # A part cancelled before it ran never will (nor is it ever "done" after a shutdown).
        wait([future for future in sending if not future.cancel()])
        _abort(s3, bucket, key, upload_id)
        raise
    digests = b"".join(part.digest for part in parts)
    composite = f"{_b64(hashlib.sha256(digests).digest())}-{len(parts)}"
    named = _checksum_differs(reply_done, composite)
    if named is not None:
        _discard(s3, bucket, key)
        raise TransientTargetError(f"S3 multipart {key}: checksum {named}, sent {composite}")
    return _confirmed(s3, bucket, key, item, reply_done), whole.hexdigest()


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
        future = self._pool.submit(call, *args, part)

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
    checksum = _b64(digest)
    try:
        reply = _call(
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
    named = _checksum_differs(reply, checksum)
    if named is not None:
        raise TransientTargetError(
            f"S3 UploadPart {part.number} of {key}: checksum {named}, sent {checksum}"
        )
    listed = {"ETag": reply["ETag"], "PartNumber": part.number, "ChecksumSHA256": checksum}
    return _Part(listed, digest)


def _checksum_differs(reply: Any, sent: str) -> str | None:
    """The reply's ``ChecksumSHA256`` when it is not the one sent (None: same, or none named).

    A multipart object's checksum is the checksum of its parts' checksums followed by ``-N``
    (N parts); only a suffix the reply names is compared.
    """
    named = str(reply.get("ChecksumSHA256") or "")
    value, _, count = named.partition("-")
    sent_value, _, sent_count = sent.partition("-")
    if named and (value != sent_value or (count and count != sent_count)):
        return named
    return None


def _confirmed(s3: S3Client, bucket: str, key: str, item: UploadItem, reply: Any) -> Stored:
    """The object a complete reply (one with an ETag) describes; else read back."""
    etag = str(reply.get("ETag", "")).strip('"')
    if etag:
        return Stored(item.size, etag)
    return _verify(s3, bucket, key, item)


def _read_part(
    fd: int, item: UploadItem, size: int, hashed: Callable[[memoryview], object]
) -> bytearray:
    """The next ``size`` bytes of the file, read into the part's one buffer.

    Each chunk is handed to ``hashed`` (the whole file's hash) as soon as it is read, while
    it is still in the CPU's cache.
    """
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    try:
        while done < size:
            try:
                count = os.readv(fd, [view[done : min(size, done + CHUNK)]])
            except OSError as exc:
                raise SourceError(f"{item.path}: read error: {exc.strerror}") from exc
            if not count:
                raise FileChangedError(f"{item.path}: shrank while it was being uploaded")
            hashed(view[done : done + count])
            done += count
    except BaseException:
        # The error's traceback keeps this frame alive, and its place is already free.
        view.release()
        del view, data
        raise
    return data


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


def _abort(s3: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Best effort; a bucket lifecycle rule reaps what is left if this fails too."""
    with contextlib.suppress(ClientError, BotoCoreError):
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def _discard(s3: S3Client, bucket: str, key: str) -> None:
    """Best effort: an object S3 describes as other bytes must not pass as stored on a retry."""
    with contextlib.suppress(ClientError, BotoCoreError):
        s3.delete_object(Bucket=bucket, Key=key)


def _verify(s3: S3Client, bucket: str, key: str, item: UploadItem) -> Stored:
    """Read the stored object's metadata back: this size and this SHA-256 must be there."""
    head = _call("HeadObject", s3.head_object, Bucket=bucket, Key=key)
    stored = Stored(int(head.get("ContentLength", -1)), str(head.get("ETag", "")).strip('"'))
    sha = head.get("Metadata", {}).get(SHA256_META)
    if stored.size != item.size or sha != item.sha256:
        raise TransientTargetError(
            f"S3 {key}: stored object has {stored.size} bytes and SHA-256 {sha}, expected"
            f" {item.size} and {item.sha256}"
        )
    return stored
