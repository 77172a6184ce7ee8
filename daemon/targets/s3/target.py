"""The S3 target: images into a bucket a fleet shares, then each dataset's manifest.

The bucket's conditional writes are the fleet's only coordination. With ``layout =
"content"`` an image goes to ``objects/sha256/<ab>/<hash>`` with ``If-None-Match: *`` (and its
SHA-256 in ``x-amz-checksum-sha256``): when two boxes send the same image at once, one stores
it and the other's 412 means "already there", which is success, so each image is stored once
and neither box fails. With ``layout = "mirror"`` a path taken by other content gets the next
free name (``NAME~2.EXT``). Nothing is overwritten or deleted: a content key holding other
bytes is a permanent error, never replaced.

Each file is put and verified by ``kit.s3upload``; the remote key it returns is the object
key, which the journal keeps. Starting processing writes the manifest (``manifest``), then
runs ``process_command`` if one is configured (``kit.command``).

An upload cut by a crash is aborted by the box that began it, from its own record
(``keys.UploadLog``): the other boxes' uploads under the same keys go on.

This module imports boto3 (a quarter of a second): only a configured target loads it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from daemon.errors import PermanentTargetError, TargetPausedError, TransientTargetError
from daemon.targets.base import (
    DatasetRef,
    ProcessingStatus,
    Staging,
    TargetState,
    Transfer,
    UploadItem,
)
from daemon.targets.kit.command import CommandRunner
from daemon.targets.kit.s3api import CredentialsExpiredError, KeyTakenError, client_config
from daemon.targets.kit.s3checks import StoreChecks
from daemon.targets.kit.s3parts import PartSenders, sending
from daemon.targets.kit.s3upload import put_file
from daemon.targets.s3 import S3TargetConfig, manifest
from daemon.targets.s3.keys import Keys, UploadLog, alternative

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("dronesync.s3")

_MB = 1024 * 1024
MAX_NAME_TRIES = 1000
_CREATED = "s3.created"


def make_client(config: S3TargetConfig, secret: str | None) -> S3Client:
    """A botocore client for the table's endpoint, credentials and addressing."""
    session = boto3.session.Session(
        profile_name=config.profile,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=secret if config.access_key_id else None,
    )
    path_style = config.addressing == "path" or (
        config.addressing == "auto" and config.endpoint_url is not None
    )
    settings = client_config(config.timeout_s, path_style=path_style)
    if config.addressing == "virtual":
        virtual = Config(s3={"addressing_style": "virtual", "payload_signing_enabled": False})
        settings = settings.merge(virtual)
    return session.client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region or session.region_name or "us-east-1",
        config=settings,
    )


