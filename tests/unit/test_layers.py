"""The layer order of the daemon package, read from the import statements of daemon/**/*.py.

``LAYERS`` lists the layers from the top down. A module may import its own entry (its package,
or itself) and anything in the layers below; never a layer above, and never another entry of
its own line (entries on one line are independent of each other). An entry names a module or
a package with everything in it; a module belongs to its longest matching entry. To move a
module, move its entry; a new module needs an entry (the test says which). Every import
counts: at the top, inside functions and under ``TYPE_CHECKING``.

``FORBIDDEN`` repeats the rules that must survive any reordering of ``LAYERS``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from daemon.targets.registry import TYPES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "daemon"

LAYERS = (
    # The command line and the service it runs.
    "daemon.__main__",
    "daemon.cli",
    "daemon.service",
    # What a session runs beside the pipeline: operator requests, live figures.
    "daemon.live | daemon.requests | daemon.web",
    "daemon.pipeline",
    # Around the pipeline: what the operator reads and sends, what the service reports.
    "daemon.notifications",
    "daemon.mail",
    "daemon.status",
    "daemon.control | daemon.events",
    # The pipeline's stages: cards and folders in, uploads out, processing started.
    "daemon.sources | daemon.upload | daemon.processing",
    "daemon.journal | daemon.hashworker | daemon.config",
    # Targets know their own tables; the configuration lists them through the registry.
    "daemon.targets",
    "daemon.hashing | daemon.secrets | daemon.configmodel | daemon.configfile",
    "daemon.errors | daemon.clock | daemon.durable | daemon.logs | daemon.notify",
    # The package's own __init__ (its version): only itself, not the modules in it.
    "daemon",
)

FORBIDDEN = (
    ("daemon.targets", "daemon.sources", "a target does not know where files come from"),
    ("daemon.targets", "daemon.upload", "the engine drives targets, not the other way"),
    ("daemon.targets", "daemon.service", "targets are built by the service, never call it"),
    ("daemon.targets", "daemon.journal", "a target keeps state through TargetState only"),
    ("daemon.journal", "daemon.targets", "the journal records target names, not targets"),
)


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package, and where it is."""

    importer: str
    imported: str
    path: str
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of a module of the package in ``path``, relative ones resolved."""
    found = []
    rel = str(path.relative_to(ROOT))
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: None if is_package else -1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            # ``from daemon import control`` imports the module daemon.control.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append(Import(module, target, rel, node.lineno))
    return found


def all_imports() -> list[Import]:
    modules = package_modules()
    known = set(modules)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, known)]


def layer_table() -> dict[str, int]:
    """Entry -> its layer's index, 0 at the top."""
    table = {}
    for index, line in enumerate(LAYERS):
        for entry in line.split("|"):
            assert entry.strip() not in table, f"{entry.strip()} is in LAYERS twice"
            table[entry.strip()] = index
    return table


def entry_of(module: str, table: dict[str, int]) -> str | None:
    """The longest entry naming ``module`` or a package holding it; the root only itself."""
    matches = [e for e in table if module == e or (e != PACKAGE and module.startswith(e + "."))]
    return max(matches, key=len) if matches else None


def layer_problems(imports: list[Import], table: dict[str, int]) -> list[str]:
    problems = []
    for imp in imports:
        mine, theirs = entry_of(imp.importer, table), entry_of(imp.imported, table)
        if mine is None or theirs is None or mine == theirs:
            continue  # a module without an entry is reported by its own test
        if table[theirs] < table[mine]:
            problems.append(
                f"{imp.where()}: upward, {theirs} is in a layer above {mine}"
                f" ({LAYERS[table[theirs]]!r} above {LAYERS[table[mine]]!r})"
            )
        elif table[theirs] == table[mine]:
            problems.append(
                f"{imp.where()}: sideways, {mine} and {theirs} share the layer"
                f" {LAYERS[table[mine]]!r}, whose entries are independent"
            )
    return problems


def forbidden_problems(imports: list[Import]) -> list[str]:
    def within(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    return [
        f"{imp.where()}: forbidden, {why}"
        for imp in imports
        for importer, imported, why in FORBIDDEN
        if within(imp.importer, importer) and within(imp.imported, imported)
    ]


def report(problems: list[str]) -> str:
    head = "import rules broken (LAYERS and FORBIDDEN in tests/unit/test_layers.py):"
    return "\n".join([head, *problems])


def test_every_module_has_a_layer() -> None:
    table = layer_table()
    missing = [m for m in package_modules() if entry_of(m, table) is None]
    assert not missing, f"modules in no entry of LAYERS (tests/unit/test_layers.py): {missing}"


def test_every_entry_names_a_module() -> None:
    modules = package_modules()
    stale = [e for e in layer_table() if e not in modules]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_module_imports_upward_or_sideways() -> None:
    problems = layer_problems(all_imports(), layer_table())
    assert not problems, report(problems)


def test_no_forbidden_import() -> None:
    problems = forbidden_problems(all_imports())
    assert not problems, report(problems)


def test_the_package_imports_are_read() -> None:
    """The reader finds the imports the rules are about (a parser that saw nothing passes)."""
    imports = {(imp.importer, imp.imported) for imp in all_imports()}
    assert ("daemon.cli", "daemon.control") in imports  # from daemon import control
    assert ("daemon.service", "daemon.targets.registry") in imports
    assert ("daemon.journal", "daemon.journal.db") in imports


def test_a_broken_rule_names_the_import() -> None:
    table = layer_table()
    up = Import("daemon.targets.base", "daemon.journal.db", "daemon/targets/base.py", 7)
    side = Import("daemon.sources.hasher", "daemon.upload.engine", "daemon/sources/hasher.py", 9)
    problems = layer_problems([up, side], table)
    assert problems[0].startswith(
        "daemon/targets/base.py:7: daemon.targets.base imports daemon.journal.db: upward"
    )
    assert problems[1].startswith(
        "daemon/sources/hasher.py:9: daemon.sources.hasher imports daemon.upload.engine: sideways"
    )
    assert forbidden_problems([up]) == [
        "daemon/targets/base.py:7: daemon.targets.base imports daemon.journal.db: forbidden,"
        " a target keeps state through TargetState only"
    ]


def concrete_target_problems() -> list[str]:
    """Outside ``daemon/targets/``: imports of a target's own modules, and its type's name.

    The rest of the daemon reaches targets through the protocol (``targets.base``) and the
    registry only, so a new target is one module and its line in the registry.
    """
    shared = {"daemon.targets", "daemon.targets.base", "daemon.targets.registry"}
    problems = [
        f"{imp.where()}: a concrete target's module"
        for imp in all_imports()
        if not imp.importer.startswith("daemon.targets")
        and imp.imported.startswith("daemon.targets")
        and imp.imported not in shared
    ]
    names = set(TYPES)
    for module, path in package_modules().items():
        if module.startswith("daemon.targets"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        problems += [
            f"{path.relative_to(ROOT)}:{node.lineno}: names the target type {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
        ]
    return problems


def test_nothing_outside_targets_names_a_concrete_target() -> None:
    problems = concrete_target_problems()
    assert not problems, "\n".join(problems)
