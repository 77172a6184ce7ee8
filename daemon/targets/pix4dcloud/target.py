"""The PIX4Dcloud target: one project per dataset, images straight to the project's S3 prefix.

The flow of ``../reference/targets.md``: an OAuth2 client-credentials token (``oauth``), a
project created before the first upload and its id kept in the journal (a restart resumes
into the same project), temporary S3 credentials per project fetched again when S3 refuses
them, each image put and verified by ``s3upload``, then ``bulk_register`` of every uploaded
key and ``start_processing`` when the dataset is quiet, and ``public_status`` polled gently.

S3 keys are ``<project prefix>/<path inside the dataset>``: DCIM folders keep file names that
repeat across folders apart. Bytes outside ``[A-Za-z0-9._~/-]`` are percent-encoded (``%``
too), so the mapping is one-to-one and a non-UTF-8 card name still makes a valid key.

What the API leaves undocumented is not relied on (sources: the official demo client,
github.com/Pix4D/demo-pix4d-cloud-api, and developer.pix4d.com/cloud-api; neither says):

- **creating a project twice**: a POST whose reply is lost may have made the project. The
  journal records the attempt first; before creating again, the projects are listed (a
  Django REST Framework list: paged ``{"results", "next"}`` or a plain list, both read) and
  a project of this name that never started, made at most a day before the attempt (a
  box's clock may be off), is taken instead;
- **registering a key twice**: how ``nb_images_registered`` counts a key registered before
  is unknown (every key sent, or only keys new to the project). The journal records the
  keys of a batch before it is sent and, once a reply is clear, which keys are registered;
  only keys not registered for sure are sent again, and a count is read both ways: it may
  fall short of the batch by at most the keys an earlier, unclear attempt may have
  registered. The API has no documented call that lists a project's inputs, so a short
  count nothing explains is not retried: the dataset needs attention;
- **starting twice**: ``start_processing`` is not known to be idempotent. Before it is
  sent the journal records the attempt, and after an ambiguous failure (or a restart) the
  project's ``public_status`` is read before anything is sent again;
- **unfinished multipart uploads**: an upload cut by a crash is never resumed, so the first
  time this process uses a project's S3 credentials it aborts the unfinished uploads under
  the project's prefix that it is not sending (when the credentials may list them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes

import boto3
import httpx
import structlog

from daemon.errors import (
    PermanentTargetError,
    TargetError,
    TargetPausedError,
    TransientTargetError,
)
from daemon.targets.base import (
    DatasetRef,
    ProcessingStatus,
    Staging,
    TargetState,
    Transfer,
    UploadItem,
)
from daemon.targets.kit.http import json_body, status_error, transport_error
from daemon.targets.kit.oauth import TokenSource
from daemon.targets.kit.s3api import CredentialsExpiredError, client_config
from daemon.targets.kit.s3parts import PartSenders, abort_stale_uploads
from daemon.targets.kit.s3upload import put_file
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("dronesync.pix4dcloud")

# The project's bucket is PIX4Dcloud's: what is put there must be its owner's to process.
ACL = "bucket-owner-full-control"
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

# Statuses of a project that was never started.
_NEW = {"", "NEW", "CREATED"}
# A project found by name after a lost reply must have been made this close to one of this
# dataset's creation requests (the server's clock against the box's). Names repeat (another
# box, another client, a folder name used again): a project made at another moment is not
# ours, and a box whose clock is further off makes a new project rather than take another's.
_ADOPT_SKEW_S = 300.0
# Pages of the project list read when looking for a project made by a lost request.
_LIST_PAGES = 50

_PROJECT = "pix4d.project"
_PREFIX = "pix4d.prefix"
_STARTED = "pix4d.started"
# Project creations sent whose reply was not clear: {"name", "at": [wall clock, ...]}.
_CREATING = "pix4d.creating"
# Keys sent to bulk_register whose reply was not clear (a JSON list).
_REGISTERING = "pix4d.registering"
# Keys registered for sure, one memo per batch (a JSON list each): "pix4d.registered.<n>".
_REGISTERED = "pix4d.registered."


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
        self.staging: Staging | None = None  # uploads read the source (or the spool)
        self._state = state
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=config.url, timeout=httpx.Timeout(config.timeout_s), follow_redirects=False
        )
        self._tokens = TokenSource(self._http, config.client_id, client_secret, clock=clock)
        self._project_locks: dict[int, asyncio.Lock] = {}
        self._credentials: dict[int, _Credentials] = {}
        self._credential_locks: dict[int, asyncio.Lock] = {}
        self._swept: set[int] = set()
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
            attempt = self._state.get_memo(dataset.id, _CREATING)
            sent = _attempts(attempt) if attempt is not None else []
            if sent:
                found = await self._find_project(name, sent)
                if found is not None:
                    self._state.put_memo(dataset.id, _PROJECT, str(found))
                    self._state.put_memo(dataset.id, _CREATING, None)
                    log.info(
                        "project found after a lost reply", dataset=dataset.name, project=found
                    )
                    return found
            # Recorded first: a reply lost from here on leaves a project to find, not to repeat.
            self._state.put_memo(
                dataset.id, _CREATING, json.dumps({"name": name, "at": [*sent, time.time()]})
            )
            body = await self._api("POST", "/project/api/v3/projects/", json={"name": name})
            project = body.get("id") if isinstance(body, dict) else None
            if not isinstance(project, int):
                raise TransientTargetError("POST /project/api/v3/projects/: no project id")
            self._state.put_memo(dataset.id, _PROJECT, str(project))
            self._state.put_memo(dataset.id, _CREATING, None)
            log.info("project created", dataset=dataset.name, project=project)
            return project

    async def _find_project(self, name: str, sent: list[float]) -> int | None:
        """A project called ``name``, never started, made when one of ``sent`` was: ours.

        Of several (more than one reply lost), the newest; the others stay empty and are named
        in the log. The list's query parameters are undocumented: none is sent, and the pages
        are followed on this server only (the token never goes anywhere else).
        """
        base = self.config.url.rstrip("/")
        path: str | None = "/project/api/v3/projects/"
        found: list[int] = []
        for _ in range(_LIST_PAGES):
            if path is None:
                break
            body = await self._api("GET", path)
            results, following = (body, None) if isinstance(body, list) else _page(body)
            for entry in results:
                project = await self._candidate(entry, name, sent)
                if project is not None:
                    found.append(project)
            path = None
            if isinstance(following, str) and following.startswith(base + "/"):
                path = following.removeprefix(base)
            elif isinstance(following, str) and following.startswith("/"):
                path = following
        if not found:
            return None
        found.sort()
        if len(found) > 1:
            log.warning("projects left empty by lost replies", name=name, projects=found[:-1])
        return found[-1]

    async def _candidate(self, entry: Any, name: str, sent: list[float]) -> int | None:
        """The id of a listed project that may be the one a lost reply made, else None."""
        if not isinstance(entry, dict) or entry.get("name") != name:
            return None
        project = entry.get("id")
        if not isinstance(project, int):
            return None
        made = _timestamp(entry.get("create_date"))
        if made is None or all(abs(made - at) > _ADOPT_SKEW_S for at in sent):
            return None  # made at another moment (or when, unknown): someone else's
        if "public_status" not in entry:  # a short listing: the project itself says
            entry = await self._api("GET", f"/project/api/v3/projects/{project}/")
        status = str(entry.get("public_status", "")).upper() if isinstance(entry, dict) else "?"
        return project if status in _NEW else None

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
                    config=client_config(self.config.timeout_s, path_style=bool(endpoint)),
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
            if project not in self._swept:
                # Before this process sends any part into the project (under this lock).
                self._swept.add(project)
                await self._sweep(dataset, project, fresh)
            return fresh

    async def _sweep(self, dataset: DatasetRef, project: int, creds: _Credentials) -> None:
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

    # -- the Target protocol ----------------------------------------------------------------

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Create the dataset's project (once; a restart resumes into it).

        Its S3 credentials are fetched too: the first time in this process, the uploads a
        crash left unfinished under the project's prefix are aborted before any is sent.
        """
        await self._s3(dataset, await self._project(dataset))

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
                    acl=ACL,
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
        await self._register(dataset, base, [s3_key(prefix, k) for k in keys])
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

    async def _register(self, dataset: DatasetRef, base: str, keys: list[str]) -> None:
        """Register every key not registered for sure yet, a batch at a time."""
        done: set[str] = set()
        for value in self._state.memos(dataset.id, _REGISTERED).values():
            done.update(json.loads(value))
        unclear = set(json.loads(self._state.get_memo(dataset.id, _REGISTERING) or "[]"))
        pending = [key for key in keys if key not in done]
        for start in range(0, len(pending), REGISTER_BATCH):
            batch = pending[start : start + REGISTER_BATCH]
            # Keys an earlier attempt may have registered: a server counting only new keys
            # does not count them again.
            before = set(unclear)
            maybe = len(before.intersection(batch))
            unclear.update(batch)
            self._state.put_memo(dataset.id, _REGISTERING, json.dumps(sorted(unclear)))
            try:
                body = await self._api(
                    "POST", f"{base}/inputs/bulk_register/", json={"input_file_keys": batch}
                )
            except PermanentTargetError:
                # Refused outright: this request registered nothing.
                self._state.put_memo(
                    dataset.id, _REGISTERING, json.dumps(sorted(before)) if before else None
                )
                raise
            count = body.get("nb_images_registered") if isinstance(body, dict) else None
            if not isinstance(count, int) or isinstance(count, bool):
                raise TransientTargetError("bulk_register: no count of images in the reply")
            # Recorded whatever the count: sending them again cannot make a count clearer.
            self._state.put_memo(dataset.id, f"{_REGISTERED}{len(done) + start}", json.dumps(batch))
            unclear.difference_update(batch)
            self._state.put_memo(
                dataset.id, _REGISTERING, json.dumps(sorted(unclear)) if unclear else None
            )
            if count < len(batch) - maybe:
                raise PermanentTargetError(
                    f"bulk_register: PIX4Dcloud registered {count} of {len(batch)} images;"
                    " open the project in PIX4Dcloud to see which are missing, then"
                    " `dronesync process` the dataset to start it with what is there"
                )
            if count != len(batch):
                log.info(
                    "bulk_register counted only images new to the project",
                    dataset=dataset.name,
                    sent=len(batch),
                    counted=count,
                )

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


def _page(body: Any) -> tuple[list[Any], Any]:
    """The entries of one page of a Django REST Framework list, and the next page's URL."""
    if not isinstance(body, dict):
        return [], None
    results = body.get("results")
    return (results if isinstance(results, list) else []), body.get("next")


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 date from the API (None: absent or unreadable)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _attempts(memo: str) -> list[float]:
    """When the recorded project creations were sent (wall clock)."""
    try:
        at = json.loads(memo).get("at")
    except (ValueError, AttributeError):
        return []
    values = at if isinstance(at, list) else [at]
    return [float(v) for v in values if isinstance(v, int | float)]


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
