"""The S3 target's harness: a bucket in moto (server mode) behind the fault proxy.

The content layout stores an object under its hash, not under the file's path: the key the
target returns is the object key, and :meth:`S3Harness.stored` reads that.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from daemon.targets.base import MemoryState, Target
from daemon.targets.s3 import S3TargetConfig
from daemon.targets.s3.target import S3Target
from tests.conformance.harness import Fault
from tests.fakes.s3store import ACCESS_KEY, SECRET_KEY, S3Store


class S3Harness:
    """S3 refuses for good only what a client got wrong, which the target never sends; a
    plain store has no Retry-After, and these static keys no sign-in to refuse on demand."""

    faults = frozenset({"transient"})

    def __init__(self, store: S3Store, tmp: Path, state: MemoryState) -> None:
        self.store = store
        self.tmp = tmp
        self.state = state
        self._flag = tmp / "fail-processing"
        self.config = S3TargetConfig.model_validate(
            {
                "type": "s3",
                "bucket": store.bucket,
                "prefix": "fleet",
                "endpoint_url": store.url,
                "access_key_id": ACCESS_KEY,
                "secret_access_key_file": tmp / "s3.secret",
                "box": "box-a",
                "multipart_threshold_mb": 5,
                "part_size_mb": 5,
                "poll_s": 0.1,
                "timeout_s": 10,
                "process_command": ["/bin/sh", "-c", f"test ! -e {self._flag}", "{manifest}"],
            }
        )
        self.target: Target = self._build()

    def _build(self) -> S3Target:
        return S3Target("fleet", self.config, self.state, state_dir=self.tmp, secret=SECRET_KEY)

    def stored(self, key: bytes) -> bytes:
        return self.store.get(key.decode("ascii"))

    def copies(self) -> int:
        return len(self.store.keys("fleet/objects/"))

    def inject(self, fault: Fault) -> None:
        assert fault == "transient"
        self.store.faults.add("status503", "put_object")

    def heal(self) -> None:
        self.store.faults.clear()

    def fail_processing(self) -> None:
        self._flag.touch()

    def reopen(self) -> Target:
        self.target = self._build()
        return self.target


def make(tmp: Path, stack: contextlib.ExitStack, state: MemoryState) -> S3Harness:
    store = stack.enter_context(S3Store())
    return S3Harness(store, tmp, state)