class S3Target:
    """Uploads images into a shared bucket and writes a manifest per dataset."""

    def __init__(
        self,
        name: str,
        config: S3TargetConfig,
        state: TargetState,
        *,
        state_dir: Path,
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self.poll_interval_s = config.poll_s
        self.staging: Staging | None = None  # uploads read the source (or the spool)
        self.box = config.box or socket.gethostname()
        self.keys = Keys(config.prefix, self.box)
        self._state = state
        self._clock = clock
        try:
            self._s3 = make_client(config, secret)
        except (BotoCoreError, ValueError) as exc:  # an unknown profile, say
            raise PermanentTargetError(f"targets.{name}: {exc}") from exc
        self._parts = PartSenders(config.parallel_parts)
        self._checks = StoreChecks()
        self._uploads = UploadLog(state_dir / "s3" / name / "multipart")
        self._command = CommandRunner(config, state_dir / "processing")
        self._log_dir = state_dir / "processing"
        self._swept: asyncio.Task[int] | None = None

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Note when the dataset began; the first time, abort what a crash left unfinished."""
        if self._state.get_memo(dataset.id, _CREATED) is None:
            self._state.put_memo(dataset.id, _CREATED, repr(self._clock()))
        await self._sweep()

    async def make_durable(self) -> None:
        """Nothing to do: the store has each object before it answers."""

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Put one image; returns its object key (the content key, or its mirror name)."""
        await self._sweep()
        if self.config.layout == "content":
            key = self.keys.content(item.sha256)
            try:
                await self._put(key, item, transfer)
            except KeyTakenError as exc:
                raise PermanentTargetError(
                    f"s3://{self.config.bucket}/{key} holds other bytes than its name says"
                    " (not written by dronesync?); it is never overwritten"
                ) from exc
            return key.encode("ascii")
        for n in range(1, MAX_NAME_TRIES + 1):
            key = self.keys.mirror(dataset.name, alternative(item.key, n))
            try:
                await self._put(key, item, transfer)
            except KeyTakenError:
                continue  # other content under this name: the next free one
            return key.encode("ascii")
        raise PermanentTargetError(f"{item.key!r}: {MAX_NAME_TRIES} names taken in the bucket")

    async def _put(self, key: str, item: UploadItem, transfer: Transfer) -> None:
        bucket = self.config.bucket
        try:
            checks = await self._checks.answer(self._s3, bucket, self.keys.probe())
            await asyncio.to_thread(
                put_file,
                self._s3,
                bucket,
                key,
                item,
                transfer,
                threshold=self.config.multipart_threshold_mb * _MB,
                part_size=self.config.part_size_mb * _MB,
                senders=self._parts,
                overwrite=False,
                store_checks=checks,
                log=self._uploads,
            )
        except CredentialsExpiredError as exc:
            raise TargetPausedError(f"{exc}; check the credentials of targets.{self.name}") from exc

    async def _sweep(self) -> None:
        """Abort, once per process, the multipart uploads this box began and never ended."""
        if self._swept is None:
            self._swept = asyncio.create_task(asyncio.to_thread(self._first_start))
        await asyncio.shield(self._swept)

    def _first_start(self) -> int:
        """The sweep, then the question whether the store checks SHA-256s (before an upload)."""
        left = self._abort_leftovers()
        self._checks.ask(self._s3, self.config.bucket, self.keys.probe())
        return left

    def _abort_leftovers(self) -> int:
        """Abort this box's unfinished uploads that nothing sends; returns how many are left."""
        left = aborted = 0
        for record, key, upload_id in self._uploads.records():
            if sending(upload_id):
                continue  # on the wire (or a reload's target before this one sends it)
            try:
                self._s3.abort_multipart_upload(
                    Bucket=self.config.bucket, Key=key, UploadId=upload_id
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    log.warning("unfinished upload not aborted", key=key, error=str(exc))
                    left += 1
                    continue  # tried again later; a lifecycle rule reaps it otherwise
            except BotoCoreError as exc:
                log.warning("unfinished upload not aborted", key=key, error=str(exc))
                left += 1
                continue
            record.unlink(missing_ok=True)
            aborted += 1
        if aborted:
            log.info("unfinished uploads aborted", target=self.name, count=aborted)
        return left

    def manifest_key(self, dataset: DatasetRef) -> str:
        """Where the dataset's manifest goes."""
        return self.keys.manifest(dataset.name)

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Write the dataset's manifest (every file, duplicates too), then run the command."""
        del keys  # the manifest lists every file, not only the uploaded ones
        # What an abort that failed left: the dataset is not done while parts of it linger.
        if left := await asyncio.to_thread(self._abort_leftovers):
            raise TransientTargetError(f"{left} unfinished multipart upload(s) not aborted yet")
        files = self._state.sent_files(dataset.id)
        waiting = sum(1 for *_, key in files if key is None)
        if waiting:
            raise TransientTargetError(f"{waiting} duplicate(s) wait for their original's upload")
        created = self._state.get_memo(dataset.id, _CREATED)
        now = self._clock()
        document = manifest.build(
            files,
            created=now if created is None else float(created),
            finished=now,
            dataset=dataset.name,
            box=self.box,
            target=self.name,
            layout=self.config.layout,
            bucket=self.config.bucket,
            prefix=self.config.prefix,
        )
        key = self.manifest_key(dataset)
        try:
            await asyncio.to_thread(manifest.write, self._s3, self.config.bucket, key, document)
        except CredentialsExpiredError as exc:
            raise TargetPausedError(f"{exc}; check the credentials of targets.{self.name}") from exc
        log.info("manifest written", dataset=dataset.name, key=key, files=len(files))
        values = {
            "dataset": dataset.name,
            "box": self.box,
            "manifest": f"s3://{self.config.bucket}/{key}",
            "manifest_key": key,
        }
        return await self._command.start(dataset, self._log_dir, values)

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """Done once the manifest is written; with ``process_command``, as the command ends."""
        if not handle:
            where = f"s3://{self.config.bucket}/{self.manifest_key(dataset)}"
            return ProcessingStatus("done", f"manifest written: {where}", 100.0)
        return await self._command.status(dataset, handle)

    async def aclose(self) -> None:
        """Stop running commands, the part senders and the client."""
        await self._command.aclose()
        self._parts.close()
        self._s3.close()
