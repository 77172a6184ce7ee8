"""The WebODM target's harness: the local WebODM-compatible server is the store."""

from __future__ import annotations

import contextlib
from pathlib import Path

from daemon.targets.base import MemoryState, Target
from daemon.targets.webodm import WebODMTargetConfig
from daemon.targets.webodm.target import WebODMTarget
from tests.conformance.harness import DS, Fault
from tests.fakes.webodm import FakeWebODM

PASSWORD = "s3cret"


class WebODMHarness:
    """Reads the files of the dataset's task in the server's folder.

    WebODM refuses no upload for good on demand (a 400 needs a request the client never
    makes), and sends no Retry-After.
    """

    faults = frozenset({"transient", "paused"})

    def __init__(self, server: FakeWebODM, state: MemoryState) -> None:
        self.server = server
        self.state = state
        self.config = WebODMTargetConfig(
            type="webodm", url=server.url, username="drone", poll_s=0.1, timeout_s=10
        )
        self.target: Target = self._build()

    def _build(self) -> WebODMTarget:
        return WebODMTarget("webodm", self.config, self.state, password=PASSWORD)

    def _files(self) -> dict[str, bytes]:
        assert isinstance(self.target, WebODMTarget)
        task = self.target.current_task(DS)
        return {} if task is None else self.server.files(task.partition("/")[2])

    def stored(self, key: bytes) -> bytes:
        assert isinstance(self.target, WebODMTarget)
        return self._files()[self.target.name_of(DS, key)]

    def copies(self) -> int:
        return len(self._files())

    def inject(self, fault: Fault) -> None:
        if fault == "transient":
            self.server.faults.add("status502", "upload", times=None)
        else:
            self.server.users["drone"] = "changed"  # on the server, not yet in the box
            self.server.expire_tokens()

    def heal(self) -> None:
        self.server.faults.clear()
        self.server.users["drone"] = PASSWORD

    def fail_processing(self) -> None:
        self.server.fail_processing = True

    def reopen(self) -> Target:
        self.target = self._build()
        return self.target


def make(tmp: Path, stack: contextlib.ExitStack, state: MemoryState) -> WebODMHarness:
    server = stack.enter_context(
        FakeWebODM(tmp / "webodm", users={"drone": PASSWORD}, queued_s=0.05, running_s=0.2)
    )
    return WebODMHarness(server, state)
