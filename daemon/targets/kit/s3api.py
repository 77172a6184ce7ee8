"""One S3 call and what its reply means, for the single and the multipart upload alike.

botocore errors become the project's tree here (credentials refused, transient, permanent),
checksums named in replies are compared with the ones sent, and an object a reply does not
describe in full is read back. Signing and the requests themselves stay with botocore.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from daemon.errors import (
    DronesyncError,
    PermanentTargetError,
    TargetError,
    TransientTargetError,
)
from daemon.targets.base import UploadItem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

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
    # 409: a conditional write raced another write of the key; S3 says to retry.
    "ConditionalRequestConflict",
}


class CredentialsExpiredError(TransientTargetError):
    """S3 refused the credentials: a target with temporary ones fetches new ones, then retries."""


# S3's refusal of a body that does not hash to its checksum, and MinIO's.
DIGEST_CODES = frozenset({"BadDigest", "XAmzContentChecksumMismatch"})


class BadDigestError(TransientTargetError):
    """S3 refused a body that does not hash to the checksum sent with it.

    Transient: the body was altered on the way, when the source was checked against its
    recorded hash as it was read. Where that check was left to the store, the uploader reads
    the source again to tell that apart from a file that changed.
    """


class KeyTakenError(TransientTargetError):
    """A conditional PutObject found an object under the key (412 PreconditionFailed)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What S3 confirmed about the stored object."""

    size: int
    etag: str


def client_config(timeout_s: float, *, path_style: bool) -> Config:
    """The botocore settings of a client these uploads use.

    Its retries are off: the upload engine owns retry and backoff. It computes no checksum
    and signs no payload of its own: the upload reads each byte once, and sends the SHA-256
    it checked. ``path_style`` for an endpoint other than AWS's (a bucket name in the host
    needs DNS the endpoint may not have).
    """
    return Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
        s3={"addressing_style": "path" if path_style else "auto", "payload_signing_enabled": False},
    )


def with_acl(acl: str | None) -> dict[str, str]:
    """The ``ACL`` argument of a call that creates an object (none: the bucket's default)."""
    return {"ACL": acl} if acl else {}


def s3_error(action: str, exc: BaseException) -> TargetError:
    """Translate a botocore error into the project's tree (credential, transient, permanent)."""
    if isinstance(exc, ClientError):
        error: dict[str, Any] = dict(exc.response.get("Error", {}))
        code = str(error.get("Code", ""))
        status = _status(exc)
        text = f"S3 {action}: {code or status}: {error.get('Message', '')}".rstrip(": ")
        # A HEAD reply has no body: an expired credential shows only as a bare 400 or 403.
        if code in CREDENTIAL_CODES or (action == "HeadObject" and code in ("400", "403")):
            return CredentialsExpiredError(text)
        if code in DIGEST_CODES:
            return BadDigestError(text)
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return TransientTargetError(text)
        return PermanentTargetError(text)
    return TransientTargetError(f"S3 {action}: {type(exc).__name__}: {exc}")


def call(action: str, method: Callable[..., Any], /, **kwargs: Any) -> Any:
    """One S3 call; our own errors raised while botocore read the body come out unwrapped."""
    try:
        return method(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        inner = getattr(exc, "kwargs", {}).get("error")
        if isinstance(inner, DronesyncError):
            raise inner from exc  # a changed file, a read error, an abort
        if isinstance(exc, ClientError) and "IfNoneMatch" in kwargs and _status(exc) == 412:
            raise KeyTakenError(f"S3 {action}: the key is taken") from exc
        raise s3_error(action, exc) from exc


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def b64(digest: bytes) -> str:
    """A digest as S3's checksum headers carry it."""
    return base64.b64encode(digest).decode()


def checksum_differs(reply: Any, sent: str) -> str | None:
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


def already_stored(s3: S3Client, bucket: str, key: str, item: UploadItem) -> Stored | None:
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


def confirmed(s3: S3Client, bucket: str, key: str, item: UploadItem, reply: Any) -> Stored:
    """The object a complete reply (one with an ETag) describes; else read back."""
    etag = str(reply.get("ETag", "")).strip('"')
    if etag:
        return Stored(item.size, etag)
    return _verify(s3, bucket, key, item)


def _verify(s3: S3Client, bucket: str, key: str, item: UploadItem) -> Stored:
    """Read the stored object's metadata back: this size and this SHA-256 must be there."""
    head = call("HeadObject", s3.head_object, Bucket=bucket, Key=key)
    stored = Stored(int(head.get("ContentLength", -1)), str(head.get("ETag", "")).strip('"'))
    sha = head.get("Metadata", {}).get(SHA256_META)
    if stored.size != item.size or sha != item.sha256:
        raise TransientTargetError(
            f"S3 {key}: stored object has {stored.size} bytes and SHA-256 {sha}, expected"
            f" {item.size} and {item.sha256}"
        )
    return stored


def discard(s3: S3Client, bucket: str, key: str) -> None:
    """Best effort: an object S3 describes as other bytes must not pass as stored on a retry."""
    with contextlib.suppress(ClientError, BotoCoreError):
        s3.delete_object(Bucket=bucket, Key=key)
