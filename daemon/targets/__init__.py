"""Upload targets: one protocol (``base``), one module per implementation.

Each implementation is imported only when a configured target needs it: boto3 alone costs a
quarter of a second of every start on this machine (more on a Raspberry Pi), which a box
archiving into a folder should not pay on each restart.
"""

from __future__ import annotations

from pathlib import Path

from daemon.config import (
    DirectoryTargetConfig,
    NodeODMTargetConfig,
    Pix4DCloudTargetConfig,
    TargetConfig,
)
from daemon.secrets import read_secret, secret_path
from daemon.targets.base import (
    DatasetRef,
    MemoryState,
    ProcessingStatus,
    Target,
    TargetState,
    Transfer,
    UploadItem,
)
from daemon.targets.directory import DirectoryTarget

__all__ = [
    "DatasetRef",
    "DirectoryTarget",
    "MemoryState",
    "ProcessingStatus",
    "Target",
    "TargetState",
    "Transfer",
    "UploadItem",
    "build_target",
]


def build_target(name: str, config: TargetConfig, state_dir: Path, state: TargetState) -> Target:
    """The target implementation for one ``[targets.NAME]`` table (an explicit list)."""
    if isinstance(config, DirectoryTargetConfig):
        return DirectoryTarget(name, config, log_dir=state_dir / "processing")
    if isinstance(config, NodeODMTargetConfig):
        from daemon.targets.nodeodm import NodeODMTarget  # noqa: PLC0415 (only when configured)

        secret = secret_path(config.token_file, config.token_credential)
        token = None if secret is None else read_secret(secret)
        return NodeODMTarget(name, config, state, token=token)
    if isinstance(config, Pix4DCloudTargetConfig):
        from daemon.targets.pix4dcloud import Pix4DCloudTarget  # noqa: PLC0415 (as above)

        secret = secret_path(config.client_secret_file, config.client_secret_credential)
        if secret is None:  # pragma: no cover - runtime_problems refuses this first
            raise ValueError(f"targets.{name}: no client secret configured")
        return Pix4DCloudTarget(name, config, state, client_secret=read_secret(secret))
    raise NotImplementedError(config)  # pragma: no cover - the config model is exhaustive
