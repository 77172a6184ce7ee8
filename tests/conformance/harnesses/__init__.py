"""One harness module per target type, named after the type (``TYPE`` in the registry).

Each module has ``make(tmp, stack, state) -> Harness``; ``conftest`` finds them by name, and a
registered type without one fails the suite.
"""
