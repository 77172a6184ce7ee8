"""What ``dronesync fleet`` shows: every box's datasets, as the store a fleet shares records them.

``fleet_document`` turns a target type's rows into the ``fleet --json`` document::

    {"target": "fleet",
     "summary": {"boxes": 2, "datasets": 3, "files": 6, "bytes": 1064, "unreadable": 1},
     "datasets": [{"box", "dataset", "files", "bytes", "finished", "manifest"}, ...],
     "unreadable": [{"box", "dataset", "manifest", "problem"}, ...]}

Rows are sorted by box, then dataset; ``manifest`` is where the dataset's record is (a URL),
``finished`` its ISO 8601 time, or null when the record says none. ``render_fleet`` draws the
human lines from the document, ``fleet_warnings`` says one line per record that could not be
read. Names come from cards and the store, so every string is made printable first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.status.text import printable, size

if TYPE_CHECKING:  # `status` imports this package: no target's table (pydantic) at run time
    from daemon.targets.base import FleetRow


def fleet_document(target: str, rows: list[FleetRow]) -> dict[str, Any]:
    """The ``fleet --json`` document of the rows a target type listed."""
    rows = sorted(rows, key=lambda row: (row.box, row.dataset, row.manifest))
    readable = [row for row in rows if row.problem is None]
    return {
        "target": target,
        "summary": {
            "boxes": len({row.box for row in readable}),
            "datasets": len(readable),
            "files": sum(row.files for row in readable),
            "bytes": sum(row.bytes for row in readable),
            "unreadable": len(rows) - len(readable),
        },
        "datasets": [
            {
                "box": row.box,
                "dataset": row.dataset,
                "files": row.files,
                "bytes": row.bytes,
                "finished": row.finished,
                "manifest": row.manifest,
            }
            for row in readable
        ],
        "unreadable": [
            {
                "box": row.box,
                "dataset": row.dataset,
                "manifest": row.manifest,
                "problem": row.problem,
            }
            for row in rows
            if row.problem is not None
        ],
    }


def render_fleet(doc: dict[str, Any]) -> str:
    """A summary line, then one aligned line per dataset: box, dataset, files, bytes, finished."""
    s = doc["summary"]
    head = (
        f"targets.{printable(doc['target'])}: {_count(s['boxes'], 'box', 'boxes')},"
        f" {_count(s['datasets'], 'dataset')}, {_count(s['files'], 'file')}, {size(s['bytes'])}"
    )
    if s["unreadable"]:
        head += f", {s['unreadable']} not readable"
    cells = [
        (
            printable(ds["box"]),
            printable(ds["dataset"]),
            _count(ds["files"], "file"),
            size(ds["bytes"]),
            _when(ds["finished"]),
        )
        for ds in doc["datasets"]
    ]
    widths = [max((len(cell[n]) for cell in cells), default=0) for n in range(4)]
    lines = [head]
    for box, dataset, files, nbytes, finished in cells:
        lines.append(
            f"{box:<{widths[0]}}  {dataset:<{widths[1]}}  {files:>{widths[2]}}"
            f"  {nbytes:>{widths[3]}}  {finished}"
        )
    return "\n".join(lines)


def fleet_warnings(doc: dict[str, Any]) -> list[str]:
    """One line per record that could not be read: where it is and why; it is not counted."""
    return [
        f"{printable(bad['manifest'])}: not readable ({printable(bad['problem'])}); not counted"
        for bad in doc["unreadable"]
    ]


def _count(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"


def _when(finished: str | None) -> str:
    """A record's finish time for people: "finished 2025-06-01 10:40 UTC"."""
    if finished is None:
        return "not finished"
    try:
        moment = datetime.fromisoformat(finished)
    except ValueError:
        return f"finished {printable(finished)}"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"finished {moment.strftime('%Y-%m-%d %H:%M')} UTC"
