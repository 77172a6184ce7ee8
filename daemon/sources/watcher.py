"""The watchdog bridge: filesystem events become hints on a bounded asyncio queue.

Events are only hints. watchdog's thread hands each touched path to the event loop with
``call_soon_threadsafe``; when the queue is full the bridge drops the event and asks for a full
rescan instead, which finds everything the events would have said.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

QUEUE_SIZE = 10_000
# Everything that can change what is on the source. Not "opened" and "closed without
# writing": the daemon's own reads (hashing, copying) would raise two events per file read,
# each costing watchdog's thread and the GIL time the uploads need. The filter also becomes
# the inotify mask, so the kernel does not queue them at all.
EVENTS = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    DirModifiedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileClosedEvent,
]


class Hints:
    """What the watcher tells the scanner: paths to look at, or "rescan everything"."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(QUEUE_SIZE)
        self.rescan: set[int] = set()
        self.wakeup = asyncio.Event()

    def _put(self, source: int, path: bytes) -> None:
        try:
            self.queue.put_nowait((source, path))
        except asyncio.QueueFull:
            self.rescan.add(source)
        self.wakeup.set()

    def from_thread(self, source: int, path: bytes) -> None:
        """Called on watchdog's thread."""
        self._loop.call_soon_threadsafe(self._put, source, path)

    def request_rescan(self, source: int) -> None:
        """Ask for a full scan of ``source`` (loop thread)."""
        self.rescan.add(source)
        self.wakeup.set()


class _Handler(FileSystemEventHandler):
    def __init__(self, hints: Hints, source: int) -> None:
        self._hints = hints
        self._source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            # watchdog walks a folder created or moved in and reports everything in it. The
            # folder's own event below asks for a rescan, which finds all of it: a look per
            # file on top would read a card of 10,000 images' metadata twice.
            return
        paths = [event.src_path]
        if isinstance(event, FileSystemMovedEvent):
            paths.append(event.dest_path)
        for path in paths:
            self._hints.from_thread(self._source, os.fsencode(path))
        if event.is_directory and event.event_type in {"created", "moved"}:
            # A folder moved in whole brings files that produced no events of their own.
            self._hints.from_thread(self._source, b"")


class Watcher:
    """One watchdog observer per source folder (inotify, or polling for network mounts)."""

    def __init__(self, hints: Hints) -> None:
        self._hints = hints
        self._observers: dict[int, BaseObserver] = {}

    def watch(self, source: int, root: Path, poll_s: float | None) -> None:
        """Start watching ``root`` recursively; errors fall back to periodic rescans."""
        if source in self._observers:
            return
        observer: BaseObserver = PollingObserver(timeout=poll_s) if poll_s else Observer()
        observer.schedule(
            _Handler(self._hints, source), str(root), recursive=True, event_filter=EVENTS
        )
        observer.daemon = True
        observer.start()
        self._observers[source] = observer

    def unwatch(self, source: int) -> None:
        """Stop watching a source (it went away)."""
        observer = self._observers.pop(source, None)
        if observer is not None:
            observer.stop()

    def watching(self, source: int) -> bool:
        """Whether an observer runs for this source."""
        return source in self._observers

    def close(self) -> None:
        """Stop every observer."""
        for source in list(self._observers):
            self.unwatch(source)
