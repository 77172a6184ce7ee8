"""An event worth telling the operator, as every channel (webhook, command, e-mail) sends it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One thing worth telling the operator."""

    event: str
    dataset: str
    target: str
    state: str
    detail: str | None
    at: float = field(default_factory=time.time)

    def document(self) -> dict[str, Any]:
        """The JSON document sent to the webhook and to the command."""
        return {
            "event": self.event,
            "dataset": self.dataset,
            "target": self.target,
            "state": self.state,
            "detail": self.detail,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
        }
