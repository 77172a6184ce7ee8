"""The PIX4Dcloud target's harness: the local PIX4Dcloud-compatible server is the store."""

from __future__ import annotations

import contextlib
from pathlib import Path

from daemon.targets.base import MemoryState, Target
from daemon.targets.pix4dcloud import Pix4DCloudTargetConfig
from daemon.targets.pix4dcloud.target import Pix4DCloudTarget, s3_key
from tests.conformance.harness import DS, RETRY_AFTER_S, Fault
from tests.fakes.pix4dcloud import FakePix4DCloud

SECRET = "s3cret"


class Pix4DCloudHarness:
    """Objects are read back from moto under the dataset's project prefix.

    No refusal of an upload is permanent on demand here: S3 refuses for good only a key or a
    credential the client got wrong, which the fake never hands out.
    """

    faults = frozenset({"transient", "retry_after", "paused"})

    def __init__(self, cloud: FakePix4DCloud, state: MemoryState) -> None:
        self.cloud = cloud
        self.state = state
        self.config = Pix4DCloudTargetConfig(
            type="pix4dcloud", url=cloud.url, client_id="conformance", poll_s=0.1, timeout_s=10
        )
        self.target: Target = self._build()

    def _build(self) -> Pix4DCloudTarget:
        return Pix4DCloudTarget("cloud", self.config, self.state, client_secret=SECRET)

    def _prefix(self) -> str | None:
        assert isinstance(self.target, Pix4DCloudTarget)
        project = self.target.project_id(DS)
        return None if project is None else self.cloud.project(project).prefix

    def stored(self, key: bytes) -> bytes:
        prefix = self._prefix()
        assert prefix is not None
        s3 = self.cloud.moto_s3
        body = s3.get_object(Bucket=self.cloud.bucket, Key=s3_key(prefix, key))["Body"]
        with contextlib.closing(body):
            return body.read()

    def copies(self) -> int:
        prefix = self._prefix()
        return 0 if prefix is None else len(self.cloud.objects(prefix))

    def inject(self, fault: Fault) -> None:
        if fault == "transient":
            self.cloud.s3_faults.add("status503", "put_object")
        elif fault == "retry_after":
            # The API's throttle, met when the upload fetches new S3 credentials (S3's own
            # SlowDown carries no Retry-After).
            self.cloud.expire_s3_credentials()
            self.cloud.api_faults.add("status429", "credentials", retry_after=RETRY_AFTER_S)
        else:
            self.cloud.rotate_secret("rotated")  # on the account, not yet in the box
            self.cloud.expire_s3_credentials()

    def heal(self) -> None:
        self.cloud.rotate_secret(SECRET)  # the operator puts the new secret in the box

    def fail_processing(self) -> None:
        self.cloud.fail_processing = True

    def reopen(self) -> Target:
        self.target = self._build()
        return self.target


def make(tmp: Path, stack: contextlib.ExitStack, state: MemoryState) -> Pix4DCloudHarness:
    del tmp
    cloud = stack.enter_context(
        FakePix4DCloud(client_id="conformance", client_secret=SECRET, processing_s=(0.1, 0.3))
    )
    return Pix4DCloudHarness(cloud, state)
