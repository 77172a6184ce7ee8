"""Checks of a configuration against the machine: folders that overlap, programs that cannot run.

These catch what validation of each key alone cannot, and what would otherwise break only at
run time: a target folder inside a watched source (what is written there comes back as a new
dataset), two sources taking the same files, a path that is a regular file, a program missing.
The primitives return the reason as text, or None; the checks of a whole configuration
return lines naming the file and the key.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import ConfigError
from daemon.secrets import secret_finding, secret_path
from daemon.targets.base import SecretRef

if TYPE_CHECKING:
    from daemon.config.model import Settings

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


def written_folders(settings: Settings) -> list[tuple[str, Path]]:
    """The folders the daemon writes into, each with its key: directory targets, the spool."""
    folders = [
        (f"targets.{name}.path", folder)
        for name, target in settings.targets.items()
        if (folder := target.written_folder()) is not None
    ]
    if settings.spool.dir is not None:
        folders.append(("spool.dir", settings.spool.dir))
    return folders


def overlap_problems(file: Path, settings: Settings) -> list[str]:
    """Sources that take the same files, and folders written by dronesync inside a source."""
    sources = [
        (f"sources[{i}].path", s.path, path_parts(s.path)) for i, s in enumerate(settings.sources)
    ]
    problems: list[str] = []
    for j, (key, path, parts) in enumerate(sources):
        for other_key, other, other_parts in sources[:j]:
            if parts == other_parts:
                problems.append(
                    f"{file}: {key}: {path} is already watched by {other_key}; a folder is"
                    " watched by one source only: remove one of the two [[sources]]"
                )
            elif may_contain(other_parts, parts) or may_contain(parts, other_parts):
                where = "inside" if may_contain(other_parts, parts) else "around"
                problems.append(
                    f"{file}: {key}: {path} is {where} {other_key} ({other}): the files there"
                    " would be taken twice; make the two sources separate folders"
                )
    for key, path in written_folders(settings):
        parts = path_parts(path)
        for source_key, source, source_parts in sources:
            if may_contain(source_parts, parts):
                problems.append(
                    f"{file}: {key}: {path} is inside the watched {source_key} ({source}):"
                    " what dronesync writes there would come back as a new dataset; move it"
                    " out of every source"
                )
            elif may_contain(parts, source_parts):
                problems.append(
                    f"{file}: {source_key}: {source} is inside {key} ({path}), which dronesync"
                    " writes: it would come back as a new dataset; watch a folder outside it"
                )
    return problems


def runtime_problems(path: Path, settings: Settings) -> list[str]:
    """Problems only visible on this machine, all of them fatal to the daemon."""
    errors, access = runtime_findings(path, settings)
    return errors + access


def runtime_findings(path: Path, settings: Settings) -> tuple[list[str], list[str]]:
    """Problems on this machine, split: errors, and what only this user may not access.

    ``config check`` run by an operator instead of the service's user warns on the second
    kind (a state_dir or a secret of the service's user); the daemon fails on both.
    """
    errors: list[str] = []
    access: list[str] = []
    state = settings.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError as exc:
        access.append(
            f"{path}: state_dir: {state} cannot be written by this user ({exc.strerror});"
            " the service's user must be able to: create it for that user or point state_dir"
            " elsewhere"
        )
    except OSError as exc:
        errors.append(
            f"{path}: state_dir: {state} cannot be written ({exc.strerror}); create it for this"
            " user or point state_dir elsewhere"
        )
    for key, folder in written_folders(settings):
        found = folder_problem(folder)
        if found is not None:
            text, only_access = found
            line = f"{path}: {key}: {text}; point {key.rsplit('.', 1)[-1]} at a folder"
            (access if only_access else errors).append(line)
    errors.extend(_program_problems(path, settings))
    ca_problem = _ca_file_problem(path, settings)
    if ca_problem is not None:
        errors.append(ca_problem)
    secret_errors, secret_access = _secret_problems(path, settings)
    web_errors, web_access = _web_problems(path, settings)
    return errors + secret_errors + web_errors, access + secret_access + web_access


def _program_problems(path: Path, settings: Settings) -> list[str]:
    commands = [
        (f"targets.{name}.{key}", command)
        for name, target in settings.targets.items()
        for key, command in target.programs().items()
    ]
    commands.append(("notifications.command", settings.notifications.command))
    problems: list[str] = []
    for key, command in commands:
        problem = program_problem(command[0]) if command else None
        if problem is not None:
            problems.append(
                f"{path}: {key}: {problem}; install it, or name the program by its full path"
            )
    return problems


def _secrets(settings: Settings) -> list[tuple[str, SecretRef]]:
    """Every secret the configuration names, with the table that names it."""
    refs = [
        (f"targets.{name}", ref)
        for name, target in settings.targets.items()
        if (ref := target.secret()) is not None
    ]
    email = settings.notifications.email
    if email is not None and email.user is not None:
        ref = SecretRef("password", email.password_file, email.password_credential, True)
        refs.append(("notifications.email", ref))
    return refs


def _secret_problems(path: Path, settings: Settings) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    access: list[str] = []
    for table, ref in _secrets(settings):
        stem, file, credential = ref.stem, ref.file, ref.credential
        if ref.required and file is None and credential is None:
            words = stem.replace("_", " ")
            problems.append(
                f"{path}: {table}.{stem}_file: required; name the file that"
                f" holds the {words} (or {stem}_credential)"
            )
            continue
        key = f"{stem}_credential" if credential else f"{stem}_file"
        try:
            secret = secret_path(file, credential)
        except ConfigError as exc:
            problems.extend(f"{path}: {table}.{key}: {p}" for p in exc.problems)
            continue
        found = None if secret is None else secret_finding(secret)
        if found is not None:
            text, only_access = found
            (access if only_access else problems).append(f"{path}: {table}.{key}: {text}")
    return problems, access


def _ca_file_problem(path: Path, settings: Settings) -> str | None:
    """A CA file for the mail relay that cannot be read (it is public: any mode will do)."""
    email = settings.notifications.email
    if email is None or email.ca_file is None:
        return None
    try:
        with email.ca_file.open("rb"):
            pass
    except OSError as exc:
        return (
            f"{path}: notifications.email.ca_file: {email.ca_file} cannot be read"
            f" ({exc.strerror or exc}); name a PEM file of certificates"
        )
    return None


def _web_problems(path: Path, settings: Settings) -> tuple[list[str], list[str]]:
    """The status page off loopback needs a password, and its password a readable secret."""
    web = settings.web
    if web.password_file is None and web.password_credential is None:
        if web.on_loopback:
            return [], []
        return [
            f"{path}: web.listen: {web.listen} is reachable from other machines, and the page"
            " can retry, process and cancel: set web.password_file (a file, mode 0600) or"
            " web.password_credential, or listen on 127.0.0.1 and use an SSH tunnel"
        ], []
    key = "web.password_credential" if web.password_credential else "web.password_file"
    try:
        secret = secret_path(web.password_file, web.password_credential)
    except ConfigError as exc:
        return [f"{path}: {key}: {p}" for p in exc.problems], []
    found = None if secret is None else secret_finding(secret)
    if found is None:
        return [], []
    text, only_access = found
    return ([], [f"{path}: {key}: {text}"]) if only_access else ([f"{path}: {key}: {text}"], [])


def runtime_warnings(settings: Settings) -> list[str]:
    """Things worth saying that are not errors: a source or target folder absent right now."""
    notes: list[str] = []
    for index, source in enumerate(settings.sources):
        if not any(ch in str(source.path) for ch in "*?[") and not source.path.is_dir():
            notes.append(
                f"sources[{index}].path: {source.path} does not exist yet; it is watched for"
            )
    for name, target in settings.targets.items():
        folder = target.written_folder()
        if folder is not None and not folder.exists():
            notes.append(
                f"targets.{name}.path: {folder} does not exist yet; it is created on first upload"
            )
    return notes
