"""The WebODM target: each dataset a task in a WebODM project, processed by its nodes.

Its table and its registry entry. The client, :class:`~.target.WebODMTarget` in ``target``,
is built from ``api`` (the JSON Web Token and what a reply means), ``tasks`` (the project and
each dataset's task: found, made once, committed) and ``send`` (one image's upload); it reads
a committed task's status itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from daemon.configmodel import check_placeholders, credential_ok, not_blank, url_ok
from daemon.targets.base import SecretRef, Target, TargetConfig, TargetEnv, TargetType
from daemon.targets.nodeodm import ODM_ANCILLARY


class WebODMTargetConfig(TargetConfig):
    """A WebODM: a project of it, one task per dataset, processed by its nodes (or ClusterODM)."""

    companions = ODM_ANCILLARY

    type: Literal["webodm"] = Field(description="Target implementation.")
    url: str = Field(
        description="WebODM's base URL.", json_schema_extra={"example": "http://webodm.lan:8000"}
    )
    username: str = Field(
        min_length=1,
        description="The WebODM user the tasks belong to (it needs to change the project).",
        json_schema_extra={"example": "dronesync"},
    )
    password_file: Path | None = Field(
        None,
        description="File holding that user's password (mode 0600).",
        json_schema_extra={"example": "/etc/dronesync/webodm.password"},
    )
    password_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the password; wins"
        " over password_file.",
        json_schema_extra={"example": "webodm-password"},
    )
    project: str = Field(
        "dronesync",
        min_length=1,
        description="The project: its id (digits), or its name (found, or made once).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Processing options of each task, passed as they are (ODM's options).",
        json_schema_extra={"example": {"dsm": True, "orthophoto-resolution": 2}},
    )
    processing_node: int | None = Field(
        None,
        ge=1,
        description="Id of the processing node (a NodeODM or a ClusterODM) in WebODM; unset:"
        " WebODM chooses one.",
        json_schema_extra={"example": 1},
    )
    task_name: str = Field(
        "{dataset}", min_length=1, description="Task name in WebODM: {dataset}, {target}."
    )
    duplicate_scope: Literal["target", "dataset"] = Field(
        "dataset",
        description='"dataset": a task gets every image of its folder even if sent before in'
        ' another task; "target": content sent to WebODM once is never sent again.',
    )
    poll_s: float = Field(15.0, ge=0.1, le=3600, description="How often processing is polled.")
    timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Connect and reply timeout of each request."
    )
    download_dir: Path | None = Field(
        None,
        description="Save the task's all.zip here as DATASET.zip when processing ends.",
        json_schema_extra={"example": "/srv/odm-results"},
    )

    _url_ok = field_validator("url")(url_ok)
    _credential_ok = field_validator("password_credential")(credential_ok)
    _paths_ok = field_validator("password_file", "download_dir", mode="before")(not_blank)

    @field_validator("task_name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return check_placeholders(value, {"dataset", "target"})

    def secret(self) -> SecretRef:
        """The user's password (required)."""
        return SecretRef("password", self.password_file, self.password_credential, required=True)


def _build(name: str, config: WebODMTargetConfig, env: TargetEnv) -> Target:
    from daemon.targets.webodm.target import WebODMTarget  # noqa: PLC0415 (when used)

    if env.secret is None:  # pragma: no cover - the configuration check refuses this first
        raise ValueError(f"targets.{name}: no password configured")
    return WebODMTarget(name, config, env.state, password=env.secret)


TYPE = TargetType("webodm", WebODMTargetConfig, _build)
