"""The NodeODM target: a processing node of OpenDroneMap, directly or the one behind a WebODM.

Its table and its registry entry. The client, :class:`~.target.NodeODMTarget` in ``target``,
is built from ``api`` (requests, and what a reply means), ``tasks`` (a dataset's task: made,
tainted, replaced, committed), ``names`` (each file's name in the task), ``send`` (one image's
upload) and ``processing`` (status and outputs of a committed task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from daemon.configmodel import check_placeholders, credential_ok, not_blank, url_ok
from daemon.targets.base import SecretRef, Target, TargetConfig, TargetEnv, TargetType

# Files ODM reads beside the images: a source feeding this target takes them by default.
ODM_ANCILLARY = ("gcp_list.txt", "geo.txt", "image_groups.txt")


class NodeODMTargetConfig(TargetConfig):
    """A NodeODM processing node (OpenDroneMap), directly or the one behind a WebODM."""

    companions = ODM_ANCILLARY

    type: Literal["nodeodm"] = Field(description="Target implementation.")
    url: str = Field(
        description="The node's base URL.", json_schema_extra={"example": "http://odm.lan:3000"}
    )
    token_file: Path | None = Field(
        None,
        description="File holding the node's token (mode 0600); unset: the node has none.",
        json_schema_extra={"example": "/etc/dronesync/nodeodm.token"},
    )
    token_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the token; wins"
        " over token_file.",
        json_schema_extra={"example": "nodeodm-token"},
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Processing options passed to the node as they are (see its /options).",
        json_schema_extra={"example": {"dsm": True, "feature-quality": "high"}},
    )
    task_name: str = Field(
        "{dataset}", min_length=1, description="Task name on the node: {dataset}, {target}."
    )
    duplicate_scope: Literal["target", "dataset"] = Field(
        "dataset",
        description='"dataset": a task gets every image of its folder even if sent before in'
        ' another task; "target": content sent to the node once is never sent again.',
    )
    poll_s: float = Field(15.0, ge=0.1, le=3600, description="How often processing is polled.")
    timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Connect and reply timeout of each request."
    )
    max_task_replacements: int = Field(
        5,
        ge=0,
        le=100,
        description="Tasks made anew for a dataset after uploads broke off (after two, waits"
        " doubling from 5 s) before its files fail and need `dronesync retry`.",
    )
    download_dir: Path | None = Field(
        None,
        description="Save the task's all.zip here as DATASET.zip when processing ends.",
        json_schema_extra={"example": "/srv/odm-results"},
    )

    _url_ok = field_validator("url")(url_ok)
    _credential_ok = field_validator("token_credential")(credential_ok)
    _paths_ok = field_validator("token_file", "download_dir", mode="before")(not_blank)

    @field_validator("task_name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return check_placeholders(value, {"dataset", "target"})

    def secret(self) -> SecretRef:
        """The node's token (optional)."""
        return SecretRef("token", self.token_file, self.token_credential, required=False)


def _build(name: str, config: NodeODMTargetConfig, env: TargetEnv) -> Target:
    from daemon.targets.nodeodm.target import NodeODMTarget  # noqa: PLC0415 (when used)

    return NodeODMTarget(name, config, env.state, token=env.secret)


TYPE = TargetType("nodeodm", NodeODMTargetConfig, _build)
