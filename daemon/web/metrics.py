"""Prometheus metrics at ``/metrics``, read from the journal at each scrape.

The journal holds every figure, so nothing is counted in memory: each scrape builds the
families from a few indexed queries (a custom collector). The uploaded-bytes counter is the
sum of the sizes of the files uploaded; it only goes down when a target lost a dataset and its
files are sent again, which Prometheus reads as a counter reset.

=====================================  ======  =================================================
metric                                 type    labels, meaning
=====================================  ======  =================================================
``dronesync_files``                    gauge   dataset, target, status: files in that status,
                                               of the datasets ``status`` lists (current)
``dronesync_uploaded_bytes_total``     counter target: bytes of the files uploaded
``dronesync_upload_errors``            gauge   target, kind (retrying | failed): files whose
                                               last attempt failed
``dronesync_datasets``                 gauge   state: datasets in that state
``dronesync_oldest_waiting_seconds``   gauge   how long the longest-waiting file has waited
``dronesync_upload_rate_bytes``        gauge   target: the current upload rate, bytes/s
``dronesync_journal_bytes``            gauge   the journal's size on disk (with its WAL)
=====================================  ======  =================================================
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.journal import DATASET_STATES, FILE_STATUSES, Journal
from daemon.status import DAY_S

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Families(Collector):
    """Families computed beforehand: the collector only hands them to the registry."""

    def __init__(self, families: Iterable[Any]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Any]:
        yield from self._families


def families(journal: Journal, live: dict[str, Any], now: float | None = None) -> list[Any]:
    """Every metric family, read from the journal and the daemon's live figures."""
    now = time.time() if now is None else now
    # Per dataset, the current ones (those `status` lists): a year of history is thousands of
    # datasets whose counts no longer change. The totals below count every dataset.
    current = journal.current_datasets(now - DAY_S)
    counts = journal.counts([ds.id for ds in current])
    files = GaugeMetricFamily(
        "dronesync_files",
        "Files of a dataset in each status.",
        labels=["dataset", "target", "status"],
    )
    target_of: dict[int, str] = {ds.id: ds.target for ds in current}
    for ds in current:
        per_status = counts[ds.id].files if ds.id in counts else dict.fromkeys(FILE_STATUSES, 0)
        for status in FILE_STATUSES:
            files.add_metric([ds.name, ds.target, status], per_status.get(status, 0))
    sums = journal.uploaded_bytes()
    targets = sorted(sums)
    uploaded = CounterMetricFamily(
        "dronesync_uploaded_bytes", "Bytes of the files uploaded, by target.", labels=["target"]
    )
    for target, total in sums.items():
        uploaded.add_metric([target], total)

    def target_of_dataset(dataset_id: int) -> str | None:
        if dataset_id not in target_of:
            found = journal.find_dataset(dataset_id)
            target_of[dataset_id] = found.target if found is not None else ""
        return target_of[dataset_id] or None

    errors = GaugeMetricFamily(
        "dronesync_upload_errors",
        "Files whose last upload attempt failed: retrying (waiting for their next attempt)"
        " or failed (attempts spent, or a permanent error).",
        labels=["target", "kind"],
    )
    in_error = {(t, kind): 0 for t in targets for kind in ("retrying", "failed")}
    for dataset_id, kinds in journal.troubles().items():
        for kind, (count, _) in kinds.items():
            key = (target_of_dataset(dataset_id) or "?", kind)
            in_error[key] = in_error.get(key, 0) + count
    for (target, kind), count in sorted(in_error.items()):
        errors.add_metric([target, kind], count)
    by_state = GaugeMetricFamily("dronesync_datasets", "Datasets in each state.", labels=["state"])
    states = dict.fromkeys(DATASET_STATES, 0) | journal.states()
    for state, count in states.items():
        by_state.add_metric([state], count)
    oldest = journal.oldest_waiting()
    waiting = GaugeMetricFamily(
        "dronesync_oldest_waiting_seconds",
        "How long the file waiting longest has waited (0 when none waits).",
        value=max(now - oldest, 0.0) if oldest is not None else 0.0,
    )
    rate = GaugeMetricFamily(
        "dronesync_upload_rate_bytes", "Current upload rate in bytes per second.", labels=["target"]
    )
    rates = dict.fromkeys(targets, 0.0)
    for dataset_id, figures in live.get("datasets", {}).items():
        of = target_of_dataset(int(dataset_id))
        if of is not None:
            rates[of] = rates.get(of, 0.0) + float(figures.get("rate_bps", 0.0))
    for target, value in rates.items():
        rate.add_metric([target], value)
    size = GaugeMetricFamily(
        "dronesync_journal_bytes",
        "The journal's size on disk, its write-ahead log included.",
        value=journal.size_on_disk(),
    )
    return [files, uploaded, errors, by_state, waiting, rate, size]


def exposition(journal: Journal, live: dict[str, Any]) -> bytes:
    """The Prometheus text of every family."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(journal, live)))
    return generate_latest(registry)
