"""How a file inside a source maps to a dataset: the folder layout and the name template."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from daemon.config import SourceConfig


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a file belongs: its dataset folder (relative to the volume) and name."""

    folder: bytes
    dataset: str
    dspath: bytes


def safe_name(raw: str) -> str:
    """A dataset name usable as a folder name and readable in a terminal."""
    cleaned = "".join(
        "_" if ch in "/\\" or unicodedata.category(ch)[0] == "C" else ch for ch in raw
    ).strip()
    cleaned = cleaned.encode("utf-8", "replace").decode("utf-8")
    if cleaned in {"", ".", ".."}:
        cleaned = "dataset"
    return cleaned.lstrip(".") or "dataset"


class DatasetMapper:
    """Maps relative paths of one source to datasets, per its ``layout`` and ``dataset``."""

    def __init__(self, config: SourceConfig, root: Path) -> None:
        self.config = config
        self.root = root

    def place(self, relpath: bytes) -> Placement | None:
        """The placement of a file, or None for a file outside any dataset folder."""
        source_name = self.root.name
        if self.config.layout == "single":
            name = self.config.dataset.format(folder=source_name, source=source_name)
            return Placement(b"", safe_name(name), relpath)
        folder, sep, rest = relpath.partition(b"/")
        if not sep:
            return None  # a file at the top of a "subfolders" source belongs to no dataset
        folder_name = (
            os.fsdecode(folder).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        )
        name = self.config.dataset.format(folder=folder_name, source=source_name)
        return Placement(folder, safe_name(name), rest)
