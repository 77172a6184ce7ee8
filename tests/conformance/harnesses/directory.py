"""The directory target's harness: the archive folder is the store."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from daemon.targets.base import MemoryState, Target
from daemon.targets.directory import DirectoryTargetConfig
from daemon.targets.directory.target import DirectoryTarget
from tests.conformance.harness import DS, Fault


class DirectoryHarness:
    """A file where the dataset's folder goes is the one refusal a folder makes on demand.

    (Root, which runs CI, writes through any mode bits, and a full disk cannot be made on
    request; a folder has no Retry-After and no sign-in.)
    """

    faults = frozenset({"permanent"})

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._flag = tmp / "fail-processing"
        # Processing fails while the flag file exists.
        command = ["/bin/sh", "-c", f"test ! -e {self._flag}"]
        self.config = DirectoryTargetConfig(
            type="directory", path=tmp / "archive", process_command=command
        )
        self.target: Target = self._build()

    def _build(self) -> DirectoryTarget:
        return DirectoryTarget("archive", self.config, log_dir=self._tmp / "logs")

    @property
    def folder(self) -> Path:
        return self.config.path / DS.name

    def stored(self, key: bytes) -> bytes:
        return Path(os.fsdecode(os.fsencode(self.folder) + b"/" + key)).read_bytes()

    def copies(self) -> int:
        return sum(1 for p in self.folder.rglob("*") if p.is_file())

    def inject(self, fault: Fault) -> None:
        assert fault == "permanent"
        shutil.rmtree(self.folder)
        self.folder.write_bytes(b"a file where the dataset's folder goes")

    def heal(self) -> None:
        if self.folder.is_file():
            self.folder.unlink()

    def fail_processing(self) -> None:
        self._flag.touch()

    def reopen(self) -> Target:
        return self._build()


def make(tmp: Path, stack: contextlib.ExitStack, state: MemoryState) -> DirectoryHarness:
    del stack, state
    return DirectoryHarness(tmp)
