"""A bucket on loopback for the s3 target: moto in server mode behind the fault proxy.

The proxy (``s3proxy.S3FaultProxy`` without credentials) checks every body's SHA-256 the way
S3 does and injects faults on demand; ``direct`` is a client straight to moto for reading
back what was stored, unaffected by faults. ``python -m tests.fakes.s3store`` serves a bucket
by hand, moto alone unless ``--proxy`` (scripts/bench-targets runs it so, in a process of its
own, to time clients against moto and nothing else).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Self

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.fakes.pix4dcloud import QuickMotoServer
from tests.fakes.s3proxy import FaultPlan, S3FaultProxy, s3_fault_plan

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

ACCESS_KEY = "fleet-access-key"
SECRET_KEY = "fleet-secret-key"
REGION = "us-east-1"


class S3Store:
    """One bucket in moto, reached through a fault-injecting proxy (``url``).

    Without ``proxy``, ``url`` is moto's own: no faults, no checks, no second hop. moto 5
    stores a body whatever ``x-amz-checksum-sha256`` says: a store that does not check, as
    some S3-compatible servers do not.
    """

    def __init__(
        self,
        bucket: str = "fleet",
        *,
        proxy: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        digest_code: str = "BadDigest",
    ) -> None:
        """``digest_code``: how the proxy refuses a body not matching its checksum."""
        self.bucket = bucket
        self.proxy = proxy
        self.digest_code = digest_code
        self._host = host
        self._port = port
        self.faults: FaultPlan = s3_fault_plan()
        self._moto: QuickMotoServer | None = None
        self._proxy: S3FaultProxy | None = None
        self._direct: S3Client | None = None
        self.url = ""
        self.moto_url = ""

    def start(self) -> Self:
        werkzeug_log = logging.getLogger("werkzeug")
        if werkzeug_log.level == logging.NOTSET:
            werkzeug_log.setLevel(logging.WARNING)
        try:
            self._moto = QuickMotoServer(ip_address=self._host, port=self._port, verbose=False)
            self._moto.start()
            host, port = self._moto.get_host_and_port()
            self.moto_url = f"http://{host}:{port}"
            self._direct = boto3.client(
                "s3",
                endpoint_url=self.moto_url,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}),
            )
            self._direct.create_bucket(Bucket=self.bucket)
            if self.proxy:
                self._proxy = S3FaultProxy(
                    self.moto_url, faults=self.faults, digest_code=self.digest_code
                ).start()
            self.url = self._proxy.url if self._proxy is not None else self.moto_url
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        if self._direct is not None:
            # moto's state is the process's: the next store must start from an empty bucket.
            with contextlib.suppress(ClientError, OSError):
                self._delete_bucket(self._direct)
            self._direct.close()
            self._direct = None
        if self._moto is not None:
            moto, self._moto = self._moto, None
            moto.stop()

    def _delete_bucket(self, s3: S3Client) -> None:
        for key, upload_id in self._uploads(s3):
            s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        keys = self.keys()
        for n in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": key} for key in keys[n : n + 1000]]
            s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        s3.delete_bucket(Bucket=self.bucket)

    def _uploads(self, s3: S3Client) -> list[tuple[str, str]]:
        pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket)
        return [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def direct(self) -> S3Client:
        """A client straight to moto: no faults, no checks."""
        assert self._direct is not None, "the store is not running"
        return self._direct

    @property
    def requests(self) -> dict[str, int]:
        """Requests the proxy saw, per route."""
        return dict(self._proxy.requests) if self._proxy is not None else {}

    def get(self, key: str) -> bytes:
        """The object's bytes."""
        body = self.direct.get_object(Bucket=self.bucket, Key=key)["Body"]
        with contextlib.closing(body):
            return body.read()

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``."""
        pages = self.direct.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def objects(self, prefix: str = "") -> dict[str, str]:
        """Key -> SHA-256 of every object under ``prefix``."""
        return {key: hashlib.sha256(self.get(key)).hexdigest() for key in self.keys(prefix)}

    def unfinished_uploads(self) -> list[str]:
        """Keys of multipart uploads neither completed nor aborted."""
        return [key for key, _ in self._uploads(self.direct)]

    def unfinished_upload_ids(self) -> set[str]:
        """Ids of multipart uploads neither completed nor aborted."""
        return {upload_id for _, upload_id in self._uploads(self.direct)}


def main(argv: list[str] | None = None) -> int:
    """Serve a bucket until Ctrl-C or SIGTERM, printing what an s3 target's table needs."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.s3store",
        description="A local S3 bucket: moto in server mode on loopback.",
    )
    parser.add_argument("--bucket", default="fleet")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="moto's port (0: any free port)")
    parser.add_argument(
        "--proxy", action="store_true", help="behind the fault proxy, which checks every body"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with S3Store(args.bucket, proxy=args.proxy, host=args.host, port=args.port) as store:
        print(f"S3 endpoint:  {store.url}")
        print(f"bucket:       {store.bucket}")
        print(f"region:       {REGION}")
        # moto takes any credentials: a client brings its own.
        print("Serving; Ctrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
