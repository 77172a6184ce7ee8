"""Upload targets: one protocol (``base``), one module per implementation."""

from __future__ import annotations

from pathlib import Path

from daemon.config import DirectoryTargetConfig
from daemon.targets.base import DatasetRef, ProcessingStatus, Target, Transfer, UploadItem
from daemon.targets.directory import DirectoryTarget

__all__ = [
    "DatasetRef",
    "DirectoryTarget",
    "ProcessingStatus",
    "Target",
    "Transfer",
    "UploadItem",
    "build_target",
]


def build_target(name: str, config: DirectoryTargetConfig, state_dir: Path) -> Target:
    """The target implementation for one ``[targets.NAME]`` table (an explicit list)."""
    if isinstance(config, DirectoryTargetConfig):
        return DirectoryTarget(name, config, log_dir=state_dir / "processing")
    raise NotImplementedError(config)  # pragma: no cover - the config model is exhaustive
