"""The NodeODM target's harness: the project's NodeODM-compatible server is the store."""

from __future__ import annotations

import contextlib
from pathlib import Path

from daemon.targets.base import MemoryState, Target
from daemon.targets.nodeodm import NodeODMTargetConfig
from daemon.targets.nodeodm.target import NodeODMTarget
from tests.conformance.harness import DS, Fault
from tests.fakes.nodeodm import FakeNodeODM

TOKEN = "node-token"


class NodeODMHarness:
    """Reads the task the target would commit (a tainted task never is: it holds nothing).

    A node sends no Retry-After (NodeODM's Express app has none).
    """

    faults = frozenset({"transient", "permanent", "paused"})

    def __init__(self, node: FakeNodeODM, state: MemoryState) -> None:
        self.node = node
        self.state = state
        self.config = NodeODMTargetConfig(type="nodeodm", url=node.url, poll_s=0.1, timeout_s=10)
        self.target: Target = self._build()

    def _build(self) -> NodeODMTarget:
        return NodeODMTarget("odm", self.config, self.state, token=TOKEN)

    def _files(self) -> dict[str, Path]:
        target = self.target
        assert isinstance(target, NodeODMTarget)
        task = target.current_task(DS)
        if task is None or target.tainted(DS):
            return {}
        view = self.node.task(task)
        if view is None:
            return {}
        return {n: p for n in view.files if (p := self.node.file_path(task, n)) is not None}

    def stored(self, key: bytes) -> bytes:
        assert isinstance(self.target, NodeODMTarget)
        return self._files()[self.target.name_of(DS, key)].read_bytes()

    def copies(self) -> int:
        return len(self._files())

    def inject(self, fault: Fault) -> None:
        if fault == "transient":
            # Refused unread on every resend: the node's own 500 (its preUpload), again and again.
            self.node.faults.add("status500", "upload", times=None)
        elif fault == "permanent":
            self.node.max_images = 1  # and the dataset has more files than that
            self.state.files[DS.id] = 5
        else:
            self.node.token = "another-token"

    def heal(self) -> None:
        self.node.faults.clear()
        self.node.max_images = None
        self.state.files.pop(DS.id, None)
        self.node.token = TOKEN

    def fail_processing(self) -> None:
        self.node.fail_processing = True

    def reopen(self) -> Target:
        self.target = self._build()
        return self.target


def make(tmp: Path, stack: contextlib.ExitStack, state: MemoryState) -> NodeODMHarness:
    node = stack.enter_context(
        FakeNodeODM(
            tmp / "node", token=TOKEN, min_images=1, setup_s=0.05, queued_s=0.05, running_s=0.2
        )
    )
    return NodeODMHarness(node, state)
