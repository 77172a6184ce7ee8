"""What ``dronesync status`` shows: the journal, the daemon's live figures, queued requests.

The journal holds every status; the running daemon also writes ``<state_dir>/live.json`` once
a second with each dataset's current rate and the bytes of files in flight, which give the
rate and the ETA (``live``). ``document`` builds the ``--json`` document from them, reading
only; ``render`` turns it into the human lines and ``watch`` redraws them in place.
``fleet`` does the same for ``dronesync fleet``: every box's datasets in a fleet's store.
"""

from daemon.status.document import DAY_S, file_entry, snapshot
from daemon.status.fleet import fleet_document, fleet_warnings, render_fleet
from daemon.status.live import LIVE, LIVE_FRESH_S, mark_stopping, read_live, write_live
from daemon.status.render import render
from daemon.status.text import display_path, duration, printable, size
from daemon.status.watch import watch

__all__ = [
    "DAY_S",
    "LIVE",
    "LIVE_FRESH_S",
    "display_path",
    "duration",
    "file_entry",
    "fleet_document",
    "fleet_warnings",
    "mark_stopping",
    "printable",
    "read_live",
    "render",
    "render_fleet",
    "size",
    "snapshot",
    "watch",
    "write_live",
]
