"""scripts/install and scripts/uninstall, into a staging root (``--root``) in a temporary folder.

Every run happens in a private mount namespace where the host's file systems are read-only
and only the staging folder is writable, so a path that escaped the root would fail the run;
the host paths the scripts know are also compared before and after. ``--no-venv`` keeps it to
a second: building the virtual environment needs the network and a compiler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install"
UNINSTALL = REPO / "scripts" / "uninstall"

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed"),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the scripts set owners and create a user: run as root"
    ),
]

# What the scripts touch on a real machine: none of it may change during a staged run.
HOST_PATHS = [
    "/etc/systemd/system/dronesync.service",
    "/etc/systemd/system/multi-user.target.wants/dronesync.service",
    "/etc/udev/rules.d/99-dronesync-cards.rules",
    "/etc/sysusers.d/dronesync.conf",
    "/etc/tmpfiles.d/dronesync.conf",
    "/etc/dronesync",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/opt/dronesync",
    "/usr/local/bin/dronesync",
    "/srv/drone-archive",
    "/run/dronesync",
    "/var/lib/dronesync",
]

# Mount the host read-only around the script; the staging folder stays writable.
_SANDBOX = r"""
set -eu
stage=$1
shift
mount --make-rprivate /
mount --bind "$stage" "$stage"
awk '{ print $5 }' /proc/self/mountinfo | while read -r point; do
    case $point in
        "$stage") ;;
        / | /etc* | /opt* | /srv* | /run* | /usr* | /var* | /tmp* | /home* | /root*)
            mount -o remount,bind,ro "$point" 2>/dev/null || true ;;
    esac
done
# Refuse to run unprotected: the point of the namespace is that / cannot be written.
if touch /.dronesync-install-test 2>/dev/null; then
    rm -f /.dronesync-install-test
    echo "sandbox: / is still writable" >&2
    exit 97
fi
exec "$@"
"""

Snapshot = dict[str, tuple[object, ...]]


def _describe(path: Path) -> tuple[object, ...]:
    info = path.lstat()
    kind = stat.S_IFMT(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        content: object = os.readlink(path)
    elif stat.S_ISREG(info.st_mode):
        content = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        content = None
    return (kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_mtime_ns, content)


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root`` with its type, mode, owner, mtime and content."""
    found = {"/": _describe(root)}
    for path in sorted(root.rglob("*")):
        found["/" + str(path.relative_to(root))] = _describe(path)
    return found


def host_state() -> dict[str, tuple[object, ...] | None]:
    state: dict[str, tuple[object, ...] | None] = {}
    for name in HOST_PATHS:
        path = Path(name)
        state[name] = _describe(path) if path.exists() or path.is_symlink() else None
    return state


@pytest.fixture(scope="module")
def sandboxed() -> bool:
    """Whether runs can be wrapped in a read-only view of the host."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0


def run(script: Path, root: Path, sandboxed: bool, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``script --root root`` (plus ``extra``); the host must not change."""
    before = host_state()
    scratch = root.parent / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    argv = [str(script), "--root", str(root), *extra]
    if sandboxed:
        # The host's /tmp is read-only in there: temporary files go to the staging folder.
        argv = ["unshare", "--mount", "sh", "-c", _SANDBOX, "sh", str(root.parent), *argv]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode != 97, result.stderr
    assert host_state() == before, "a staged run changed the host"
    return result


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def ids(root: Path) -> tuple[int, int]:
    """The dronesync user and group numbers in the staging root's own account files."""
    (user,) = [f for f in (root / "etc/passwd").read_text().splitlines() if f[:10] == "dronesync:"]
    (group,) = [f for f in (root / "etc/group").read_text().splitlines() if f[:10] == "dronesync:"]
    return int(user.split(":")[2]), int(group.split(":")[2])


@pytest.fixture
def root(tmp_path: Path, sandboxed: bool) -> Path:
    """A staging root with dronesync installed once."""
    staged = tmp_path / "stage" / "root"
    result = run(INSTALL, staged, sandboxed, "--no-venv")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return staged


