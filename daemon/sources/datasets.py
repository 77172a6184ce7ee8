"""A root's datasets: the generation that takes a folder's files now, paused and resumed.

A folder's files go to its open dataset; once that one is processing, a new generation
(``survey-2``) takes what arrives. A root that goes away with work left pauses its active
datasets (nothing in them is inferred deleted), and they resume when it comes back.
"""

from __future__ import annotations

import structlog

from daemon.clock import Clock
from daemon.journal import DatasetRow, Journal
from daemon.sources.mapping import Placement
from daemon.sources.roots import Root

log = structlog.get_logger("dronesync.sources")

ACTIVE_STATES = ("collecting", "ready")


class Datasets:
    """Opens, pauses and resumes the datasets of roots."""

    def __init__(self, journal: Journal, clock: Clock) -> None:
        self._journal = journal
        self._clock = clock

    def open(self, root: Root, placement: Placement, now: float) -> DatasetRow:
        """The dataset that takes this folder's files now, with the source's settings."""
        return self._journal.open_dataset(
            volume=root.volume,
            folder=placement.folder,
            name=placement.dataset,
            target=root.config.target,
            source=str(root.config.path),
            auto_process=root.config.auto_process,
            quiet_s=root.config.quiet_s,
            now=now,
        )

    def now_for(self, root: Root | None, relpath: bytes, mtime_ns: int, dataset_id: int) -> int:
        """The dataset that takes a file now (a later generation once processing began)."""
        if root is None:
            return dataset_id
        placement = root.mapper.place(relpath, mtime_ns)
        if placement is None:
            return dataset_id
        return self.open(root, placement, self._clock.time()).id

    def resume(self, root: Root) -> None:
        """The root is back: its paused datasets collect again."""
        for dataset in self._journal.datasets(("paused",)):
            if dataset.volume == root.volume:
                self._journal.set_dataset_state(dataset.id, "collecting", "source is back")
                log.info("dataset resumed", dataset=dataset.name, source=root.volume)

    def pause(self, root: Root) -> None:
        """The root went away: its datasets with work left wait for it."""
        # Files safe in the spool do not need the card: their datasets go on uploading.
        left = self._journal.left_on(root.volume, failed=False)
        for dataset in self._journal.datasets(ACTIVE_STATES):
            if dataset.volume != root.volume:
                continue
            if left.get(dataset.id, 0):
                self._journal.set_dataset_state(
                    dataset.id, "paused", "source went away with work left; waiting for it"
                )
                log.warning("dataset paused", dataset=dataset.name, source=root.volume)
