"""Argument parsing pieces the scripts share."""

from __future__ import annotations


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring: a parser's description."""
    return (doc or "").split("\n\n")[0]


def csv(value: str) -> list[str]:
    """``a,b, c`` -> ``["a", "b", "c"]``; empty items dropped."""
    return [v.strip() for v in value.split(",") if v.strip()]


def floats(value: str) -> list[float]:
    """``1,3`` -> ``[1.0, 3.0]``."""
    return [float(v) for v in csv(value)]
