"""Images into a project's S3 prefix: temporary credentials per project, keys, the upload itself.

Each project has its own S3 credentials, fetched from the API, kept until shortly before they
say they expire, and fetched again when S3 refuses them. Each image is put and verified by
``kit.s3upload``.

S3 keys are ``<project prefix>/<path inside the dataset>``: DCIM folders keep file names that
repeat across folders apart. Bytes outside ``[A-Za-z0-9._~/-]`` are percent-encoded (``%``
too), so the mapping is one-to-one and a non-UTF-8 card name still makes a valid key.

An upload cut by a crash is never resumed, so the first time this process uses a project's
credentials it aborts the unfinished multipart uploads under the project's prefix that it is
not sending (when the credentials may list them).

This module imports boto3 (a quarter of a second): only a configured target loads it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes

import boto3
import structlog

from daemon.errors import TargetError, TransientTargetError
from daemon.targets.base import DatasetRef, TargetState, Transfer, UploadItem
from daemon.targets.kit.s3api import CredentialsExpiredError, client_config
from daemon.targets.kit.s3checks import StoreChecks
from daemon.targets.kit.s3parts import PartSenders, abort_stale_uploads
from daemon.targets.kit.s3upload import put_file
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.api import Pix4DApi, project_path

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("dronesync.pix4dcloud")

# The project's bucket is PIX4Dcloud's: what is put there must be its owner's to process.
ACL = "bucket-owner-full-control"
_MB = 1024 * 1024
# Fetch S3 credentials again this long before they say they expire.
_CREDENTIALS_MARGIN_S = 300.0

_PREFIX = "pix4d.prefix"
# Where the box asks the store whether it checks SHA-256s (``kit.s3checks``): S3 refuses that
# put, so nothing lands among the project's images.
PROBE_NAME = b".dronesync-checksum-probe"


def s3_key(prefix: str, key: bytes) -> str:
    """The object key of a dataset file: one-to-one, valid UTF-8 whatever the card holds."""
    return prefix.rstrip("/") + "/" + quote_from_bytes(key, safe="/-._~")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A project's S3 credentials, as a client, and where its images go."""

    client: S3Client
    bucket: str
    prefix: str
    renew_at: float


class ProjectStorage:
    """The S3 side of one target's projects: credentials, sweeps and uploads."""

    def __init__(
        self,
        api: Pix4DApi,
        state: TargetState,
        config: Pix4DCloudTargetConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._state = state
        self._config = config
        self._clock = clock
        self._credentials: dict[int, Credentials] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._swept: set[int] = set()
        self._parts = PartSenders(config.parallel_parts)
        self._checks = StoreChecks(clock)

    async def credentials(
        self, dataset: DatasetRef, project: int, *, renew: bool = False
    ) -> Credentials:
        """The project's S3 credentials.

        The first time, the crash's leftovers are swept and the store asked whether it checks
        SHA-256s.
        """
        lock = self._locks.setdefault(project, asyncio.Lock())
        async with lock:
            cached = self._credentials.get(project)
            if cached is not None and not renew and self._clock() < cached.renew_at:
                return cached
            path = f"{project_path(project)}/s3_credentials/"
            body = await self._api.call("GET", path)
            try:
                endpoint = body.get("endpoint_override") or None
                client = boto3.session.Session().client(
                    "s3",
                    aws_access_key_id=body["access_key"],
                    aws_secret_access_key=body["secret_key"],
                    aws_session_token=body.get("session_token"),
                    region_name=body.get("region") or "us-east-1",
                    endpoint_url=endpoint,
                    config=client_config(self._config.timeout_s, path_style=bool(endpoint)),
                )
                fresh = Credentials(
                    client,
                    str(body["bucket"]),
                    str(body["key"]),
                    self._clock() + _lifetime(body) - _CREDENTIALS_MARGIN_S,
                )
            except (KeyError, TypeError, AttributeError) as exc:
                raise TransientTargetError(f"GET {path}: incomplete S3 credentials") from exc
            self._credentials[project] = fresh
            self._state.put_memo(dataset.id, _PREFIX, fresh.prefix)
            if project not in self._swept:
                # Before this process sends any part into the project (under this lock).
                self._swept.add(project)
                await self._sweep(dataset, project, fresh)
                probe = s3_key(fresh.prefix, PROBE_NAME)
                await self._checks.answer(client, fresh.bucket, probe, acl=ACL)
            return fresh

    async def prefix(self, dataset: DatasetRef, project: int) -> str:
        """The project's S3 prefix (as recorded, else as its credentials say)."""
        prefix = self._state.get_memo(dataset.id, _PREFIX)
        if prefix is None:
            prefix = (await self.credentials(dataset, project)).prefix
        return prefix

    async def put(
        self, dataset: DatasetRef, project: int, item: UploadItem, transfer: Transfer
    ) -> None:
        """Put one image under the project's prefix; refused credentials are fetched again."""
        for attempt in (1, 2):
            creds = await self.credentials(dataset, project, renew=attempt == 2)
            key = s3_key(creds.prefix, item.key)
            try:
                probe = s3_key(creds.prefix, PROBE_NAME)
                checks = await self._checks.answer(creds.client, creds.bucket, probe, acl=ACL)
                await asyncio.to_thread(
                    put_file,
                    creds.client,
                    creds.bucket,
                    key,
                    item,
                    transfer,
                    threshold=self._config.multipart_threshold_mb * _MB,
                    part_size=self._config.part_size_mb * _MB,
                    senders=self._parts,
                    acl=ACL,
                    store_checks=checks,
                )
            except CredentialsExpiredError:
                if attempt == 2:
                    raise
                log.info("S3 credentials refused; fetching new ones", project=project)
                continue
            return

    async def _sweep(self, dataset: DatasetRef, project: int, creds: Credentials) -> None:
        """Abort the multipart uploads a crash left unfinished under the project's prefix."""
        prefix = creds.prefix.rstrip("/") + "/"
        try:
            aborted = await asyncio.to_thread(
                abort_stale_uploads, creds.client, creds.bucket, prefix
            )
        except TargetError as exc:
            # The credentials may not allow listing: the uploads wait for a lifecycle rule.
            log.warning(
                "unfinished uploads not checked",
                dataset=dataset.name,
                project=project,
                error=str(exc),
            )
            return
        if aborted:
            log.info(
                "unfinished uploads aborted",
                dataset=dataset.name,
                project=project,
                count=len(aborted),
            )

    def close(self) -> None:
        """Stop the part senders and close the S3 clients."""
        self._parts.close()
        for creds in self._credentials.values():
            creds.client.close()


def _lifetime(body: dict[str, Any]) -> float:
    """Seconds the S3 credentials are good for (an hour when the reply does not say)."""
    expiration = body.get("expiration")
    if isinstance(expiration, int | float):
        return max(0.0, float(expiration) - time.time())
    if isinstance(expiration, str):
        try:
            when = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
            return max(0.0, when.timestamp() - time.time())
        except ValueError:
            pass
    return 3600.0
