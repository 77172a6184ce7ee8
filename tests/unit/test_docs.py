"""The docs say what the code does: every key, every module, every command and every link.

Each test reads a page the way a newcomer would use it and fails naming what is missing, so
that a new key, module or sub-command cannot land without its line in the docs.
"""

from __future__ import annotations

import argparse
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from daemon import cli
from daemon.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PACKAGE = ROOT / "daemon"

HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
KEY_ROW = re.compile(r"^\|\s*`([a-z_][a-z0-9_]*)`\s*\|\s*([^|]*?)\s*\|")


def _sections(text: str) -> dict[str, list[str]]:
    """Each heading's text, and the lines under it up to the next heading."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = sections.setdefault("", [])
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else HEADING.match(line)
        if match:
            lines = sections.setdefault(match.group(2).strip(), [])
        else:
            lines.append(line)
    return sections


# --- configuration.md against the settings model ---------------------------------------------


def _models(annotation: Any) -> tuple[list[type[BaseModel]], str | None]:
    """The models an annotation holds (through Annotated, unions, list, dict), and the union's
    discriminator when it names one."""
    if typing.get_origin(annotation) is Annotated:
        inner, *metadata = typing.get_args(annotation)
        found, discriminator = _models(inner)
        for item in metadata:
            if isinstance(item, FieldInfo) and isinstance(item.discriminator, str):
                discriminator = item.discriminator
        return found, discriminator
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], None
    models: list[type[BaseModel]] = []
    discriminator = None
    for arg in typing.get_args(annotation):
        found, named = _models(arg)
        models += found
        discriminator = discriminator or named
    return models, discriminator


def _tables(
    model: type[BaseModel], marker: str, prefix: str
) -> Iterator[tuple[str, type[BaseModel], str]]:
    """Every model reachable from ``model``, with the heading text that documents it and the
    dotted prefix of its keys (``targets.NAME.``, ``sources[].``)."""
    yield marker, model, prefix
    for name, field in model.model_fields.items():
        models, discriminator = _models(field.annotation)
        if not models:
            continue
        origin = typing.get_origin(field.annotation)
        if origin is dict:
            table, child = f"[{prefix}{name}.NAME]", f"{prefix}{name}.NAME."
        elif origin is list:
            table, child = f"[[{prefix}{name}]]", f"{prefix}{name}[]."
        else:
            table, child = f"[{prefix}{name}]", f"{prefix}{name}."
        if len(models) == 1:
            yield from _tables(models[0], f"`{table}`", child)
            continue
        key = discriminator or "type"
        for member in models:
            values = typing.get_args(member.model_fields[key].annotation)
            assert len(values) == 1, f"{member.__name__}.{key} is not one Literal value"
            yield from _tables(member, f'`{key} = "{values[0]}"`', child)


def _default_problem(field: FieldInfo, cell: str) -> str | None:
    """Why the default column does not say the model's default, or None."""
    if field.is_required():
        return None if cell == "required" else f"is required, the page says {cell!r}"
    if cell == "required":
        return "has a default, the page says required"
    default = field.get_default(call_default_factory=True)
    if cell == "unset":
        return None if default is None else f"defaults to {default!r}, the page says unset"
    try:
        written = tomllib.loads("v = " + cell.replace("`", ""))["v"]
    except tomllib.TOMLDecodeError:
        # A default computed when the file is read (state_dir) is described in words.
        return None if field.default_factory is not None else f"default {cell!r} is not TOML"
    expected = str(default) if isinstance(default, Path) else default
    return None if written == expected else f"defaults to {expected!r}, the page says {cell!r}"


def test_configuration_md_documents_every_key_with_its_default() -> None:
    sections = _sections((DOCS / "configuration.md").read_text(encoding="utf-8"))
    problems: list[str] = []
    for marker, model, prefix in _tables(Settings, "Top level", ""):
        headings = [heading for heading in sections if marker in heading]
        if len(headings) != 1:
            problems.append(f"{marker}: {len(headings)} headings name it, one should")
            continue
        rows = {
            match.group(1): match.group(2)
            for line in sections[headings[0]]
            if (match := KEY_ROW.match(line))
        }
        # A key the file spells differently from Python (`from`) is written as its alias.
        keys = {field.alias or name: field for name, field in model.model_fields.items()}
        for name, field in keys.items():
            if _models(field.annotation)[0]:
                continue  # a table of its own, checked under its own heading
            if name not in rows:
                problems.append(f"{prefix}{name}: missing under {headings[0]!r}")
            elif problem := _default_problem(field, rows[name]):
                problems.append(f"{prefix}{name}: {problem}")
        problems += [
            f"{prefix}{name}: documented under {headings[0]!r}, not in the model"
            for name in rows.keys() - keys.keys()
        ]
    assert not problems, "docs/configuration.md:\n" + "\n".join(problems)


# --- architecture.md against the package ------------------------------------------------------


def test_architecture_md_names_every_module_and_only_modules_that_exist() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(daemon/[\w/.]*)`", text))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        # A package is named by its folder: its __init__ is what the folder imports as.
        names = {relative, relative.removesuffix("__init__.py")}
        if not names & named:
            missing.append(relative)
    stale = sorted(name for name in named if not (ROOT / name).exists())
    assert not missing, f"modules not named in docs/architecture.md: {missing}"
    assert not stale, f"docs/architecture.md names what does not exist: {stale}"


# --- the README against the command line -----------------------------------------------------


def _commands(parser: argparse.ArgumentParser, words: str) -> Iterator[tuple[str, list[str]]]:
    """Each sub-command as typed (``dronesync config check``) and its long options."""
    # argparse keeps its sub-parsers in private attributes only.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options = [
                    option
                    for sub_action in sub._actions
                    for option in sub_action.option_strings
                    if option.startswith("--") and option != "--help"
                ]
                yield f"{words} {name}", options
                yield from _commands(sub, f"{words} {name}")


def test_readme_names_every_command_and_the_docs_every_option() -> None:
    readme = README.read_text(encoding="utf-8")
    operations = (DOCS / "operations.md").read_text(encoding="utf-8")
    problems = []
    for command, options in _commands(cli._parser(), "dronesync"):
        if f"`{command}" not in readme:
            problems.append(f"README.md does not show `{command}`")
        problems += [
            f"{command} {option}: in neither README.md nor docs/operations.md"
            for option in options
            if option not in readme and option not in operations
        ]
    assert not problems, "\n".join(problems)


# --- links and length ------------------------------------------------------------------------


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


PAGES = [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_lead_to_a_file_and_heading_that_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md":
            anchors = {_anchor(h) for h in _sections(path.read_text(encoding="utf-8"))}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize(
    ("page", "most"), [(README, 220), (DOCS / "performance.md", 360)], ids=["README", "performance"]
)
def test_the_pages_read_whole_stay_short(page: Path, most: int) -> None:
    # The README is a newcomer's path and performance.md a report: reference and history go
    # to docs/ and to git.
    lines = len(page.read_text(encoding="utf-8").splitlines())
    assert lines <= most, f"{page.relative_to(ROOT)}: {lines} lines, at most {most}"
