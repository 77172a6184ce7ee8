"""The configuration file without its model: which file, its TOML, its state_dir, and its check.

``dronesync status`` needs only the state_dir, and importing the settings model (pydantic,
every target's table) costs more than everything else the command does. What the model
applies to the state_dir is defined here and used by the model itself: the default, the
folder the file's relative paths start from, the reading of the file with its one-line
errors.

Skipping the model must not skip its verdict: a file the model refuses is refused by
``status`` too. The daemon leaves ``<state_dir>/config.checked`` holding the fingerprint of
the file it validated (its bytes, its folder, the ``DRONESYNC_*`` environment, the version
and the state_dir the model gave); :func:`checked_state_dir` trusts its own reading only when
that record matches, and otherwise says None: the caller then loads the model as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/dronesync/dronesync.toml")
ENV_PREFIX = "DRONESYNC_"
CONFIG_ENV = "DRONESYNC_CONFIG"
CHECKED = "config.checked"
STATE_DIR_KEY = "state_dir"


def config_path(explicit: Path | None) -> Path:
    """The config file to use: ``--config``, else ``$DRONESYNC_CONFIG``, else the system one."""
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def default_state_dir() -> Path:
    """The state_dir when neither the file nor the environment sets one."""
    # Under systemd, StateDirectory= hands us the folder it created with the right owner.
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/dronesync").split(":")[0])


def anchor(path: Path, base: Path) -> Path:
    """``path`` as given when absolute, else taken from ``base`` (the file's own folder)."""
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def read_config(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and its TOML; ConfigError with one line saying what to do."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            [f"{path}: file not found; write one (`dronesync config example`) or pass --config"]
        ) from exc
    except PermissionError as exc:
        raise ConfigError([f"{path}: cannot be read by this user; check its permissions"]) from exc
    except IsADirectoryError as exc:
        raise ConfigError([f"{path}: is a folder; name the TOML file itself"]) from exc
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from exc
    try:
        return data, tomllib.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text; save it as UTF-8"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from exc


def _settings_env() -> dict[str, str]:
    """The environment the model reads (its names are not case-sensitive)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name.upper().startswith(ENV_PREFIX) and name.upper() != CONFIG_ENV
    }


def _given(value: object) -> Path | None:
    # What the model takes without a doubt: text naming something. Anything else (blank,
    # another type) is for the model to judge and word.
    return Path(value) if isinstance(value, str) and value.strip() else None


def state_dir_of(path: Path, raw: dict[str, Any]) -> Path | None:
    """The state_dir the model gives for the file ``path`` holding ``raw``; None when unsure.

    The environment wins over the file, the default comes last, and a relative folder is
    taken from the file's own folder, as the model does.
    """
    names = [name for name in _settings_env() if name.upper().startswith(ENV_PREFIX + "STATE_DIR")]
    keys = [key for key in raw if key.lower() == STATE_DIR_KEY]
    if len(names) > 1 or keys not in ([], [STATE_DIR_KEY]):
        return None  # spellings the model may read in its own way
    if names:
        if names[0].upper() != ENV_PREFIX + "STATE_DIR":
            return None
        given = _given(os.environ[names[0]])
    elif keys:
        given = _given(raw[STATE_DIR_KEY])
    else:
        given = default_state_dir()
    return None if given is None else anchor(given, path.parent.resolve())


def fingerprint(path: Path, data: bytes, state_dir: Path) -> str:
    """What the model's verdict on the file ``path`` holding ``data`` depends on, hashed.

    Environment values are hashed with the rest, so the record holds none of them.
    """
    inputs = {
        "version": __version__,
        "folder": str(path.parent.resolve()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "env": sorted(_settings_env().items()),
        "state_dir": str(state_dir),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def remember(state_dir: Path, checked: str) -> None:
    """Record that the model accepted the file whose fingerprint is ``checked``."""
    tmp = state_dir / f".{CHECKED}.tmp"
    try:
        tmp.write_text(checked, encoding="utf-8")
        tmp.replace(state_dir / CHECKED)
    except OSError:
        # Only a shortcut is lost: `status` then has the model read the file.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def checked_state_dir(path: Path) -> Path | None:
    """The state_dir of ``path`` when the daemon recorded the model's acceptance of it.

    None when the record is missing or is for another file, environment or version; a file
    that cannot be read or is not TOML raises the ConfigError the model's loading raises.
    """
    data, raw = read_config(path)
    state_dir = state_dir_of(path, raw)
    if state_dir is None:
        return None
    try:
        recorded = (state_dir / CHECKED).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return state_dir if recorded == fingerprint(path, data, state_dir) else None
