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
    """Include/exclude globs, case-insensitive; a pattern without / matches the file name.

    The globs of each kind are joined into one regular expression: one match per file, not
    one per pattern, which matters when a scan meets 100,000 files.
    """

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self._include = _joined(include)
        self._exclude = _joined(exclude)

    def wants(self, dspath: bytes) -> bool:
        """Whether a file at ``dspath`` (inside its dataset folder) is taken."""
        path = dspath.decode("utf-8", "surrogateescape")
        name = path.rpartition("/")[2]
        return _matches(self._include, path, name) and not _matches(self._exclude, path, name)


_Joined = tuple[re.Pattern[str] | None, re.Pattern[str] | None]


def _joined(patterns: list[str]) -> _Joined:
    """(one regex for the patterns on names, one for those on paths with a /)."""
    on_names = [compile_glob(p).pattern for p in patterns if "/" not in p]
    on_paths = [compile_glob(p).pattern for p in patterns if "/" in p]

    def join(parts: list[str]) -> re.Pattern[str] | None:
        return re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE) if parts else None

    return join(on_names), join(on_paths)


def _matches(joined: _Joined, path: str, name: str) -> bool:
    on_names, on_paths = joined
    return bool(
        (on_names is not None and on_names.match(name))
        or (on_paths is not None and on_paths.match(path))
    )
