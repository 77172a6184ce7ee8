"""Where the project is, its virtual environment, and the environment of child processes.

Standard library only: a launcher imports this before the project's packages are importable.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
# Beyond the standard library: the daemon's packages, and the test dependencies the local
# servers and the soak's harness run on.
NEEDED = ("structlog", "pytest", "moto")


def enter_venv(script: str) -> None:
    """Re-run ``script`` in the project's venv unless its packages import here.

    Then put the project's root first on ``sys.path``: ``daemon`` and ``tests`` come from it.
    """
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        if Path(sys.prefix).resolve() == VENV.resolve() or not PYTHON.exists():
            sys.exit(f"{script}: {', '.join(missing)} missing; `scripts/test` once creates .venv")
        os.execv(PYTHON, [str(PYTHON), script, *sys.argv[1:]])  # noqa: S606 - our own venv
    sys.path.insert(0, str(ROOT))


def child_env(*drop: str) -> dict[str, str]:
    """The environment of a child running the project's code: this process's, adjusted.

    ``PYTHONPATH`` is the project's root; allocator tuning (``MALLOC_*``) meant for the client
    measured does not reach the child, nor variables starting with any of ``drop``.
    """
    skip = ("MALLOC_", *drop)
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env["PYTHONPATH"] = str(ROOT)
    return env
