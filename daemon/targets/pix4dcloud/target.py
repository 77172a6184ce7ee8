"""The PIX4Dcloud target: one project per dataset, images straight to the project's S3 prefix.

The flow of ``../reference/targets.md``, one module per step:

- ``api``: the API calls, with an OAuth2 client-credentials token shared by every worker;
- ``projects``: a project created before the first upload, its id kept in the journal (a
  restart resumes into the same project), found again after a lost reply; ``bulk_register``
  of every uploaded key;
- ``upload``: temporary S3 credentials per project, fetched again when S3 refuses them, and
  each image put and verified by ``kit.s3upload`` (boto3 is imported there);
- ``processing``: a pre-flight check, ``start_processing`` once when the dataset is quiet,
  and ``public_status`` polled gently.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from daemon.targets.base import (
    DatasetRef,
    ProcessingStatus,
    Staging,
    TargetState,
    Transfer,
    UploadItem,
)
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.api import Pix4DApi
from daemon.targets.pix4dcloud.processing import Processing
from daemon.targets.pix4dcloud.projects import Projects
from daemon.targets.pix4dcloud.upload import ProjectStorage, s3_key

__all__ = ["Pix4DCloudTarget", "s3_key"]


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
        self._api = Pix4DApi(config, client_secret, clock=clock)
        self._projects = Projects(self._api, state, config, name)
        self._storage = ProjectStorage(self._api, state, config, clock=clock)
        self._processing = Processing(self._api, state, config, self._projects, self._storage)

    def project_id(self, dataset: DatasetRef) -> int | None:
        """The dataset's project id, once created."""
        return self._projects.known(dataset)

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Create the dataset's project (once; a restart resumes into it).

        Its S3 credentials are fetched too: the first time in this process, the uploads a
        crash left unfinished under the project's prefix are aborted before any is sent.
        """
        await self._storage.credentials(dataset, await self._projects.id(dataset))

    async def make_durable(self) -> None:
        """Nothing to do: S3 stored each part before answering, and the upload is complete."""

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Put one image under the project's prefix; returns the dataset key."""
        await self._storage.put(dataset, await self._projects.id(dataset), item, transfer)
        return item.key

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Pre-flight, register every uploaded key, and start processing (once)."""
        return await self._processing.start(dataset, keys)

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """The project's ``public_status``; unknown values count as still running."""
        return await self._processing.status(handle)

    async def aclose(self) -> None:
        """Close the API connections and the S3 clients."""
        await self._api.aclose()
        self._storage.close()
