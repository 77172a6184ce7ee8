"""Secrets (API tokens, client secrets): read from a file or a systemd credential, never logged.

A secret never travels on a command line or in the TOML file itself. The config names either a
file (``*_file``) or a systemd credential (``*_credential``, looked up in
``$CREDENTIALS_DIRECTORY``, which ``LoadCredential=`` fills). A file that other users can read
is refused: a token that leaked to every account on the box is a token to rotate.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemon.errors import ConfigError


def secret_path(file: Path | None, credential: str | None) -> Path | None:
    """Where the secret lives: the systemd credential if named, else the file (or None)."""
    if credential:
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise ConfigError(
                [
                    f"credential {credential!r} is named but $CREDENTIALS_DIRECTORY is not set;"
                    " add LoadCredential= to the unit or use a *_file key instead"
                ]
            )
        return Path(folder) / credential
    return file


def secret_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a secret file, or None when it can."""
    found = secret_finding(path)
    return None if found is None else found[0]


def secret_finding(path: Path) -> tuple[str, bool] | None:
    """As ``secret_problem``; the flag says only this user lacks access (not the file's fault)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist; write the secret into it (mode 0600)", False
    except PermissionError as exc:
        return f"{path} cannot be reached by this user ({exc.strerror}); check its folder", True
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror}); check its permissions", False
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file", False
    if info.st_mode & stat.S_IROTH:
        return f"{path} is readable by every user; run `chmod 600 {path}`", False
    if not os.access(path, os.R_OK):
        return f"{path} cannot be read by this user; check its owner and mode", True
    if info.st_size == 0:
        return f"{path} is empty; write the secret into it", False
    return None


def read_secret(path: Path) -> str:
    """The secret held in ``path``, without surrounding whitespace."""
    problem = secret_problem(path)
    if problem is not None:
        raise ConfigError([problem])
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path} cannot be read as UTF-8 text ({exc})"]) from exc
    if not value:
        raise ConfigError([f"{path} holds only whitespace; write the secret into it"])
    return value
