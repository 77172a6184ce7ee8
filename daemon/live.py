"""Live figures: ``live.json`` for ``status``, the STATUS= line, and the watchdog's pings.

Once a second the rates and in-flight bytes of the uploads, the cards in and the spool's use
are written for ``dronesync status``, and the service manager hears a one-line summary. The
watchdog is pinged only while every loop of the pipeline turns.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

from daemon.clock import Clock
from daemon.journal import Journal
from daemon.notify import notify, watchdog_interval
from daemon.pipeline import Pipeline
from daemon.status import write_live
from daemon.upload.engine import UploadEngine

log = structlog.get_logger("dronesync")

INTERVAL_S = 1.0
# A loop that has not turned for this long is stuck: the watchdog is no longer pinged.
HEALTH_S = 120.0


class Live:
    """Writes the live figures of each session in turn; remembers which loops were stuck."""

    def __init__(self, state_dir: Path, clock: Clock) -> None:
        self._state_dir = state_dir
        self._clock = clock
        self._stuck: list[str] = []

    async def run(self, journal: Journal, pipeline: Pipeline) -> None:
        """Write the figures once a second until cancelled."""
        engine, sources, spool = pipeline.engine, pipeline.sources, pipeline.spool
        interval = INTERVAL_S
        ping = watchdog_interval()
        last_ping = 0.0
        while True:
            engine.meter.sample(interval)
            in_flight = engine.in_flight()
            live = {
                "updated_at": self._clock.time(),
                "pid": os.getpid(),
                "datasets": {
                    str(ds): {
                        "rate_bps": engine.meter.rates.get(ds, 0.0),
                        "in_flight_bytes": in_flight.get(ds, 0),
                    }
                    for ds in set(engine.meter.rates) | set(in_flight)
                },
                "cards": sources.cards(),
                "loose": sources.loose(),
            }
            if spool is not None:
                live["spool"] = {
                    "path": str(spool.folder),
                    "used_bytes": spool.used,
                    "full": spool.full_message,
                }
            with contextlib.suppress(OSError):
                write_live(self._state_dir, live)
            notify(f"STATUS={status_line(journal, engine, sources.cards())}")
            now = self._clock.monotonic()
            beats = {
                "sources": sources.last_tick,
                "upload": engine.last_tick,
                "processing": pipeline.processing.last_tick,
            }
            stuck = sorted(name for name, beat in beats.items() if now - beat > HEALTH_S)
            if stuck != self._stuck:
                self._stuck = stuck
                if stuck:
                    log.error("not healthy; watchdog pings stop", stuck=stuck)
            # Pinging only while every loop turns lets systemd restart a daemon that hangs.
            if ping is not None and not stuck and now - last_ping >= ping:
                notify("WATCHDOG=1")
                last_ping = now
            await self._clock.sleep(interval)


def status_line(journal: Journal, engine: UploadEngine, cards: list[dict[str, object]]) -> str:
    """The one-line summary the service manager shows (STATUS=)."""
    totals = journal.totals()  # from the kept counts: once a second, whatever the history
    waiting = totals["waiting"] + totals["uploading"]
    rate = sum(engine.meter.rates.values())
    line = (
        f"{journal.dataset_total()} datasets, {waiting} files to upload, {totals['failed']} failed,"
        f" {rate / 1e6:.1f} MB/s"
    )
    removable = [str(card["label"]) for card in cards if card["removable"]]
    if removable:
        line += f"; card {', '.join(removable)} can be removed"
    return line
