"""The ``dronesync`` command line (also ``python -m daemon``).

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 78 configuration error (EX_CONFIG), 141
when the reader of the output went away (``dronesync status | head``), as for a tool ended by
SIGPIPE. Expected errors end with one clear message and no traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import __version__
from daemon.configfile import checked_state_dir, config_path
from daemon.errors import EXIT_OK, ConfigError, DronesyncError, TargetError, UsageError

if TYPE_CHECKING:
    from daemon.config import Settings
    from daemon.journal import Journal

# Each command imports what it uses, when it runs: `status` reads the journal and a few
# files, and the settings model and the daemon's parts would take longer to import.

ANSWER_TIMEOUT_S = 2.5
GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest objects (700)
SWITCH_INTERVAL_S = 0.001  # how long a thread waits for the GIL before asking for it (0.005)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell shows for `yes | head`


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="configuration file (default: $DRONESYNC_CONFIG, else /etc/dronesync/dronesync.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="dronesync",
        description="Ingest drone images from cards and folders, upload them, start processing.",
    )
    parser.add_argument("--version", action="version", version=f"dronesync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    status = sub.add_parser("status", parents=[common], help="datasets and their files")
    status.add_argument("dataset", nargs="?", help="only this dataset")
    status.add_argument("--files", action="store_true", help="list every file")
    status.add_argument(
        "--all", action="store_true", help="every dataset, also those done over a day ago"
    )
    output = status.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    retry = sub.add_parser("retry", parents=[common], help="failed files back to waiting")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("dataset", nargs="?", help="dataset whose failed files to retry")
    which.add_argument("--all", action="store_true", help="every dataset")
    process = sub.add_parser("process", parents=[common], help="start processing now")
    process.add_argument("dataset")
    cancel = sub.add_parser("cancel", parents=[common], help="stop uploading a dataset")
    cancel.add_argument("dataset")
    fleet = sub.add_parser(
        "fleet", parents=[common], help="every box's datasets in the store a fleet shares"
    )
    fleet.add_argument(
        "--target", metavar="NAME", help="the target whose store to read (when several can)"
    )
    fleet.add_argument("--json", action="store_true", help="machine-readable output")
    config = sub.add_parser("config", help="check or print the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser("check", parents=[common], help="validate the configuration")
    config_sub.add_parser("example", help="print an annotated example configuration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dronesync`` command."""
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it cannot be caught
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as exc:
        for line in exc.problems:
            print(f"dronesync: {line}", file=sys.stderr)
        return exc.exit_code
    except DronesyncError as exc:
        print(f"dronesync: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


def _reader_gone() -> int:
    """The output's reader closed it (``| head``): end quietly, as tools ended by SIGPIPE do."""
    # What is still buffered goes nowhere instead of failing again when Python exits.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _settings(args: argparse.Namespace) -> tuple[Path, Settings]:
    from daemon.config import load_config  # noqa: PLC0415 (keep `status` light)

    path = config_path(args.config)
    return path, load_config(path)


def _state_dir(args: argparse.Namespace) -> Path:
    """The configuration's state_dir: without the settings model when the daemon checked it."""
    state_dir = checked_state_dir(config_path(args.config))
    if state_dir is None:
        return _settings(args)[1].state_dir
    return state_dir


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        if args.config_command == "example":
            from daemon.config.example import example  # noqa: PLC0415 (keep `status` light)

            sys.stdout.write(example())
            return EXIT_OK
        return _check(args)
    if args.command == "run":
        return _run(config_path(args.config))
    if args.command == "status":
        return _status(_state_dir(args), args)
    if args.command == "fleet":
        return _fleet(_settings(args)[1], args)
    return _request(_state_dir(args), args)


def _check(args: argparse.Namespace) -> int:
    from daemon.config import runtime_findings, runtime_warnings  # noqa: PLC0415

    path, settings = _settings(args)
    problems, access = runtime_findings(path, settings)
    if problems:
        raise ConfigError(problems)
    # The service's user may have the access this user lacks: said, not fatal here.
    for line in access:
        print(f"dronesync: warning: {line}", file=sys.stderr)
    for note in runtime_warnings(settings):
        print(f"note: {note}")
    print(f"{path}: ok ({len(settings.sources)} sources, {len(settings.targets)} targets)")
    return EXIT_OK


def _run(path: Path) -> int:
    import asyncio  # noqa: PLC0415 (keep `status` light)

    from daemon import logs  # noqa: PLC0415
    from daemon.config import load_checked, runtime_problems  # noqa: PLC0415
    from daemon.service import Daemon  # noqa: PLC0415

    settings, checked = load_checked(path)
    problems = runtime_problems(path, settings)
    if problems:
        raise ConfigError(problems)
    logs.configure(settings.log_level, final=True)
    tune_process()
    return asyncio.run(Daemon(path, settings, checked=checked).run())


def tune_process() -> None:
    """The collector's and the GIL's settings of a running daemon, once it is set up."""
    # Every object alive now (modules, classes, the configuration) lives as long as the
    # process: freezing them keeps the cyclic collector's full passes off them, which took
    # a seventh of the daemon's CPU on a card of small files. The larger first generation
    # runs the collector less often; the event loop's garbage is young and mostly acyclic.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    # The hashing and upload threads hold the GIL only between system calls; each time one
    # comes back from a read or a write while the event loop runs Python, it waits for the
    # loop to let go, by default up to 5 ms. 1 ms keeps them reading on a card of small files.
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _journal(state_dir: Path) -> Journal:
    from daemon.journal import JOURNAL_NAME, Journal  # noqa: PLC0415 (keep `status` light)

    path = state_dir / JOURNAL_NAME
    if not path.exists():
        raise UsageError(f"{path}: no journal yet; start the daemon (`dronesync run`) to create it")
    return Journal.open(path, readonly=True)


def _status(state_dir: Path, args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from daemon import control  # noqa: PLC0415 (keep `status` light)
    from daemon.status import read_live, render, snapshot, watch  # noqa: PLC0415

    journal = _journal(state_dir)

    def document(now: float) -> dict[str, Any]:
        return snapshot(
            journal,
            read_live(state_dir, now),
            dataset=args.dataset,
            files=args.files,
            requests=control.queued(state_dir),
            now=now,
            every=args.all,
        )

    terminal = sys.stdout.isatty()

    def frame() -> str:
        now = time.time()
        return render(document(now), bars=terminal, now=now, show_all=args.all)

    try:
        if args.dataset and journal.dataset_by_name(args.dataset) is None:
            raise UsageError(f"no dataset named {args.dataset!r}; see `dronesync status`")
        if args.watch:
            return watch(frame, sys.stdout, time.sleep, terminal=terminal)
        if args.json:
            json.dump(document(time.time()), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(frame())
    finally:
        journal.close()
    return EXIT_OK


def _request(state_dir: Path, args: argparse.Namespace) -> int:
    from daemon import control  # noqa: PLC0415 (keep `status` light)

    dataset: str | None = None if getattr(args, "all", False) else args.dataset
    if dataset is not None:
        journal = _journal(state_dir)
        try:
            if journal.dataset_by_name(dataset) is None:
                raise UsageError(f"no dataset named {dataset!r}; see `dronesync status`")
        finally:
            journal.close()
    try:
        request = control.submit(state_dir, args.command, dataset)
        running = control.daemon_running(state_dir)
    except OSError as exc:
        raise UsageError(
            f"{state_dir}: cannot pass the request to the daemon ({exc.strerror});"
            " run as root or as the user the service runs as"
        ) from exc
    if not running:
        print("queued: the daemon is not running; it applies this when it starts")
        return EXIT_OK
    answer = control.wait_answer(request, ANSWER_TIMEOUT_S)
    if answer is None:
        print("queued: the daemon has not answered yet; it applies this shortly")
        return EXIT_OK
    print(answer)
    return EXIT_OK if not answer.startswith("not done") else 1


def _fleet(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.status import fleet_document, fleet_warnings, render_fleet  # noqa: PLC0415
    from daemon.targets.registry import fleet_types, lists_fleet, read_fleet  # noqa: PLC0415

    able = sorted(name for name, table in settings.targets.items() if lists_fleet(table))
    listed = ", ".join(able) or "none is configured"
    name: str | None = args.target
    if name is None:
        if not able:
            kinds = " or ".join(f'type = "{kind}"' for kind in fleet_types())
            raise UsageError(
                "no configured target keeps a record of a fleet: `dronesync fleet` reads the"
                f" store a fleet shares, a target with {kinds}"
            )
        if len(able) > 1:
            raise UsageError(f"several targets keep a record of a fleet ({listed}): add --target")
        name = able[0]
    elif name not in able:
        what = "keeps no record of a fleet" if name in settings.targets else "is not configured"
        raise UsageError(f"targets.{name} {what}; targets that do: {listed}")
    try:
        rows = read_fleet(settings.targets[name])
    except TargetError as exc:
        raise TargetError(f"targets.{name}: the fleet cannot be read: {exc}") from exc
    document = fleet_document(name, rows)
    if args.json:
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_fleet(document))
    sys.stdout.flush()  # the listing first, then what it left out
    for line in fleet_warnings(document):
        print(f"dronesync: warning: {line}", file=sys.stderr)
    return EXIT_OK
