"""The memory target's harness: its dict is the store."""

from __future__ import annotations

import contextlib
from pathlib import Path

from daemon.errors import PermanentTargetError, TargetPausedError, TransientTargetError
from daemon.targets.base import MemoryState, Target
from daemon.targets.memory import MemoryTarget
from tests.conformance.harness import DS, FAULTS, RETRY_AFTER_S, Fault


class MemoryHarness:
    """Faults are queued in ``fail_next``; a restart keeps the same process, and its memory."""

    faults = frozenset(FAULTS)

    def __init__(self) -> None:
        self.memory = MemoryTarget()
        self.target: Target = self.memory

    def stored(self, key: bytes) -> bytes:
        return self.memory.objects[(DS.name, key)]

    def copies(self) -> int:
        return sum(1 for name, _ in self.memory.objects if name == DS.name)

    def inject(self, fault: Fault) -> None:
        errors = {
            "transient": TransientTargetError("injected: connection reset"),
            "permanent": PermanentTargetError("injected: refused"),
            "retry_after": TransientTargetError("injected: busy", retry_after=RETRY_AFTER_S),
            "paused": TargetPausedError("injected: sign-in refused"),
        }
        self.memory.fail_next.append(errors[fault])

    def heal(self) -> None:
        self.memory.fail_next.clear()

    def fail_processing(self) -> None:
        self.memory.fail_processing = True

    def reopen(self) -> Target:
        return self.memory


def make(tmp: Path, stack: contextlib.ExitStack, state: MemoryState) -> MemoryHarness:
    del tmp, stack, state
    return MemoryHarness()
