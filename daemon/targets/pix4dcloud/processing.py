"""Processing a project: a pre-flight check, inputs registered, started once, status polled.

``start_processing`` is not known to be idempotent (the API does not say). Before it is sent
the journal records the attempt, and after an ambiguous failure (or a restart) the project's
``public_status`` is read before anything is sent again.
"""

from __future__ import annotations

import structlog

from daemon.errors import PermanentTargetError, TargetError, TransientTargetError
from daemon.targets.base import DatasetRef, ProcessingStatus, TargetState
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.api import Pix4DApi, project_path
from daemon.targets.pix4dcloud.projects import NEW, Projects
from daemon.targets.pix4dcloud.upload import ProjectStorage, s3_key

log = structlog.get_logger("dronesync.pix4dcloud")

MIN_IMAGES = 6
MAX_IMAGES = 4000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff")
# Statuses after which a project is no longer running.
_DONE = {"DONE", "PROCESSED", "SUCCESS"}
_FAILED = {"FAILED", "ERROR", "CANCELED", "CANCELLED"}

_STARTED = "pix4d.started"


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


class Processing:
    """Starts each dataset's project once, and reads where it stands."""

    def __init__(
        self,
        api: Pix4DApi,
        state: TargetState,
        config: Pix4DCloudTargetConfig,
        projects: Projects,
        storage: ProjectStorage,
    ) -> None:
        self._api = api
        self._state = state
        self._config = config
        self._projects = projects
        self._storage = storage

    async def start(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Pre-flight, register every uploaded key, and start processing (once)."""
        problem = preflight(keys)
        if problem is not None:
            raise PermanentTargetError(problem)
        project = await self._projects.id(dataset)
        base = project_path(project)
        if self._state.get_memo(dataset.id, _STARTED) and await self._running(base):
            return str(project)  # started before a crash or an ambiguous reply
        prefix = await self._storage.prefix(dataset, project)
        await self._projects.register(dataset, project, [s3_key(prefix, k) for k in keys])
        payload: dict[str, str] = {}
        if self._config.processing_template:
            creds = await self._storage.credentials(dataset, project)
            payload = {
                "custom_template_s3_key": self._config.processing_template,
                "custom_template_s3_bucket": creds.bucket,
            }
        # Recorded first: after a crash or a lost reply the project is read, not restarted.
        self._state.put_memo(dataset.id, _STARTED, "1")
        try:
            reply = await self._api.call("POST", f"{base}/start_processing/", json=payload or None)
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
        body = await self._api.call("GET", f"{base}/")
        status = str(body.get("public_status", "")).upper() if isinstance(body, dict) else ""
        return status not in NEW

    async def status(self, handle: str) -> ProcessingStatus:
        """The project's ``public_status``; unknown values count as still running."""
        body = await self._api.call("GET", f"{project_path(handle)}/")
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
