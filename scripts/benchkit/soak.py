"""The long soak: the real daemon against local servers that fail a share of requests at random.

    scripts/soak [--target pix4dcloud|nodeodm|both] [--files 600] [--datasets 4] [--rate 0.3]
                 [--seed 1] [--duplicates 6] [--big 1] [--ambiguous-rate 0.01]
                 [--processing-rate R] [--deadline 900] [--keep]

Checks on the server side, by content hash, that every image landed exactly once (none lost,
none stored twice, none truncated), that processing started once per dataset, that every file
ends uploaded or duplicate and that the daemon kept running; prints a table of figures per
target and exits 1 if any of that failed. The fault mix is described in
tests/reliability/soak.py and docs/reliability.md. Needs the test dependencies in .venv
(scripts/test installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from benchkit.cli import summary

# Not through benchkit.project: moto, which the harness loads, must stay out of the benchmarks.
from tests.conftest import Box
from tests.reliability.soak import TARGETS, SoakOptions, SoakResult, run_soak


def parse(argv: list[str]) -> tuple[list[str], SoakOptions, bool]:
    """The targets, the soak's options and ``--keep``, from the command line."""
    defaults = SoakOptions()
    parser = argparse.ArgumentParser(prog="scripts/soak", description=summary(__doc__))
    parser.add_argument("--target", choices=[*TARGETS, "both"], default="both")
    parser.add_argument("--files", type=int, default=defaults.files, help="image files in all")
    parser.add_argument("--datasets", type=int, default=defaults.datasets)
    parser.add_argument(
        "--duplicates", type=int, default=defaults.duplicates, help="byte-identical copies"
    )
    parser.add_argument(
        "--big", type=int, default=defaults.big, help="images above the multipart threshold"
    )
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="share of requests that fail"
    )
    parser.add_argument(
        "--ambiguous-rate",
        type=float,
        default=defaults.ambiguous_rate,
        help="NodeODM uploads failing ambiguously (part of --rate; each one resets a task)",
    )
    parser.add_argument(
        "--processing-rate",
        type=float,
        default=None,
        help="fault rate on the processing-start routes (default: --rate)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--deadline", type=float, default=defaults.deadline_s, help="seconds per target"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    args = parser.parse_args(argv)
    opts = SoakOptions(
        files=args.files,
        datasets=args.datasets,
        duplicates=args.duplicates,
        big=args.big,
        rate=args.rate,
        ambiguous_rate=args.ambiguous_rate,
        processing_rate=args.processing_rate,
        seed=args.seed,
        concurrency=args.concurrency,
        deadline_s=args.deadline,
    )
    try:
        opts.check()
    except ValueError as exc:
        parser.error(str(exc))
    targets = list(TARGETS) if args.target == "both" else [args.target]
    return targets, opts, args.keep


def soak(target: str, root: Path, opts: SoakOptions) -> SoakResult:
    """One target's soak in a folder of its own; the servers' noise goes to servers.log."""
    folder = root / target
    folder.mkdir()
    box = Box(folder)
    print(f"== {target}: {opts.files} files in {opts.datasets} datasets, {opts.rate:.0%} faults")
    try:
        # The fake servers print a traceback for each client that hung up on purpose.
        with (folder / "servers.log").open("w") as noise, contextlib.redirect_stderr(noise):
            return run_soak(target, box, opts, progress=lambda line: print(line, flush=True))
    finally:
        box.cleanup()


def table(result: SoakResult) -> str:
    """The figures of one target, then its problems."""
    width = max(len(k) for k in result.figures) + 2
    lines = [f"{k:<{width}}{v}" for k, v in result.figures.items()]
    lines += [f"PROBLEM: {p}" for p in result.problems]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Soak each target; 1 if any check failed."""
    targets, opts, keep = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="dronesync-soak-"))
    results: list[SoakResult] = []
    try:
        for target in targets:
            try:
                results.append(soak(target, root, opts))
            except pytest.fail.Exception as exc:  # the daemon did not even start
                print(f"{target}: {exc}", file=sys.stderr)
                results.append(SoakResult(target, problems=[str(exc)]))
            print(table(results[-1]), flush=True)
            print()
    finally:
        failed = not results or not all(r.ok for r in results)
        if keep or failed:
            print(f"run folder kept: {root} (daemon.log, state/, servers.log per target)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0
