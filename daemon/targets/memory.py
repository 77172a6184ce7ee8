"""An in-memory target: what tests and the conformance suite use as the reference target.

It keeps every stored object in a dict, behaves like a real target for duplicates and
verification, and can be told to fail the next calls (``fail_next``) to exercise the engine's
retry paths without patching anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque

from daemon.errors import FileChangedError, TargetError
from daemon.hashing import CHUNK, open_regular
from daemon.targets.base import DatasetRef, ProcessingStatus, Transfer, UploadItem


class MemoryTarget:
    """Stores uploads in memory; processing finishes at the next status poll."""

    poll_interval_s = 0.05

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.objects: dict[tuple[str, bytes], bytes] = {}
        self.puts: list[tuple[str, bytes]] = []
        self.processed: list[tuple[str, list[bytes]]] = []
        self.fail_next: deque[TargetError] = deque()
        self.datasets: set[str] = set()

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
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise FileChangedError(f"{item.path}: content differs from its recorded hash")
        slot = (dataset.name, item.key)
        if self.objects.get(slot) not in (None, data):
            raise TargetError(f"{item.key!r}: a different object holds this key")
        self.objects[slot] = data
        self.puts.append(slot)
        return item.key

    @staticmethod
    def _read(item: UploadItem, transfer: Transfer) -> bytes:
        fd, _ = open_regular(item.path)
        parts = []
        try:
            while chunk := os.read(fd, CHUNK):
                parts.append(chunk)
                transfer.progress(len(chunk))
        finally:
            os.close(fd)
        return b"".join(parts)

    async def start_processing(self, dataset: DatasetRef, keys: list[bytes]) -> str:
        """Record what would be processed."""
        self.processed.append((dataset.name, list(keys)))
        return f"mem-{len(self.processed)}"

    async def processing_status(self, dataset: DatasetRef, handle: str) -> ProcessingStatus:
        """Processing is always done at once."""
        del dataset, handle
        return ProcessingStatus("done", "processed in memory", 100.0)

    async def aclose(self) -> None:
        """Nothing to release."""
