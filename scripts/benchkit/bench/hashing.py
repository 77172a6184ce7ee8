"""The hash scenario: ``hash_file`` against hashlib on the same cached file."""

from __future__ import annotations

import os

from benchkit.bench.harness import GOAL_HASH, HASH_ROUNDS, Bench
from benchkit.files import MIB, sha256_file
from benchkit.project import hash_file
from benchkit.settling import settle
from benchkit.timing import progress, timed


def bench_hash(bench: Bench) -> None:
    """``hash_file`` against hashlib sha256 on the same cached file, in turns."""
    size_mb = bench.args.hash_mb
    path = bench.work / "hash.bin"
    with path.open("wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(MIB))
    settle()
    info = path.stat()
    sha256_file(path)  # into the page cache
    # The two take turns, so that a slow moment of the box falls on both sides; three rounds
    # of one and then three of the other once put a burst on one side only (0.83).
    refs, ours_all = [], []
    for _ in range(HASH_ROUNDS):
        refs.append(timed(lambda: sha256_file(path)))
        ours_all.append(timed(lambda: hash_file(path, info.st_size, info.st_mtime_ns)))
    ref, ours = min(refs), min(ours_all)
    path.unlink()
    mbps_ref, mbps = info.st_size / 1e6 / ref, info.st_size / 1e6 / ours
    progress(f"hash: hashlib {mbps_ref:.0f} MB/s, hash_file {mbps:.0f} MB/s")
    bench.add(
        f"hashing, cached {size_mb} MiB file (MB/s)",
        mbps,
        reference=f"hashlib sha256, best of {HASH_ROUNDS}",
        ref=mbps_ref,
        goal=GOAL_HASH,
        higher=True,
    )
