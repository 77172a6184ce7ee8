"""The S3 target: any S3-compatible bucket, shared by a fleet of boxes (``type = "s3"``).

Its table and its registry entry; the uploads are in ``target``, the keys in ``keys``, the
manifests in ``manifest`` and the listing of every box's datasets in ``fleet``. ``target``
imports boto3: only when an s3 target is built or its fleet listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from daemon.configmodel import DAY_S, check_placeholders, credential_ok, not_blank, url_ok
from daemon.targets.base import (
    FleetRow,
    SecretRef,
    Target,
    TargetConfig,
    TargetEnv,
    TargetType,
)


class S3TargetConfig(TargetConfig):
    """An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage, R2, ...), shared by boxes."""

    type: Literal["s3"] = Field(description="Target implementation.")
    bucket: str = Field(
        min_length=3,
        max_length=63,
        description="The bucket; it must exist.",
        json_schema_extra={"example": "survey-fleet"},
    )
    prefix: str = Field(
        "",
        description='Key prefix inside the bucket ("" : the bucket\'s top), without a leading /.',
        json_schema_extra={"example": "dronesync"},
    )
    endpoint_url: str | None = Field(
        None,
        description="The S3 endpoint (MinIO, Ceph, Garage, R2...); unset: AWS.",
        json_schema_extra={"example": "https://minio.example.net:9000"},
    )
    region: str | None = Field(
        None,
        description="The bucket's region; unset: from the profile or the environment.",
        json_schema_extra={"example": "eu-central-1"},
    )
    addressing: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description='"path": https://host/bucket/key; "virtual": https://bucket.host/key;'
        ' "auto": path with an endpoint_url, virtual on AWS.',
    )
    profile: str | None = Field(
        None,
        description="A named profile of ~/.aws/config (its region too; access_key_id wins for"
        " the keys); unset with neither: boto3's usual chain (environment, instance role).",
        json_schema_extra={"example": "dronesync"},
    )
    access_key_id: str | None = Field(
        None,
        description="Access key id; its secret comes from secret_access_key_file or"
        " secret_access_key_credential.",
        json_schema_extra={"example": "AKIAEXAMPLE"},
    )
    secret_access_key_file: Path | None = Field(
        None,
        description="File holding the secret access key (mode 0600).",
        json_schema_extra={"example": "/etc/dronesync/s3.secret"},
    )
    secret_access_key_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the secret access"
        " key; wins over secret_access_key_file.",
        json_schema_extra={"example": "s3-secret"},
    )
    box: str | None = Field(
        None,
        min_length=1,
        description="This box's name in the bucket (datasets/<box>/...); unset: the host name.",
        json_schema_extra={"example": "truck-3"},
    )
    layout: Literal["content", "mirror"] = Field(
        "content",
        description='"content": each image once under its SHA-256 (objects/sha256/ab/<hash>),'
        ' whichever box sends it; "mirror": <box>/<dataset>/<path>, for browsing.',
    )
    multipart_threshold_mb: int = Field(
        64, ge=5, le=5000, description="Files larger than this go in parts."
    )
    part_size_mb: int = Field(16, ge=5, le=512, description="Size of each part of those files.")
    parallel_parts: int = Field(
        4,
        ge=1,
        le=32,
        description="Parts of those files sent at once, across all uploads; each is held in"
        " memory until the store has it (at most parallel_parts * part_size_mb).",
    )
    process_command: list[str] | None = Field(
        None,
        description="Run once per dataset after its manifest is written; {dataset}, {box},"
        " {manifest} (s3://bucket/key) and {manifest_key} are replaced in each argument."
        " Exit code 0 means processed; unset: processed once the manifest is written.",
        json_schema_extra={"example": ["/usr/local/bin/queue-job", "{manifest}"]},
    )
    process_timeout_s: float = Field(
        DAY_S, gt=0, le=7 * DAY_S, description="process_command running longer is stopped."
    )
    duplicate_scope: Literal["dataset"] = Field(
        "dataset",
        description='Only "dataset": every dataset writes its whole manifest; an image already'
        " in the bucket is found there by its key and never stored twice.",
    )
    poll_s: float = Field(5.0, ge=0.1, le=3600, description="How often processing is polled.")
    timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Connect and reply timeout of each request."
    )

    _url_ok = field_validator("endpoint_url")(url_ok)
    _credential_ok = field_validator("secret_access_key_credential")(credential_ok)
    _paths_ok = field_validator("secret_access_key_file", mode="before")(not_blank)

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, value: str) -> str:
        if value.startswith("/") or "//" in value:
            raise ValueError('a key prefix such as "dronesync" or "fleet/a": no leading /, no //')
        return value.rstrip("/")

    @field_validator("box")
    @classmethod
    def _box_ok(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or value in (".", "..")):
            raise ValueError("a name without /, such as truck-3")
        return value

    @field_validator("process_command")
    @classmethod
    def _command_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value or not value[0].strip():
            raise ValueError('must name a program, e.g. ["/usr/local/bin/queue-job", "{manifest}"]')
        for arg in value:
            check_placeholders(arg, {"dataset", "box", "manifest", "manifest_key"})
        return value

    @model_validator(mode="after")
    def _keys_ok(self) -> Self:
        has_secret = self.secret_access_key_file or self.secret_access_key_credential
        if self.access_key_id and not has_secret:
            raise ValueError(
                "access_key_id needs secret_access_key_file or secret_access_key_credential"
            )
        if has_secret and not self.access_key_id:
            raise ValueError("a secret access key needs its access_key_id")
        return self

    def secret(self) -> SecretRef | None:
        """The secret access key, when the keys are in the table (else boto3's chain)."""
        if not self.access_key_id:
            return None
        return SecretRef(
            "secret_access_key",
            self.secret_access_key_file,
            self.secret_access_key_credential,
            required=True,
        )

    def programs(self) -> dict[str, list[str] | None]:
        """The processing command."""
        return {"process_command": self.process_command}


def _build(name: str, config: S3TargetConfig, env: TargetEnv) -> Target:
    from daemon.targets.s3.target import S3Target  # noqa: PLC0415 (boto3, when used)

    return S3Target(name, config, env.state, state_dir=env.state_dir, secret=env.secret)


def _fleet(config: S3TargetConfig, secret: str | None) -> list[FleetRow]:
    from daemon.targets.s3.fleet import fleet  # noqa: PLC0415 (boto3, when used)

    return fleet(config, secret)


TYPE = TargetType("s3", S3TargetConfig, _build, _fleet)
