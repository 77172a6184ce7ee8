"""Which files of a source are wanted: include/exclude globs, and never OS litter."""

from __future__ import annotations

import re

from daemon.config import compile_glob

# Folders and files that operating systems and cameras leave on cards; never images.
LITTER = frozenset(
    {
        b"system volume information",
        b"$recycle.bin",
        b"lost+found",
        b"thumbs.db",
        b"desktop.ini",
    }
)


def is_litter(name: bytes) -> bool:
    """Hidden entries (``.Trashes``, ``._IMG.JPG``, ``.Spotlight-V100``) and OS folders."""
    return name.startswith(b".") or name.lower() in LITTER


class FileFilter:
    """Include/exclude globs, case-insensitive; a pattern without / matches the file name."""

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self._include = [(("/" in p), compile_glob(p)) for p in include]
        self._exclude = [(("/" in p), compile_glob(p)) for p in exclude]

    @staticmethod
    def _any(patterns: list[tuple[bool, re.Pattern[str]]], path: str, name: str) -> bool:
        return any(rx.match(path if has_slash else name) for has_slash, rx in patterns)

    def wants(self, dspath: bytes) -> bool:
        """Whether a file at ``dspath`` (inside its dataset folder) is taken."""
        path = dspath.decode("utf-8", "surrogateescape")
        name = path.rpartition("/")[2]
        return self._any(self._include, path, name) and not self._any(self._exclude, path, name)
