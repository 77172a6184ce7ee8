"""The memory target: files kept in RAM, lost when the daemon stops (``type = "memory"``).

For trying the box without a disk to fill, and the reference target of the tests: it behaves
like a real target for duplicates and verification, and can be told to fail the next calls
(``fail_next``) to exercise the engine's retry paths without patching anything. It is also
the smallest complete target: its table, its registry entry and its implementation in one
module, which is what a new target needs (plus its fixture in ``tests/conformance``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

from pydantic import Field

from daemon.errors import TargetError
from daemon.targets.base import (
    DatasetRef,
    ProcessingStatus,
    Staging,
    Target,
    TargetConfig,
    TargetEnv,
    TargetType,
    Transfer,
    UploadItem,
)


class MemoryTargetConfig(TargetConfig):
    """Files kept in memory until the daemon stops: for trying the box, and for tests."""

    type: Literal["memory"] = Field(description="Target implementation.")
    duplicate_scope: Literal["target", "dataset"] = Field(
        "target",
        description='"target": content already sent is a duplicate; "dataset": only within'
        " the same dataset.",
    )


class MemoryTarget:
    """Stores uploads in memory; processing finishes at the next status poll."""

    poll_interval_s = 0.05
    staging: Staging | None = None

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.objects: dict[tuple[str, bytes], bytes] = {}
        self.puts: list[tuple[str, bytes]] = []
        self.processed: list[tuple[str, list[bytes]]] = []
        self.fail_next: deque[TargetError] = deque()
        self.datasets: set[str] = set()
        self.fail_processing = False  # processing ends failed while set

    async def ensure_dataset(self, dataset: DatasetRef) -> None:
        """Remember the dataset."""
        self.datasets.add(dataset.name)

    async def make_durable(self) -> None:
        """Nothing to do: the objects are stored once ``upload`` returns."""

    async def upload(self, dataset: DatasetRef, item: UploadItem, transfer: Transfer) -> bytes:
        """Read the file into memory, verify it, store it once under its key."""
        if self.fail_next:
            raise self.fail_next.popleft()
        data = await asyncio.to_thread(self._read, item, transfer)
        slot = (dataset.name, item.key)
        if self.objects.get(slot) not in (None, data):
            raise TargetError(f"{item.key!r}: a different object holds this key")
        self.objects[slot] = data
        self.puts.append(slot)
        return item.key

    @staticmethod
    def _read(item: UploadItem, transfer: Transfer) -> bytes:
        parts = []
        with item.reading() as read:
            for chunk in read.chunks():
                parts.append(bytes(chunk))
                transfer.progress(len(chunk))
            read.finish()
        return b"".join(parts)

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Record what would be processed."""
        self.processed.append((dataset.name, list(keys)))
        return f"mem-{len(self.processed)}"

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """Processing ends at once: done, or failed when told to."""
        del dataset, handle
        if self.fail_processing:
            return ProcessingStatus("failed", "processing failed in memory (fail_processing)")
        return ProcessingStatus("done", "processed in memory", 100.0)

    async def aclose(self) -> None:
        """Nothing to release."""


def _build(name: str, config: MemoryTargetConfig, env: TargetEnv) -> Target:
    del config, env
    return MemoryTarget(name)


TYPE = TargetType("memory", MemoryTargetConfig, _build)
