"""The ``dronesync fleet`` document and lines, from rows a target type listed."""

from __future__ import annotations

from daemon.status import fleet_document, fleet_warnings, render_fleet
from daemon.targets.base import FleetRow


def test_rows_are_sorted_and_unreadable_ones_only_warned_about() -> None:
    rows = [
        FleetRow("b", "z", 2, 2_000_000, "2025-06-01T12:40:00+02:00", "s3://f/b/z"),
        FleetRow("c", "y", 0, 0, None, "s3://f/c/y", "not JSON\x1b[2J"),
        FleetRow("a", "x", 1, 10, "whenever\n", "s3://f/a/x"),
    ]
    doc = fleet_document("f", rows)
    assert doc["summary"] == {
        "boxes": 2,
        "datasets": 2,
        "files": 3,
        "bytes": 2_000_010,
        "unreadable": 1,
    }
    assert render_fleet(doc).splitlines() == [
        "targets.f: 2 boxes, 2 datasets, 3 files, 2.0 MB, 1 not readable",
        "a  x   1 file    10 B  finished whenever\\n",  # said as the record says it, printable
        "b  z  2 files  2.0 MB  finished 2025-06-01 10:40 UTC",  # in UTC
    ]
    assert fleet_warnings(doc) == [
        "s3://f/c/y: not readable (not JSON\\x1b[2J); not counted",
    ]


def test_no_rows_is_a_summary_of_zeros() -> None:
    doc = fleet_document("f", [])
    assert render_fleet(doc) == "targets.f: 0 boxes, 0 datasets, 0 files, 0 B"
    assert (doc["datasets"], doc["unreadable"], fleet_warnings(doc)) == ([], [], [])
