"""dronesync's side of a ratio: uploads gathered under a semaphore, as the engine's workers do."""

from __future__ import annotations

import asyncio

from benchkit.project import (
    Backoff,
    DatasetRef,
    NodeODMTarget,
    Pix4DCloudTarget,
    S3Target,
    Throttle,
    Transfer,
    TransientTargetError,
    UploadItem,
    UploadSettings,
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


async def gather_retrying(
    target: NodeODMTarget | Pix4DCloudTarget | WebODMTarget,
    ref: DatasetRef,
    items: list[UploadItem],
    concurrency: int,
) -> list[bytes]:
    """As :func:`gather_uploads`, each failed attempt waited out with the engine's backoff.

    As in the engine, a file waits for its retry in its worker only when no other file waits
    for one; otherwise it gives the worker up (the engine parks it) and queues again.
    """
    gate = asyncio.Semaphore(concurrency)
    backoff = Backoff.from_settings(UploadSettings())
    attempts = UploadSettings().attempts
    queued = 0  # files waiting for a worker

    async def one(item: UploadItem) -> bytes:
        nonlocal queued
        failures = 0
        while True:
            queued += 1
            async with gate:
                queued -= 1
                while True:
                    try:
                        return await target.upload(ref, item, Transfer())
                    except TransientTargetError as exc:
                        failures += 1
                        if failures == attempts:
                            raise
                        delay = backoff.delay(failures, exc.retry_after)
                    if queued:
                        break  # parked: the worker goes to the next file
                    await asyncio.sleep(delay)
            await asyncio.sleep(delay)

    return await asyncio.gather(*(one(item) for item in items))
