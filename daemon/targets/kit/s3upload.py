"""Putting one file into S3 with botocore: one read of the source, verified where it lands.

What is verified, and by whom:

- **the bytes S3 received are the recorded ones**: every PutObject carries the recorded hash
  in ``x-amz-checksum-sha256``, every UploadPart its part's SHA-256, and S3 hashes what it
  received and refuses a mismatch with ``BadDigest``. A reply that names a
  ``ChecksumSHA256`` must name the one sent (else the object is deleted, so that a retry does
  not take it for the file, and the upload fails as transient). No MD5 is computed: the ETag
  is S3's to choose;
- **the bytes read are the recorded ones**: the file is read once (``hashing.StableRead``),
  in 1 MiB chunks, its size and mtime checked before and after. The spool's copy, which
  nothing but the daemon writes, is not hashed again. Where the store is known to check the
  SHA-256 (``s3checks``), a single PutObject leaves the content to it: a refusal makes the
  box hash the file, which tells a file that changed (FileChangedError) from a body altered
  on the way (transient, sent again). Otherwise, and for a multipart upload (whose parts'
  checksums do not add up to the file's), each chunk of a card's file is hashed as it goes
  out and the body is refused before its last bytes leave when the whole does not match the
  journal's hash; S3 never publishes a PutObject or multipart upload cut off;
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
  the parts (the threshold is tens of MiB) the HEAD costs nothing. With ``overwrite`` false
  nothing is ever replaced: other content under the key raises KeyTakenError, and the
  CompleteMultipartUpload carries ``If-None-Match: *`` too (two writers racing for one key).

The parts of a file above the threshold go as ``s3parts`` sends them. Signing and multipart
bookkeeping stay with botocore; its own retries are off, because the upload engine owns retry
and backoff.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from daemon.errors import FileChangedError, TransientTargetError
from daemon.hashing import StableRead, hash_file
from daemon.targets.base import Transfer, UploadItem
from daemon.targets.kit.s3api import (
    SHA256_META,
    BadDigestError,
    KeyTakenError,
    Stored,
    already_stored,
    b64,
    call,
    checksum_differs,
    confirmed,
    discard,
    with_acl,
)
from daemon.targets.kit.s3parts import MultipartLog, PartSenders, put_parts

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class _Body:
    """The whole file as botocore reads it: 1 MiB at a time, counted as it goes out.

    A read that hashes refuses the last chunk when the whole does not match the recorded
    hash, so S3 never receives the complete body of other content; otherwise S3 refuses it.
    """

    def __init__(self, read: StableRead, transfer: Transfer) -> None:
        self._chunks = read.chunks()
        self._transfer = transfer
        self.count = 0

    def read(self, size: int = -1) -> memoryview | bytes:
        """The next chunk of the file, whatever ``size`` asks; ``b""`` at its end.

        urllib3 asks for 16 KiB at a time and sends each block it gets in one call: a whole
        chunk per call is one system call, and one wake-up of the sending thread on a slow
        link, where 16 KiB blocks would take 64. The chunk is a view of the read's buffer,
        not a copy: ``http.client`` hands it to ``sendall`` before it asks for the next.
        """
        del size
        chunk = next(self._chunks, None)
        if chunk is None:
            return b""
        self.count += len(chunk)
        self._transfer.progress(len(chunk))
        return chunk


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
    acl: str | None = None,
    overwrite: bool = True,
    store_checks: bool = False,
    log: MultipartLog | None = None,
) -> Stored:
    """Store ``item`` under ``key`` and verify it; raises the project's errors only.

    Files above ``threshold`` go in parts of ``part_size``; ``acl`` is the canned ACL the
    object gets (None: the bucket's default). A file stored from bytes that turn out not to
    be the recorded ones raises FileChangedError: the next attempt overwrites the object.
    With ``overwrite`` false, other content under the key raises KeyTakenError instead of
    being replaced. ``store_checks``: the store is known to refuse a body that does not
    match its ``x-amz-checksum-sha256``. ``log`` hears of each multipart upload begun and
    ended.
    """
    if item.size > threshold:
        with item.reading() as read:
            already = already_stored(s3, bucket, key, item)
            if already is not None:
                return already  # sent before a crash or a lost reply: never sent twice
            try:
                stored = put_parts(
                    s3, bucket, key, read, item, transfer, part_size, senders, acl,
                    if_absent=not overwrite, log=log,
                )  # fmt: skip
            except KeyTakenError:
                already = already_stored(s3, bucket, key, item)
                if already is not None:
                    return already  # another writer stored the same bytes meanwhile
                raise
            read.finish()
            return stored
    try:
        return _put_single(
            s3, bucket, key, item, transfer, acl, if_absent=True, checked=store_checks
        )
    except KeyTakenError:
        already = already_stored(s3, bucket, key, item)
        if already is not None:
            return already  # sent before a crash or a lost reply: never stored twice
        if not overwrite:
            raise
    # Other content under the key (an earlier version of the file): read again, replace it.
    return _put_single(s3, bucket, key, item, transfer, acl, if_absent=False, checked=store_checks)


def _put_single(
    s3: S3Client,
    bucket: str,
    key: str,
    item: UploadItem,
    transfer: Transfer,
    acl: str | None,
    *,
    if_absent: bool,
    checked: bool,
) -> Stored:
    """One PutObject; with ``if_absent`` a taken key raises KeyTakenError, nothing stored.

    ``checked``: the store checks the content, and the bytes are not hashed here.
    """
    with item.reading(store_checks=checked) as read:
        body = _Body(read, transfer)
        checksum = b64(bytes.fromhex(item.sha256))
        condition: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            reply = call(
                "PutObject",
                s3.put_object,
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentLength=item.size,
                ChecksumSHA256=checksum,
                Metadata={SHA256_META: item.sha256},
                **with_acl(acl),
                **condition,
            )
        except BadDigestError:
            if read.hashes:
                raise  # the bytes read were the recorded ones: altered on the way
            # Not hashed as it was read: hash it now, to tell a changed file from bad luck.
            if hash_file(item.path, item.size, item.mtime_ns).sha256 != item.sha256:
                raise FileChangedError(
                    f"{item.path}: content differs from its recorded hash"
                ) from None
            raise
        if body.count != item.size:
            raise FileChangedError(f"{item.path}: changed while it was being uploaded")
        named = checksum_differs(reply, checksum)
        if named is not None:
            discard(s3, bucket, key)
            raise TransientTargetError(f"S3 PutObject {key}: checksum {named}, sent {checksum}")
        stored = confirmed(s3, bucket, key, item, reply)
        read.finish()
        return stored
