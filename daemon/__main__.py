"""``python -m daemon`` is the same as the ``dronesync`` command."""

from daemon.cli import main

raise SystemExit(main())
