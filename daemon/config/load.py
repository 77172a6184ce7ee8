"""Reading the file: TOML, then validation, every problem at once, one line each.

Each line names the file (or the environment variable that set the value) and the key, and
says what to do. Relative paths are then taken from the file's own folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from daemon.config.checks import overlap_problems
from daemon.config.model import Settings, toml_data
from daemon.configfile import ENV_PREFIX, anchor, fingerprint, read_config
from daemon.errors import ConfigError
from daemon.targets.registry import TYPES


def _keys(loc: tuple[int | str, ...]) -> list[int | str]:
    keys: list[int | str] = []
    skip_next_tag = False
    for index, item in enumerate(loc):
        if skip_next_tag:
            skip_next_tag = False
            continue
        keys.append(item)
        # targets.NAME is followed by the discriminator tag (the type): not a key.
        if index >= 1 and loc[index - 1] == "targets" and len(loc) > index + 1:
            skip_next_tag = True
    return keys


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in _keys(loc):
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _env_variable(loc: tuple[int | str, ...]) -> str | None:
    """The ``DRONESYNC_*`` variable that set the value at ``loc``, if one did.

    The environment wins over the file: a variable named after the key or a table holding it
    (a JSON value), or one below the key (which replaces what the file has there), is where
    the value came from. Names are not case-sensitive.
    """
    names = {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    words: list[str] = []
    found = None
    for item in _keys(loc):
        if isinstance(item, int):
            break
        words.append(item.upper())
        found = names.get(ENV_PREFIX + "__".join(words), found)
    if found is None and words:
        below = sorted(n for n in names if n.startswith(ENV_PREFIX + "__".join(words) + "__"))
        found = names[below[0]] if below else None
    return found


def _problem_line(path: Path, error: Any) -> str:
    variable = _env_variable(error["loc"])
    if variable is not None:
        return (
            f"environment variable {variable}: {_loc(error['loc'])}: {_describe(error)};"
            " fix or unset the variable"
        )
    return f"{path}: {_loc(error['loc'])}: {_describe(error)}"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key; check its spelling against `dronesync config example`"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", error["input"])
        return f"unknown target type {tag!r}; use one of {', '.join(map(repr, TYPES))}"
    if kind == "union_tag_not_found":
        return f"missing `type`; use one of {', '.join(map(repr, TYPES))}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind not in {"value_error"} and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return message


def _reference_problems(file: Path, raw: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    targets = raw.get("targets")
    names = set(targets) if isinstance(targets, dict) else set()
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        problems.append(f"{file}: sources: no [[sources]] table; add one naming a folder to watch")
        return problems
    spool = raw.get("spool")
    spool_dir = spool.get("dir") if isinstance(spool, dict) else None
    for index, source in enumerate(sources):
        if not isinstance(source, dict):
            continue
        if source.get("spool") is True and not spool_dir:
            problems.append(
                f"{file}: sources[{index}].spool: no [spool] dir is set; add [spool] with"
                " dir = a folder on local disk"
            )
        target = source.get("target")
        if isinstance(target, str) and target not in names:
            known = ", ".join(sorted(names)) or "none defined"
            problems.append(
                f"{file}: sources[{index}].target: no target named {target!r}"
                f" (targets: {known}); add [targets.{target}] or fix the name"
            )
    return problems


def load_config(path: Path) -> Settings:
    """Read and validate ``path``; raise ConfigError listing every problem in it."""
    return load_checked(path)[0]


def load_checked(path: Path) -> tuple[Settings, str]:
    """``load_config``, and the fingerprint of what it accepted (``daemon.configfile``)."""
    data, raw = read_config(path)
    problems: list[str] = []
    settings: Settings | None = None
    token = toml_data.set(raw)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems.extend(_problem_line(path, e) for e in exc.errors())
    except SettingsError as exc:
        # A value that is not JSON where a table or list is expected (DRONESYNC_UPLOAD={...).
        field = re.search(r'field "([^"]+)"', str(exc))
        key = field.group(1) if field else ""
        variable = _env_variable((key,)) or f"{ENV_PREFIX}{key.upper()}"
        problems.append(
            f"environment variable {variable}: {key}: not valid JSON for this table or list;"
            " fix or unset the variable"
        )
    finally:
        toml_data.reset(token)
    problems.extend(_reference_problems(path, raw))
    if problems or settings is None:
        raise ConfigError(problems)
    settings = _relative_to(settings, path.parent.resolve())
    problems = overlap_problems(path, settings)
    if problems:
        raise ConfigError(problems)
    return settings, fingerprint(path, data, settings.state_dir)


def _relative_to(settings: Settings, base: Path) -> Settings:
    """Relative paths in a file are taken relative to the file's own folder."""
    targets = {name: target.anchored(base) for name, target in settings.targets.items()}
    sources = [s.model_copy(update={"path": anchor(s.path, base)}) for s in settings.sources]
    spool = settings.spool
    if spool.dir is not None:
        spool = spool.model_copy(update={"dir": anchor(spool.dir, base)})
    notifications = settings.notifications
    email = notifications.email
    if email is not None:
        paths = {
            key: anchor(value, base)
            for key in ("ca_file", "password_file")
            if (value := getattr(email, key)) is not None
        }
        notifications = notifications.model_copy(update={"email": email.model_copy(update=paths)})
    web = settings.web
    if web.password_file is not None:
        web = web.model_copy(update={"password_file": anchor(web.password_file, base)})
    return settings.model_copy(
        update={
            "notifications": notifications,
            "spool": spool,
            "web": web,
            "state_dir": anchor(settings.state_dir, base),
            "targets": targets,
            "sources": sources,
        }
    )
