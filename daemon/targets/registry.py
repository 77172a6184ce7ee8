"""The registry: every target type, each with its table (config model) and its factory.

An explicit list rather than plug-ins found by import: adding a target is its module here and
its fixture in ``tests/conformance``. Importing this module imports each type's table only;
an implementation (and what it needs: boto3, say) is imported when a target of its type is
built. The first type is the embedded default, the one the example configuration uses.
A type's optional ``fleet`` lists a shared store's datasets through ``read_fleet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.secrets import read_secret, secret_path
from daemon.targets import directory, memory, nodeodm, pix4dcloud, s3, webodm
from daemon.targets.base import FleetRow, Target, TargetConfig, TargetEnv, TargetState, TargetType

TYPES: dict[str, TargetType[Any]] = {
    entry.name: entry
    for entry in (
        directory.TYPE,
        nodeodm.TYPE,
        webodm.TYPE,
        pix4dcloud.TYPE,
        s3.TYPE,
        memory.TYPE,
    )
}


def config_models() -> tuple[type[TargetConfig], ...]:
    """Every type's table, in registry order."""
    return tuple(entry.config for entry in TYPES.values())


def _secret(config: TargetConfig) -> str | None:
    """The secret the table names, read (None when it names none)."""
    ref = config.secret()
    where = None if ref is None else secret_path(ref.file, ref.credential)
    return None if where is None else read_secret(where)


def build_target(name: str, config: TargetConfig, state_dir: Path, state: TargetState) -> Target:
    """The target for one ``[targets.NAME]`` table, with its secret read."""
    return TYPES[config.type].build(name, config, TargetEnv(state, state_dir, _secret(config)))


def fleet_types() -> list[str]:
    """The types whose store can list every box's datasets (``dronesync fleet``)."""
    return [entry.name for entry in TYPES.values() if entry.fleet is not None]


def lists_fleet(config: TargetConfig) -> bool:
    """Whether the table's type can list every box's datasets."""
    return TYPES[config.type].fleet is not None


def read_fleet(config: TargetConfig) -> list[FleetRow]:
    """Every box's datasets in the store the table names, with its secret read."""
    reader = TYPES[config.type].fleet
    if reader is None:
        raise ValueError(f"targets of type {config.type!r} keep no record of a fleet")
    return reader(config, _secret(config))
