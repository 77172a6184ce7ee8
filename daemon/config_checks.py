"""Checks of a configuration against the machine: folders that overlap, programs that cannot run.

These catch what validation of each key alone cannot, and what would otherwise break only at
run time: a target folder inside a watched source (what is written there comes back as a new
dataset), two sources taking the same files, a path that is a regular file, a program missing.
Each function returns the reason as text, or None; the caller adds the file and the key.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from pathlib import Path

GLOB_CHARS = "*?["


def is_glob(text: str) -> bool:
    """Whether a path or one of its components holds a glob character."""
    return any(ch in text for ch in GLOB_CHARS)


def path_parts(path: Path) -> tuple[str, ...]:
    """The components of ``path``, its literal part before any glob resolved through symlinks.

    Two spellings of one folder (a symlink, ``..``) then compare equal; the components from the
    first glob on are kept as patterns.
    """
    parts = path.parts
    fixed = next((i for i, part in enumerate(parts) if is_glob(part)), len(parts))
    literal = Path(*parts[:fixed]).resolve()
    return literal.parts + parts[fixed:]


def _may_match(one: str, other: str) -> bool:
    """Whether two components (each a name or a glob) can name the same folder."""
    if not is_glob(one) and not is_glob(other):
        return one == other
    if not is_glob(other):
        return fnmatch.fnmatchcase(other, one)
    if not is_glob(one):
        return fnmatch.fnmatchcase(one, other)
    # Two globs: compare what each fixes before its first glob character, and after its last.
    head, other_head = _fixed_head(one), _fixed_head(other)
    tail, other_tail = _fixed_tail(one), _fixed_tail(other)
    return (head.startswith(other_head) or other_head.startswith(head)) and (
        tail.endswith(other_tail) or other_tail.endswith(tail)
    )


def _fixed_head(glob: str) -> str:
    """What a glob fixes before its first glob character."""
    return glob[: min(glob.find(ch) for ch in GLOB_CHARS if ch in glob)]


def _fixed_tail(glob: str) -> str:
    """What a glob fixes after its last glob character (a ``]`` ends a class)."""
    last = max(glob.rfind(ch) for ch in (*GLOB_CHARS, "]") if ch in glob)
    return glob[last + 1 :]


def may_contain(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether a folder matched by ``inner`` can be ``outer``'s, or lie inside it."""
    return len(inner) >= len(outer) and all(
        _may_match(o, i) for o, i in zip(outer, inner, strict=False)
    )


def folder_problem(path: Path) -> tuple[str, bool] | None:
    """Why ``path`` cannot be (or become) a folder; the flag says it is only this user's access.

    A folder that does not exist yet is fine: it is created when first needed.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return f"{path} cannot be a folder: a part of it is a regular file", False
    except PermissionError as exc:
        return f"{path} cannot be reached by this user ({exc.strerror})", True
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})", False
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is a regular file, not a folder", False
    return None


def program_problem(program: str) -> str | None:
    """Why ``program`` (the first word of a command) cannot be executed, as exec would find it.

    A name with a slash is that file; a bare name is looked up on PATH. A program named by a
    placeholder is only known per dataset, so it is not checked here.
    """
    if "{" in program:
        return None
    if "/" not in program:
        if shutil.which(program) is None:
            search = os.environ.get("PATH", os.defpath)
            return f"{program!r} is not an executable program on PATH ({search})"
        return None
    try:
        info = Path(program).stat()
    except FileNotFoundError:
        return f"{program} does not exist"
    except OSError as exc:
        return f"{program} cannot be reached ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return f"{program} is a folder, not a program"
    if not os.access(program, os.X_OK):
        return f"{program} cannot be executed (no execute permission)"
    return None
