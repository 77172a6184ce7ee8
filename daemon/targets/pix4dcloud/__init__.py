"""The PIX4Dcloud target (PIX4Dengine Cloud API): one project per dataset, images straight to S3.

Its table and its registry entry; the client is ``target.Pix4DCloudTarget``, built from
``api``, ``projects``, ``upload`` and ``processing``. ``upload`` imports boto3, a quarter of a
second of every start: only when a pix4dcloud target is configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from daemon.configmodel import check_placeholders, credential_ok, not_blank, url_ok
from daemon.targets.base import SecretRef, Target, TargetConfig, TargetEnv, TargetType


class Pix4DCloudTargetConfig(TargetConfig):
    """PIX4Dcloud (PIX4Dengine Cloud API): one project per dataset, images straight to S3."""

    type: Literal["pix4dcloud"] = Field(description="Target implementation.")
    url: str = Field("https://cloud.pix4d.com", description="The API's base URL.")
    client_id: str = Field(
        min_length=1,
        description="API client id (PIX4Dcloud: Account, API access).",
        json_schema_extra={"example": "your-client-id"},
    )
    client_secret_file: Path | None = Field(
        None,
        description="File holding the client secret (mode 0600).",
        json_schema_extra={"example": "/etc/dronesync/pix4dcloud.secret"},
    )
    client_secret_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the client secret;"
        " wins over client_secret_file.",
        json_schema_extra={"example": "pix4dcloud-secret"},
    )
    project_name: str = Field(
        "{dataset}", min_length=1, description="Project name in PIX4Dcloud: {dataset}, {target}."
    )
    processing_template: str | None = Field(
        None,
        description="S3 key of a custom processing template already in the project's bucket;"
        " unset: the default template.",
        json_schema_extra={"example": "templates/3d-maps.tmpl"},
    )
    multipart_threshold_mb: int = Field(
        64, ge=5, le=5000, description="Files larger than this go to S3 in parts."
    )
    part_size_mb: int = Field(16, ge=5, le=512, description="Size of each part of those files.")
    parallel_parts: int = Field(
        2,
        ge=1,
        le=32,
        description="Parts of those files sent at once, across all uploads; each is held in"
        " memory until S3 has it (at most parallel_parts * part_size_mb).",
    )
    duplicate_scope: Literal["target", "dataset"] = Field(
        "dataset",
        description='"dataset": a project gets every image of its folder even if sent before in'
        ' another project; "target": content sent once is never sent again.',
    )
    poll_s: float = Field(45.0, ge=0.1, le=3600, description="How often processing is polled.")
    timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Connect and reply timeout of each request."
    )

    _url_ok = field_validator("url")(url_ok)
    _credential_ok = field_validator("client_secret_credential")(credential_ok)
    _paths_ok = field_validator("client_secret_file", mode="before")(not_blank)

    @field_validator("project_name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return check_placeholders(value, {"dataset", "target"})

    def secret(self) -> SecretRef:
        """The API client's secret (required)."""
        return SecretRef(
            "client_secret",
            self.client_secret_file,
            self.client_secret_credential,
            required=True,
        )


def _build(name: str, config: Pix4DCloudTargetConfig, env: TargetEnv) -> Target:
    from daemon.targets.pix4dcloud.target import Pix4DCloudTarget  # noqa: PLC0415 (when used)

    if env.secret is None:  # pragma: no cover - the configuration check refuses this first
        raise ValueError(f"targets.{name}: no client secret configured")
    return Pix4DCloudTarget(name, config, env.state, client_secret=env.secret)


TYPE = TargetType("pix4dcloud", Pix4DCloudTargetConfig, _build)
