"""sd_notify: READY, STATUS, WATCHDOG, RELOADING and STOPPING for ``Type=notify`` units.

systemd-python is used when importable; otherwise a datagram is sent to ``$NOTIFY_SOCKET``
directly. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send ``KEY=value`` lines to the service manager; False if nobody listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    message = "\n".join(lines)
    try:
        from systemd import daemon as sd  # type: ignore[attr-defined]  # noqa: PLC0415

        return bool(sd.notify(message))
    except ImportError:
        pass
    except OSError:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the unit's ``WatchdogSec=``, when the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
