"""The ``harness`` fixture: every registered target type, each through its harness module."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.targets.base import MemoryState
from daemon.targets.registry import TYPES
from tests.conformance.harness import DS, Harness, HarnessFactory, event_loop, run


def factory(type_name: str) -> HarnessFactory:
    """The ``make`` of the harness module named after ``type_name``."""
    module = importlib.import_module(f"tests.conformance.harnesses.{type_name}")
    made: HarnessFactory = module.make
    return made


@pytest.fixture(autouse=True)
def _event_loop() -> Iterator[None]:
    with event_loop():
        yield


@pytest.fixture(params=sorted(TYPES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    with contextlib.ExitStack() as stack:
        made = factory(request.param)(tmp_path, stack, MemoryState())
        run(made.target.ensure_dataset(DS))
        run(made.target.ensure_dataset(DS))  # idempotent
        yield made
        run(made.target.aclose())
