"""A small box on this one: a cgroup confining a side to a fraction of one CPU, and a card.

``--cpu-quota 0.25`` puts the side measured (the daemon and its hashing processes, the bench's
own client, or the reference tools) in a cgroup of its own: ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us`` of one CPU (``cpuset.cpus``), as systemd's ``CPUQuota=`` does. The servers
and the harness stay outside. cgroup v1 hierarchies (``/sys/fs/cgroup/cpu``, ``cpuset``,
``blkio``) are used where mounted, else cgroup v2 (``cpu.max``, ``cpuset.cpus``, ``io.max``) where
its controllers are enabled. Needs root; the cgroups are removed on close.

``--card-mbps 90``: the card is an ext4 image on a loop device (``--direct-io``: its reads are
not cached twice), mounted when a run starts and unmounted after it, its files' pages dropped
(``POSIX_FADV_DONTNEED``), so that every run reads the card cold, at the rate
``blkio.throttle.read_bps_device`` allows the confined side (an SD card reads 90-300 MB/s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class ConfineError(Exception):
    """A cgroup or a card device could not be made here (not root, no controller)."""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise ConfineError(f"{path}: {exc.strerror or exc}") from exc


def _v1(controller: str) -> Path | None:
    """The cgroup v1 hierarchy of ``controller``, if mounted (alone or with others)."""
    for path in CGROUP.iterdir() if CGROUP.is_dir() else []:
        v2 = (path / "cgroup.controllers").exists()
        if controller in path.name.split(",") and (path / "cgroup.procs").exists() and not v2:
            return path
    return None


def _v2_root() -> Path | None:
    """The cgroup v2 hierarchy (``/sys/fs/cgroup`` or ``/sys/fs/cgroup/unified``), if any."""
    for path in (CGROUP, CGROUP / "unified"):
        if (path / "cgroup.controllers").exists():
            return path
    return None


def _own_cgroup(v1_name: str | None) -> str:
    """The cgroup of this process in a hierarchy (v1 controller name, or None: v2), from /proc."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if (v1_name is None and names == "") or (v1_name in names.split(",")):
            return path
    return "/"


@dataclass
class Confinement:
    """A cgroup (one per hierarchy) holding what runs inside :meth:`inside` or :meth:`join`.

    ``quota``: the share of one CPU (0.25: 25 ms of every 100 ms), None: no CPU limit; ``cpu``:
    that CPU's number; ``read_bps``: the card's read limit (bytes per second), applied to each
    device given to :meth:`limit_reads`.
    """

    quota: float | None
    cpu: int = 0
    read_bps: int | None = None
    name: str = field(default_factory=lambda: f"dronesync-bench-{os.getpid()}")
    groups: list[tuple[Path, Path]] = field(default_factory=list)  # (ours, where we came from)
    v2: bool = False

    def __post_init__(self) -> None:
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def _make(self) -> None:
        if os.geteuid() != 0:
            raise ConfineError("cgroups need root")
        want = {"cpu", "cpuset"} if self.quota is not None else set()
        if self.read_bps:
            want.add("blkio")
        v1 = {c: _v1(c) for c in want}
        if all(v1.values()):
            for controller in sorted(want):
                hierarchy = v1[controller]
                assert hierarchy is not None
                self._v1_group(controller, hierarchy)
            return
        root = _v2_root()
        names = {"io" if c == "blkio" else c for c in want}
        have = set((root / "cgroup.controllers").read_text().split()) if root else set()
        if root is None or not names <= have:
            missing = sorted(c for c, h in v1.items() if h is None)
            raise ConfineError(f"no cgroup controller {', '.join(missing)} (v1 or v2) here")
        self._v2_group(root, names)

    def _v1_group(self, controller: str, hierarchy: Path) -> None:
        group = hierarchy / self.name
        group.mkdir(exist_ok=True)
        self.groups.append((group, hierarchy / _own_cgroup(controller).lstrip("/")))
        if controller == "cpu":
            assert self.quota is not None
            _write(group / "cpu.cfs_period_us", str(PERIOD_US))
            _write(group / "cpu.cfs_quota_us", str(round(self.quota * PERIOD_US)))
            # Ten times the weight of any other process: on a loaded box the quota, not the
            # neighbours, bounds the side measured.
            _write(group / "cpu.shares", "10240")
        elif controller == "cpuset":
            _write(group / "cpuset.mems", (hierarchy / "cpuset.mems").read_text().strip())
            _write(group / "cpuset.cpus", str(self.cpu))

    def _v2_group(self, root: Path, names: set[str]) -> None:
        self.v2 = True
        parent = root / _own_cgroup(None).lstrip("/")
        group = parent / self.name
        group.mkdir(exist_ok=True)
        self.groups.append((group, parent))
        for name in sorted(names):  # the parent must hand the controllers down
            _write(parent / "cgroup.subtree_control", f"+{name}")
        if self.quota is not None:
            _write(group / "cpu.max", f"{round(self.quota * PERIOD_US)} {PERIOD_US}")
            _write(group / "cpu.weight", "1000")
            _write(group / "cpuset.cpus", str(self.cpu))

    def limit_reads(self, devno: str) -> None:
        """Reads of the block device ``devno`` (``MAJ:MIN``) at ``read_bps`` at most."""
        assert self.read_bps is not None
        for group, _ in self.groups:
            if self.v2:
                _write(group / "io.max", f"{devno} rbps={self.read_bps}")
            elif (group / "blkio.throttle.read_bps_device").exists():
                _write(group / "blkio.throttle.read_bps_device", f"{devno} {self.read_bps}")

    def describe(self) -> str:
        """What the side measured runs on, for the notes."""
        parts = []
        if self.quota is not None:
            parts.append(f"{self.quota:g} of CPU {self.cpu} (CFS quota)")
        if self.read_bps:
            parts.append(f"the card's reads limited to {self.read_bps / 1e6:.0f} MB/s")
        return " and ".join(parts)

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: this process, every thread) into the cgroups."""
        for group, _ in self.groups:
            _write(group / "cgroup.procs", str(pid or os.getpid()))

    def leave(self) -> None:
        """Move this process back where it came from (its children stay where they are)."""
        for _, home in self.groups:
            with contextlib.suppress(ConfineError):
                _write(home / "cgroup.procs", str(os.getpid()))

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run this process in the cgroups meanwhile: what it runs and starts is confined."""
        self.join()
        try:
            yield
        finally:
            self.leave()

    def throttled(self) -> tuple[int, float]:
        """Periods the CPU quota ran out, seconds throttled so far (``cpu.stat``)."""
        for group, _ in self.groups:
            stat = group / "cpu.stat"
            if stat.exists():
                fields = dict(line.split() for line in stat.read_text().splitlines())
                if "throttled_time" in fields:  # v1: ns
                    return int(fields["nr_throttled"]), int(fields["throttled_time"]) / 1e9
                usec = int(fields.get("throttled_usec", 0))
                return int(fields.get("nr_throttled", 0)), usec / 1e6
        return 0, 0.0

    def close(self) -> None:
        """Move every process left inside back out, then remove the cgroups."""
        self.leave()
        for group, home in self.groups:
            for pid in (group / "cgroup.procs").read_text().split() if group.exists() else []:
                with contextlib.suppress(ConfineError):
                    _write(home / "cgroup.procs", pid)
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups.clear()