def test_install_puts_each_file_in_place_with_its_mode_and_owner(root: Path) -> None:
    uid, gid = ids(root)
    files = {
        "etc/systemd/system/dronesync.service": ("systemd/dronesync.service", 0o644, 0, 0),
        "etc/udev/rules.d/99-dronesync-cards.rules": (
            "systemd/99-dronesync-cards.rules",
            0o644,
            0,
            0,
        ),
        "etc/sysusers.d/dronesync.conf": ("systemd/dronesync.sysusers", 0o644, 0, 0),
        "etc/tmpfiles.d/dronesync.conf": ("systemd/dronesync.tmpfiles", 0o644, 0, 0),
        "opt/dronesync/README.md": ("README.md", 0o644, 0, 0),
        # The card-ready configuration, and the reference with every key beside it.
        "etc/dronesync/dronesync.toml": ("config/box.toml", 0o640, 0, gid),
        "etc/dronesync/dronesync.example.toml": ("config/dronesync.toml", 0o640, 0, gid),
    }
    for name, (source, mode, owner, group) in files.items():
        path = root / name
        assert path.read_bytes() == (REPO / source).read_bytes(), name
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, owner, group), name
    folders = {
        "etc/dronesync": (0o750, 0, gid),
        "srv/drone-archive": (0o750, uid, gid),
        "run/dronesync/cards": (0o755, 0, 0),
    }
    for name, expected in folders.items():
        info = (root / name).stat()
        assert stat.S_ISDIR(info.st_mode), name
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == expected, name
    wants = root / "etc/systemd/system/multi-user.target.wants/dronesync.service"
    assert os.readlink(wants) == "/etc/systemd/system/dronesync.service"
    assert not (root / "opt/dronesync/venv").exists()
    # `dronesync` on PATH: every command in the README works as written.
    assert os.readlink(root / "usr/local/bin/dronesync") == "/opt/dronesync/venv/bin/dronesync"


def test_install_ends_with_the_status_page_address(tmp_path: Path, sandboxed: bool) -> None:
    result = run(INSTALL, tmp_path / "stage" / "root", sandboxed, "--no-venv")
    assert result.returncode == 0, result.stderr
    assert lines(result)[-1] == "status page: http://127.0.0.1:8710/"
    assert "linked /usr/local/bin/dronesync -> /opt/dronesync/venv/bin/dronesync" in lines(result)


def test_a_dronesync_command_of_someone_else_is_left_alone(tmp_path: Path, sandboxed: bool) -> None:
    staged = tmp_path / "stage" / "root"
    theirs = staged / "usr/local/bin/dronesync"
    theirs.parent.mkdir(parents=True)
    theirs.write_text('#!/bin/sh\nexec /home/pilot/dronesync/bin/dronesync "$@"\n')

    result = run(INSTALL, staged, sandboxed, "--no-venv")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("kept /usr/local/bin/dronesync") for line in lines(result))
    removed = run(UNINSTALL, staged, sandboxed)
    assert removed.returncode == 0, removed.stderr
    assert theirs.read_text().startswith("#!/bin/sh\nexec /home/pilot")


def test_the_service_user_is_a_system_user_without_login(root: Path) -> None:
    (entry,) = [e for e in (root / "etc/passwd").read_text().splitlines() if e[:10] == "dronesync:"]
    _name, _, uid, gid, _, home, shell = entry.split(":")
    assert int(uid) < 1000
    assert (int(uid), int(gid)) == ids(root)
    assert (home, shell) == ("/var/lib/dronesync", "/usr/sbin/nologin")


def test_a_second_run_changes_nothing_and_keeps_an_edited_config(
    root: Path, sandboxed: bool
) -> None:
    config = root / "etc/dronesync/dronesync.toml"
    edited = config.read_text() + '\n[targets.archive]\npath = "/mnt/nas/drone"\n'
    config.write_text(edited)
    before = snapshot(root)

    again = run(INSTALL, root, sandboxed, "--no-venv")

    assert again.returncode == 0, again.stdout + again.stderr
    assert snapshot(root) == before
    assert config.read_text() == edited
    assert "kept /etc/dronesync/dronesync.toml" in again.stdout
    changed = [
        line
        for line in lines(again)
        if not line.startswith(("unchanged ", "kept ", "skipped ", "status page: "))
    ]
    assert changed == []


