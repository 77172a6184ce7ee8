"""The directory target: a local folder or a mounted NAS share (the embedded default).

Its table and its registry entry; the copies are made in ``target``, processing runs in
``kit.command``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator

from daemon.configmodel import DAY_S, check_placeholders, not_blank
from daemon.targets.base import Target, TargetConfig, TargetEnv, TargetType

# Inside the archive, on its filesystem: a copy made there while hashing is linked into place.
STAGING = ".dronesync-staging"


class DirectoryTargetConfig(TargetConfig):
    """A local folder or a mounted NAS share: the embedded default target."""

    type: Literal["directory"] = Field(description="Target implementation.")
    path: Path = Field(
        description="Folder that receives one sub-folder per dataset.",
        json_schema_extra={"example": "/srv/drone-archive"},
    )
    process_command: list[str] | None = Field(
        None,
        description=(
            "Run once per dataset when it is processed; {dataset} and {dataset_dir} are"
            " replaced inside each argument. Exit code 0 means processed."
        ),
        json_schema_extra={"example": ["/usr/local/bin/process-dataset", "{dataset_dir}"]},
    )
    process_timeout_s: float = Field(
        DAY_S, gt=0, le=7 * DAY_S, description="Processing that runs longer is stopped, failed."
    )
    duplicate_scope: Literal["target", "dataset"] = Field(
        "target",
        description='"target": content already sent to this target is a duplicate; "dataset":'
        " only within the same dataset.",
    )
    staging: bool = Field(
        True,
        description="Copy each new image into .dronesync-staging in this folder while it is"
        " hashed, then link it into place: the card is read once, not twice (needs hard links;"
        " without them, or when false, images are hashed, then copied).",
    )

    _path_ok = field_validator("path", mode="before")(not_blank)

    @field_validator("process_command")
    @classmethod
    def _command_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value or not value[0].strip():
            raise ValueError(
                'must name a program, e.g. ["/usr/local/bin/process", "{dataset_dir}"]'
            )
        for arg in value:
            check_placeholders(arg, {"dataset", "dataset_dir"})
        return value

    def written_folder(self) -> Path:
        """The archive itself."""
        return self.path

    def programs(self) -> dict[str, list[str] | None]:
        """The processing command."""
        return {"process_command": self.process_command}

    def anchored(self, base: Path) -> Self:
        """Relative ``path`` and a relative program (``./process.sh``) from ``base``."""
        anchored = super().anchored(base)
        command = anchored.process_command
        if command and "/" in command[0] and not command[0].startswith("/"):
            command = [str(base / command[0]), *command[1:]]
            anchored = anchored.model_copy(update={"process_command": command})
        return anchored


def _build(name: str, config: DirectoryTargetConfig, env: TargetEnv) -> Target:
    from daemon.targets.directory.target import DirectoryTarget  # noqa: PLC0415 (when used)

    return DirectoryTarget(name, config, log_dir=env.state_dir / "processing")


TYPE = TargetType("directory", DirectoryTargetConfig, _build)
