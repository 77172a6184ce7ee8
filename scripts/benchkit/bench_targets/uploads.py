"""dronesync's side of a ratio: uploads gathered under a semaphore, as the engine's workers do."""

from __future__ import annotations

import asyncio

from benchkit.project import (
    DatasetRef,
    NodeODMTarget,
    Pix4DCloudTarget,
    S3Target,
    Throttle,
    Transfer,
    UploadItem,
    WebODMTarget,
)


async def gather_uploads(
    target: NodeODMTarget | Pix4DCloudTarget | WebODMTarget | S3Target,
    ref: DatasetRef,
    items: list[UploadItem],
    concurrency: int,
    throttle: Throttle | None = None,
) -> list[bytes]:
    """Upload every item, ``concurrency`` at a time, as the engine's workers do.

    ``throttle``: the engine's shared bandwidth limit, when one is set.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(item: UploadItem) -> bytes:
        async with gate:
            return await target.upload(ref, item, Transfer(throttle=throttle))

    return await asyncio.gather(*(one(item) for item in items))
