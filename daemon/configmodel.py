"""The building blocks of configuration models, shared by ``config`` and every target's own.

A target type declares its ``[targets.NAME]`` table beside its code (``daemon.targets``); these
are the base model and the validators every table uses, so a new target's table reads and
fails like the others.
"""

from __future__ import annotations

import re
import string
from typing import Any

from pydantic import BaseModel, ConfigDict

DAY_S = 86_400.0


class Model(BaseModel):
    """A table of the file: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_placeholders(template: str, allowed: set[str]) -> str:
    """``template`` when it only uses the ``{names}`` in ``allowed``; else a ValueError."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{exc}; write a literal brace as {{{{ or }}}}") from exc
    unknown = names - allowed
    if unknown:
        bad = ", ".join(sorted("{" + n + "}" for n in unknown))
        known = ", ".join(sorted("{" + n + "}" for n in allowed))
        raise ValueError(f"unknown placeholder {bad}; use {known}")
    return template


def not_blank(value: Any) -> Any:
    """A path given as text must name something (a ``mode="before"`` validator)."""
    # An empty string would become Path("."): the config file's own folder, silently.
    if isinstance(value, str) and not value.strip():
        raise ValueError("empty path; name a folder")
    return value


def url_ok(value: str) -> str:
    """An http(s) URL without query or fragment, without its trailing slash."""
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def credential_ok(value: str | None) -> str | None:
    """A systemd credential name, as ``LoadCredential=NAME:PATH`` takes it."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]+", value):
        raise ValueError("a credential name as in LoadCredential=NAME:PATH (letters, digits, ._-@)")
    return value
