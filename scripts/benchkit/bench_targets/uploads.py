"""dronesync's side of a ratio: uploads gathered under a semaphore, as the engine's workers do."""

from __future__ import annotations

import asyncio

from benchkit.project import (
    Backoff,
    DatasetRef,
    NodeODMTarget,
    Pix4DCloudTarget,
    Throttle,
    Transfer,
    TransientTargetError,
    UploadItem,
    UploadSettings,
    WebODMTarget,
)


async def gather_uploads(
    target: NodeODMTarget | Pix4DCloudTarget | WebODMTarget,
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


async def gather_retrying(
    target: NodeODMTarget | Pix4DCloudTarget | WebODMTarget,
    ref: DatasetRef,
    items: list[UploadItem],
    concurrency: int,
) -> list[bytes]:
    """As :func:`gather_uploads`, each failed attempt waited out with the engine's backoff."""
    gate = asyncio.Semaphore(concurrency)
    backoff = Backoff.from_settings(UploadSettings())

    async def one(item: UploadItem) -> bytes:
        async with gate:
            for failures in range(1, UploadSettings().attempts + 1):
                try:
                    return await target.upload(ref, item, Transfer())
                except TransientTargetError as exc:
                    if failures == UploadSettings().attempts:
                        raise
                    await asyncio.sleep(backoff.delay(failures, exc.retry_after))
            raise AssertionError  # the loop returns or raises

    return await asyncio.gather(*(one(item) for item in items))
