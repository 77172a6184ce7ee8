"""The PIX4Dcloud target: one project per dataset, images straight to the project's S3 prefix.

The flow of ``../reference/targets.md``: an OAuth2 client-credentials token (``oauth``), a
project created before the first upload and its id kept in the journal (a restart resumes
into the same project), temporary S3 credentials per project fetched again when S3 refuses
them, each image put and verified by ``s3upload``, then ``bulk_register`` of every uploaded
key and ``start_processing`` when the dataset is quiet, and ``public_status`` polled gently.

S3 keys are ``<project prefix>/<path inside the dataset>``: DCIM folders keep file names that
repeat across folders apart. Bytes outside ``[A-Za-z0-9._~/-]`` are percent-encoded (``%``
too), so the mapping is one-to-one and a non-UTF-8 card name still makes a valid key.

``start_processing`` is not known to be idempotent: before it is sent the journal records the
attempt, and after an ambiguous failure (or a restart) the project is read first.
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
import httpx
import structlog
from botocore.config import Config

from daemon.config import Pix4DCloudTargetConfig
from daemon.errors import (
    PermanentTargetError,
    TargetError,
    TargetPausedError,
    TransientTargetError,
)
from daemon.targets.base import DatasetRef, ProcessingStatus, TargetState, Transfer, UploadItem
from daemon.targets.http import json_body, status_error, transport_error
from daemon.targets.oauth import TokenSource
from daemon.targets.s3upload import CredentialsExpiredError, PartSenders, put_file

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("dronesync.pix4dcloud")

MIN_IMAGES = 6
MAX_IMAGES = 4000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff")
REGISTER_BATCH = 500
_MB = 1024 * 1024
# Statuses after which a project is no longer running.
_DONE = {"DONE", "PROCESSED", "SUCCESS"}
_FAILED = {"FAILED", "ERROR", "CANCELED", "CANCELLED"}
# Fetch S3 credentials again this long before they say they expire.
_CREDENTIALS_MARGIN_S = 300.0

_PROJECT = "pix4d.project"
_PREFIX = "pix4d.prefix"
_STARTED = "pix4d.started"


def s3_key(prefix: str, key: bytes) -> str:
    """The object key of a dataset file: one-to-one, valid UTF-8 whatever the card holds."""
    return prefix.rstrip("/") + "/" + quote_from_bytes(key, safe="/-._~")


def preflight(keys: list[bytes]) -> str | None:
    """Why PIX4Dcloud would refuse to process these images, or None when it would not."""
    count = len(keys)
    if count < MIN_IMAGES:
        return (
            f"pre-flight: {count} image(s); PIX4Dcloud needs at least {MIN_IMAGES} per project."
            " Add images to the folder, then `dronesync process` the dataset"
        )
    if count > MAX_IMAGES:
        return (
            f"pre-flight: {count} images; PIX4Dcloud takes at most {MAX_IMAGES} per project."
            " Split the flight into folders of up to 4000 images (one dataset each), or merge"
            " the projects in PIX4Dmatic"
        )
    others = [k for k in keys if not k.lower().endswith(tuple(s.encode() for s in IMAGE_SUFFIXES))]
    if others:
        names = ", ".join(repr(k.decode(errors="replace")) for k in others[:3])
        return (
            f"pre-flight: {len(others)} file(s) are not JPEG or TIFF ({names}); PIX4Dcloud"
            " processes only those. Exclude them in the source's `exclude` and start again"
        )
    return None


@dataclass(frozen=True, slots=True)
class _Credentials:
    client: S3Client
    bucket: str
    prefix: str
    renew_at: float


class Pix4DCloudTarget:
    """Uploads each dataset into its own PIX4Dcloud project and follows its processing."""

    def __init__(
        self,
        name: str,
        config: Pix4DCloudTargetConfig,
        state: TargetState,
        *,
        client_secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.poll_interval_s = config.poll_s
        self._state = state
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=config.url, timeout=httpx.Timeout(config.timeout_s), follow_redirects=False
        )
        self._tokens = TokenSource(self._http, config.client_id, client_secret, clock=clock)
        self._project_locks: dict[int, asyncio.Lock] = {}
        self._credentials: dict[int, _Credentials] = {}
        self._credential_locks: dict[int, asyncio.Lock] = {}
        self._s3_config = Config(
            connect_timeout=config.timeout_s,
            read_timeout=config.timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
        )
        self._parts = PartSenders(config.parallel_parts)

    # -- the API ----------------------------------------------------------------------------

    async def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call with the shared token; a token refused early is renewed once."""
        route = f"{method} {path}"
        for attempt in (1, 2):
            token = await self._tokens.token()
            try:
                response = await self._http.request(
                    method, path, headers={"authorization": f"Bearer {token}"}, **kwargs
                )
            except httpx.TransportError as exc:
                raise transport_error(route, exc) from exc
            if response.status_code == 401 and attempt == 1:
                self._tokens.invalidate(token)
                continue
            if response.status_code == 401:
                raise TargetPausedError(
                    "sign-in needed: PIX4Dcloud refuses fresh tokens of this API client;"
                    " check its access, then `systemctl reload dronesync`"
                )
            if response.status_code >= 300:
                raise status_error(route, response, _error_text(response))
            return json_body(route, response) if response.content else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def _project(self, dataset: DatasetRef) -> int:
        """The dataset's project id, creating the project first if needed."""
        lock = self._project_locks.setdefault(dataset.id, asyncio.Lock())
        async with lock:
            known = self._state.get_memo(dataset.id, _PROJECT)
            if known is not None:
                return int(known)
            name = self.config.project_name.format(dataset=dataset.name, target=self.name)
            body = await self._api("POST", "/project/api/v3/projects/", json={"name": name})
            project = body.get("id") if isinstance(body, dict) else None
            if not isinstance(project, int):
                raise TransientTargetError("POST /project/api/v3/projects/: no project id")
            self._state.put_memo(dataset.id, _PROJECT, str(project))
            log.info("project created", dataset=dataset.name, project=project)
            return project

    def project_id(self, dataset: DatasetRef) -> int | None:
        """The dataset's project id, once created."""
        known = self._state.get_memo(dataset.id, _PROJECT)
        return None if known is None else int(known)

    async def _s3(self, dataset: DatasetRef, project: int, *, renew: bool = False) -> _Credentials:
        lock = self._credential_locks.setdefault(project, asyncio.Lock())
        async with lock:
            cached = self._credentials.get(project)
            if cached is not None and not renew and self._clock() < cached.renew_at:
                return cached
            path = f"/project/api/v3/projects/{project}/s3_credentials/"
            body = await self._api("GET", path)
            try:
                endpoint = body.get("endpoint_override") or None
                client = boto3.session.Session().client(
                    "s3",
                    aws_access_key_id=body["access_key"],
                    aws_secret_access_key=body["secret_key"],
                    aws_session_token=body.get("session_token"),
                    region_name=body.get("region") or "us-east-1",
                    endpoint_url=endpoint,
                    config=self._s3_config.merge(
                        Config(
                            s3={
                                "addressing_style": "path" if endpoint else "auto",
                                # The engine checks the bytes itself (one read per byte):
                                # botocore must not read the body again to sign it.
                                "payload_signing_enabled": False,
                            }
                        )
                    ),
                )
                fresh = _Credentials(
                    client,
                    str(body["bucket"]),
                    str(body["key"]),
                    self._clock() + _lifetime(body) - _CREDENTIALS_MARGIN_S,
                )
            except (KeyError, TypeError, AttributeError) as exc:
                raise TransientTargetError(f"GET {path}: incomplete S3 credentials") from exc
            self._credentials[project] = fresh
            self._state.put_memo(dataset.id, _PREFIX, fresh.prefix)
            return fresh

    # -- the Target protocol ----------------------------------------------------------------

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Create the dataset's project (once; a restart resumes into it)."""
        await self._project(dataset)

    async def make_durable(self) -> None:
        """Nothing to do: S3 stored each part before answering, and the upload is complete."""

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Put one image under the project's prefix; returns the dataset key."""
        project = await self._project(dataset)
        for attempt in (1, 2):
            creds = await self._s3(dataset, project, renew=attempt == 2)
            key = s3_key(creds.prefix, item.key)
            try:
                await asyncio.to_thread(
                    put_file,
                    creds.client,
                    creds.bucket,
                    key,
                    item,
                    transfer,
                    threshold=self.config.multipart_threshold_mb * _MB,
                    part_size=self.config.part_size_mb * _MB,
                    senders=self._parts,
                )
            except CredentialsExpiredError:
                if attempt == 2:
                    raise
                log.info("S3 credentials refused; fetching new ones", project=project)
                continue
            return item.key
        raise AssertionError("unreachable")  # pragma: no cover

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Pre-flight, register every uploaded key, and start processing (once)."""
        problem = preflight(keys)
        if problem is not None:
            raise PermanentTargetError(problem)
        project = await self._project(dataset)
        base = f"/project/api/v3/projects/{project}"
        if self._state.get_memo(dataset.id, _STARTED) and await self._running(base):
            return str(project)  # started before a crash or an ambiguous reply
        prefix = self._state.get_memo(dataset.id, _PREFIX)
        if prefix is None:
            prefix = (await self._s3(dataset, project)).prefix
        full = [s3_key(prefix, k) for k in keys]
        for start in range(0, len(full), REGISTER_BATCH):
            batch = full[start : start + REGISTER_BATCH]
            body = await self._api(
                "POST", f"{base}/inputs/bulk_register/", json={"input_file_keys": batch}
            )
            count = body.get("nb_images_registered") if isinstance(body, dict) else None
            if count != len(batch):
                raise TransientTargetError(
                    f"bulk_register: {count} of {len(batch)} images registered; trying again"
                )
        payload: dict[str, str] = {}
        if self.config.processing_template:
            creds = await self._s3(dataset, project)
            payload = {
                "custom_template_s3_key": self.config.processing_template,
                "custom_template_s3_bucket": creds.bucket,
            }
        # Recorded first: after a crash or a lost reply the project is read, not restarted.
        self._state.put_memo(dataset.id, _STARTED, "1")
        try:
            reply = await self._api("POST", f"{base}/start_processing/", json=payload or None)
        except TargetError as exc:
            try:
                started = await self._running(base)
            except TargetError:
                raise TransientTargetError(f"{exc}; the project is read again later") from exc
            if started:
                return str(project)
            raise
        estimate = reply.get("estimated_time") if isinstance(reply, dict) else None
        log.info("processing started", dataset=dataset.name, project=project, estimate=estimate)
        return str(project)

    async def _running(self, base: str) -> bool:
        """Whether the project left NEW (processing was started, whatever its reply said).

        A project that cannot be read raises: not knowing is not "not started", and
        registering or starting again on a guess could fail a dataset that is processing.
        """
        body = await self._api("GET", f"{base}/")
        status = str(body.get("public_status", "")).upper() if isinstance(body, dict) else ""
        return status not in ("", "NEW", "CREATED")

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """The project's ``public_status``; unknown values count as still running."""
        body = await self._api("GET", f"/project/api/v3/projects/{handle}/")
        if not isinstance(body, dict):
            return ProcessingStatus("running", "PIX4Dcloud sent an unexpected reply")
        status = str(body.get("public_status", "")).upper()
        detail = str(body.get("display_detailed_status") or status.lower() or "processing")
        if status in _DONE:
            return ProcessingStatus("done", f"processed in PIX4Dcloud (project {handle})", 100.0)
        if status in _FAILED:
            reason = body.get("error_reason") or detail
            return ProcessingStatus("failed", f"PIX4Dcloud: {status.lower()}: {reason}")
        estimate = body.get("estimated_time")
        if isinstance(estimate, int | float) and estimate > 0:
            detail += f", about {max(1, round(estimate / 60))} min left"
        return ProcessingStatus("running", detail)

    async def aclose(self) -> None:
        """Close the API connections and the S3 clients."""
        await self._http.aclose()
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


def _error_text(response: httpx.Response) -> str:
    """A short message from an API error body (JSON ``detail``/``error``/``message``)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for name in ("detail", "error", "message", "non_field_errors"):
            if name in body:
                return str(body[name])[:200]
        return str(body)[:200]
    return str(body)[:200]
