"""How a file inside a source maps to a dataset: the folder layout and the name template."""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from daemon.config import SourceConfig
from daemon.sources.mounts import Card


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


def _text(name: bytes) -> str:
    return os.fsdecode(name).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class DatasetMapper:
    """Maps relative paths of one source to datasets, per its ``layout`` and ``dataset``.

    The name is only used when a file opens a new dataset; later files of the same folder join
    it whatever their dates, so ``{date}`` is the capture date of the folder's first image.
    """

    def __init__(self, config: SourceConfig, root: Path, card: Card | None = None) -> None:
        self.config = config
        self.root = root
        self.card = card or Card(label=root.name, uuid=root.name)

    def split(self, relpath: bytes) -> tuple[bytes, bytes, bytes] | None:
        """(dataset folder, its name part, path inside it), or None outside any dataset.

        Cheap, for the walk's filter; :meth:`place` adds the dataset name.
        """
        if self.config.layout == "single":
            return b"", os.fsencode(self.root.name), relpath
        if self.config.layout == "dcim":
            top, sep, below = relpath.partition(b"/")
            if not sep or top.upper() != b"DCIM":
                return None  # only the camera's folders are datasets on a card
            folder, sep, rest = below.partition(b"/")
            if not sep:
                return None
            return top + b"/" + folder, folder, rest
        folder, sep, rest = relpath.partition(b"/")
        if not sep:
            return None  # a file at the top of a "subfolders" source belongs to no dataset
        return folder, folder, rest

    def place(self, relpath: bytes, mtime_ns: int | None = None) -> Placement | None:
        """The placement of a file, or None for a file outside any dataset folder."""
        found = self.split(relpath)
        if found is None:
            return None
        folder, name, rest = found
        return Placement(folder, self._name(_text(name), mtime_ns), rest)

    def _name(self, folder: str, mtime_ns: int | None) -> str:
        when = time.time() if mtime_ns is None else mtime_ns / 1e9
        name = self.config.dataset.format(
            folder=folder,
            source=self.root.name,
            label=self.card.label,
            uuid=self.card.uuid,
            date=time.strftime("%Y-%m-%d", time.localtime(when)),
        )
        return safe_name(name)