def add_small_box(parser: argparse.ArgumentParser, *, card: bool = True) -> None:
    """The options of a small box: ``--cpu-quota``, ``--cpu`` and (``card``) ``--card-mbps``."""
    parser.add_argument(
        "--cpu-quota",
        type=float,
        default=None,
        help="confine the side measured (dronesync, and each reference) to this share of one"
        " CPU, e.g. 0.25 (a cgroup; needs root); the servers stay outside",
    )
    parser.add_argument(
        "--cpu", type=int, default=None, help="that CPU's number (default: the last one)"
    )
    if card:
        parser.add_argument(
            "--card-mbps",
            type=float,
            default=None,
            help="the card is a loop-mounted image read cold at this many MB/s (an SD card"
            " reads 90-300), by dronesync and the references alike; needs root",
        )


def small_box(args: argparse.Namespace, notes: list[str]) -> Confinement | None:
    """The confinement the options ask for (None: none), described in ``notes``."""
    quota, card_mbps = args.cpu_quota, getattr(args, "card_mbps", None)
    if quota is None and not card_mbps:
        return None
    if quota is not None and not 0.01 <= quota <= 1:
        raise ConfineError("--cpu-quota: a share of one CPU, 0.01 to 1")
    cpu = (os.cpu_count() or 1) - 1 if args.cpu is None else args.cpu
    box = Confinement(quota, cpu, round(card_mbps * 1e6) if card_mbps else None)
    notes.append(
        f"a small box: dronesync (with its hashing processes) and each reference ran on"
        f" {box.describe()}; the servers and the harness outside"
    )
    return box


@contextlib.contextmanager
def maybe_inside(box: Confinement | None) -> Iterator[None]:
    """:meth:`Confinement.inside` when there is a box."""
    if box is None:
        yield
        return
    with box.inside():
        yield


class CardImage:
    """A card: an ext4 image on a loop device, mounted at a folder for a run, then unmounted.

    Writing fills it through a mount at ``staging``; every :meth:`mounted` run after that reads
    it cold (:meth:`unmount` drops the page cache of its files).
    """

    def __init__(self, image: Path, size: int) -> None:
        for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                raise ConfineError(f"{tool} not found")
        self.image = image
        with image.open("wb") as fh:
            fh.truncate(size)
        # No journal, no lazy init: nothing writes to the card behind a run's back.
        ext4 = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E"]
        ext4 += ["lazy_itable_init=0,lazy_journal_init=0", str(image)]
        self._run(ext4)
        self.device = self._run(["losetup", "--show", "-f", "--direct-io=on", str(image)]).strip()
        self.devno = Path(f"/sys/class/block/{Path(self.device).name}/dev").read_text().strip()
        self.mountpoint: Path | None = None

    @staticmethod
    def _run(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfineError(f"{' '.join(argv[:3])}: {done.stderr.strip()[:300]}")
        return done.stdout

    def mount(self, where: Path) -> None:
        """Mount the card at ``where`` (a folder that exists)."""
        self._run(["mount", "-o", "noatime", self.device, str(where)])
        self.mountpoint = where

    def unmount(self) -> None:
        """Unmount it, its files' pages dropped from the page cache first.

        Unmounting alone may not drop them: a mount namespace made meanwhile (``ip netns
        exec``, ``unshare -m``) holds a copy of the mount, and with it the cached pages.
        """
        if self.mountpoint is not None:
            for folder, _, names in os.walk(self.mountpoint):
                for name in names:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
            self._run(["umount", str(self.mountpoint)])
            self.mountpoint = None

    @contextlib.contextmanager
    def mounted(self, where: Path) -> Iterator[Path]:
        """The card mounted at ``where`` meanwhile."""
        where.mkdir(parents=True, exist_ok=True)
        self.mount(where)
        try:
            yield where
        finally:
            self.unmount()

    def close(self) -> None:
        """Unmount, detach the loop device, delete the image."""
        with contextlib.suppress(ConfineError):
            self.unmount()
        with contextlib.suppress(ConfineError):
            self._run(["losetup", "-d", self.device])
        self.image.unlink(missing_ok=True)