def test_a_damaged_file_is_put_back(root: Path, sandboxed: bool) -> None:
    unit = root / "etc/systemd/system/dronesync.service"
    unit.write_text("[Service]\nExecStart=/bin/false\n")
    unit.chmod(0o600)
    rule = root / "etc/udev/rules.d/99-dronesync-cards.rules"
    rule.chmod(0o666)

    again = run(INSTALL, root, sandboxed, "--no-venv")

    assert again.returncode == 0, again.stderr
    assert unit.read_bytes() == (REPO / "systemd/dronesync.service").read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(rule.stat().st_mode) == 0o644
    assert "installed /etc/systemd/system/dronesync.service" in lines(again)
    assert "installed /etc/udev/rules.d/99-dronesync-cards.rules" in lines(again)


def test_uninstall_removes_the_program_and_keeps_config_journal_and_archive(
    root: Path, sandboxed: bool
) -> None:
    uid, gid = ids(root)
    journal = root / "var/lib/dronesync/journal.sqlite3"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"what was uploaded where")
    image = root / "srv/drone-archive/flight-1/DJI_0001.JPG"
    image.parent.mkdir()
    image.write_bytes(b"\xff\xd8 an image")
    dropin = root / "etc/systemd/system/dronesync.service.d/archive.conf"
    dropin.parent.mkdir()
    dropin.write_text("[Service]\nReadWritePaths=/mnt/nas\n")
    config = (root / "etc/dronesync/dronesync.toml").read_bytes()

    result = run(UNINSTALL, root, sandboxed)

    assert result.returncode == 0, result.stdout + result.stderr
    for gone in (
        "etc/systemd/system/dronesync.service",
        "etc/systemd/system/multi-user.target.wants/dronesync.service",
        "etc/udev/rules.d/99-dronesync-cards.rules",
        "etc/sysusers.d/dronesync.conf",
        "etc/tmpfiles.d/dronesync.conf",
        "opt/dronesync",
        "usr/local/bin/dronesync",
        "run/dronesync",
        "etc/dronesync/dronesync.example.toml",
    ):
        assert not (root / gone).exists(), gone
        assert not (root / gone).is_symlink(), gone
    assert (root / "etc/dronesync/dronesync.toml").read_bytes() == config
    assert journal.read_bytes() == b"what was uploaded where"
    assert image.read_bytes() == b"\xff\xd8 an image"
    assert dropin.exists()
    assert ids(root) == (uid, gid)
    for kept in ("/etc/dronesync", "/var/lib/dronesync", "/srv/drone-archive"):
        assert f"kept {kept}" in lines(result)
    assert "kept /etc/systemd/system/dronesync.service.d" in lines(result)
    assert any(line.startswith("kept user dronesync") for line in lines(result))

    before = snapshot(root)
    again = run(UNINSTALL, root, sandboxed)
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == before
    assert "removed" not in again.stdout


def test_install_after_uninstall_keeps_the_config(root: Path, sandboxed: bool) -> None:
    config = root / "etc/dronesync/dronesync.toml"
    config.write_text("# mine\n")
    assert run(UNINSTALL, root, sandboxed).returncode == 0

    again = run(INSTALL, root, sandboxed, "--no-venv")

    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# mine\n"
    assert (root / "etc/systemd/system/dronesync.service").exists()


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        (INSTALL, ["--bogus"], "install: unknown option: --bogus (see --help)"),
        (INSTALL, ["--root"], "install: --root needs a folder"),
        (UNINSTALL, ["--root", "/nonexistent/dronesync"], "uninstall: --root"),
    ],
    ids=["unknown option", "root without folder", "missing root"],
)
def test_usage_errors_are_one_line(script: Path, argv: list[str], message: str) -> None:
    result = subprocess.run(
        [str(script), *argv], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(message)


def test_a_failure_ends_with_one_line_saying_where(tmp_path: Path, sandboxed: bool) -> None:
    staged = tmp_path / "stage" / "root"
    # A file where a folder must go: installing the unit cannot succeed.
    (staged / "etc").mkdir(parents=True)
    (staged / "etc" / "systemd").write_text("not a folder")

    result = run(INSTALL, staged, sandboxed, "--no-venv")

    assert result.returncode != 0
    last = result.stderr.splitlines()[-1]
    assert last.startswith("install: failed while installing /etc/systemd/system/dronesync.service")


def test_help_describes_the_options() -> None:
    for script in (INSTALL, UNINSTALL):
        result = subprocess.run(
            [str(script), "--help"], capture_output=True, text=True, check=True, timeout=30
        )
        assert "--root DIR" in result.stdout
        assert "set -euo" not in result.stdout
