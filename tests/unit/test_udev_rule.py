"""The card rule (systemd/99-dronesync-cards.rules): udev parses and runs it, and what it matches.

Two checks. ``udevadm test`` runs the real rule, with the system's own rules, on a loop device
holding a FAT image, in a private mount namespace (its /run, /dev and a read-only /sys), so
nothing reaches the host: udevadm test writes symlinks, the udev database and sysfs attributes.
It exits 0 even when a rule is broken, so any complaint it prints about the file fails the
test. A loop device is the only block device a test can make, and the rule refuses loop
devices; a test rule marks it as a card (``DRONESYNC_CARD``) to reach the mount.

Then a small evaluator for the part of the udev rule language the file uses runs the real file
against a table of devices that cannot be made here: a USB card reader, the Raspberry Pi's own
card, an internal disk, a USB SSD. It refuses any key or operator it does not know, so a new
construct in the rule fails here instead of being ignored.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

RULE = Path(__file__).resolve().parents[2] / "systemd" / "99-dronesync-cards.rules"
SYSTEMD_MOUNT = "/usr/bin/systemd-mount"
CARDS = "/run/dronesync/cards"
MOUNT_FLAGS = ["--no-block", "--automount=no", "--fsck=no", "--collect"]
MOUNT_OPTIONS = {"ro", "nosuid", "nodev", "noexec"}


def mount_command(devnode: str, uuid: str) -> str:
    """The exact command the rule must queue for a card."""
    options = "--options=ro,nosuid,nodev,noexec"
    return " ".join([SYSTEMD_MOUNT, *MOUNT_FLAGS, options, devnode, f"{CARDS}/{uuid}"])


# -- an evaluator for the subset of the udev rule language the file uses -------------------

_ASSIGN_OPS = {"=", "+="}
_MATCH_OPS = {"==", "!="}
# Key -> operators allowed; whether it takes {attribute}.
_KEYS: dict[str, tuple[set[str], bool]] = {
    "ACTION": (_MATCH_OPS, False),
    "SUBSYSTEM": (_MATCH_OPS, False),
    "KERNEL": (_MATCH_OPS, False),
    "ENV": (_MATCH_OPS | _ASSIGN_OPS, True),
    "ATTRS": ({"=="}, True),
    "KERNELS": ({"=="}, False),
    "SUBSYSTEMS": ({"=="}, False),
    "TAG": ({"+="}, False),
    "RUN": ({"+="}, True),
    "GOTO": ({"="}, False),
    # IMPORT{db}="KEY": a match that copies KEY from the device's previous event, if there.
    "IMPORT": ({"="}, True),
    "LABEL": ({"="}, False),
}
# Keys matched against one device of the parent chain, all on the same one (as udev does).
_PARENT_KEYS = {"ATTRS", "KERNELS", "SUBSYSTEMS"}
_PAIR = re.compile(
    r'\s*(?P<key>[A-Z]+)(?:\{(?P<attr>[^}]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"'
    r"\s*(?:,|$)"
)
_SUBST = re.compile(r"\$(?:env\{(?P<env>[^}]+)\}|(?P<name>devnode|kernel))")


@dataclass(frozen=True)
class Pair:
    key: str
    attr: str | None
    op: str
    value: str


@dataclass(frozen=True)
class Rule:
    line: int
    pairs: tuple[Pair, ...]


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    """Rules of a file: one per logical line, comments and blank lines dropped."""
    rules: list[Rule] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = (pending + raw).strip()
        pending = ""
        if not line or line.startswith("#"):
            continue
        rules.append(Rule(start, _parse_line(line, f"{source}:{start}")))
    if pending:
        raise ValueError(f"{source}: the last line ends with a continuation")
    return rules


def _parse_line(line: str, where: str) -> tuple[Pair, ...]:
    pairs: list[Pair] = []
    position = 0
    while position < len(line):
        match = _PAIR.match(line, position)
        if match is None:
            raise ValueError(f"{where}: cannot parse {line[position:]!r}")
        pair = Pair(match["key"], match["attr"], match["op"], match["value"])
        allowed = _KEYS.get(pair.key)
        if allowed is None:
            raise ValueError(f"{where}: key {pair.key} is not understood by this evaluator")
        ops, takes_attr = allowed
        if pair.op not in ops or takes_attr != (pair.attr is not None):
            raise ValueError(f"{where}: {pair.key} {pair.op} is not understood by this evaluator")
        if pair.key == "IMPORT" and pair.attr != "db":
            raise ValueError(f"{where}: IMPORT{{{pair.attr}}} is not understood by this evaluator")
        pairs.append(pair)
        position = match.end()
    return tuple(pairs)


@dataclass(frozen=True)
class Node:
    """One device of the sysfs chain: the device itself, then its parents."""

    kernel: str
    subsystem: str
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Device:
    """An event as it reaches this rule file: properties set by earlier rules included.

    ``db`` holds the properties udev stored for the device's previous event.
    """

    action: str
    chain: tuple[Node, ...]
    env: dict[str, str]
    db: dict[str, str] = field(default_factory=dict)

    @property
    def kernel(self) -> str:
        return self.chain[0].kernel

    @property
    def subsystem(self) -> str:
        return self.chain[0].subsystem


@dataclass
class Outcome:
    env: dict[str, str]
    tags: set[str] = field(default_factory=set)
    run: list[str] = field(default_factory=list)


def _glob(pattern: str, value: str) -> bool:
    # udev: "|" separates alternatives, each an fnmatch(3) pattern without flags.
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def _is_match(pair: Pair) -> bool:
    return pair.op in _MATCH_OPS or pair.key == "IMPORT"


def _matches(pair: Pair, device: Device, env: dict[str, str]) -> bool:
    if pair.key == "IMPORT":
        if pair.value not in device.db:
            return False
        env[pair.value] = device.db[pair.value]
        return True
    if pair.key == "ACTION":
        value = device.action
    elif pair.key == "SUBSYSTEM":
        value = device.subsystem
    elif pair.key == "KERNEL":
        value = device.kernel
    else:
        value = env.get(pair.attr or "", "")
    return _glob(pair.value, value) == (pair.op == "==")


def _parent_matches(pairs: list[Pair], node: Node) -> bool:
    for pair in pairs:
        if pair.key == "KERNELS":
            value: str | None = node.kernel
        elif pair.key == "SUBSYSTEMS":
            value = node.subsystem
        else:
            value = node.attrs.get(pair.attr or "")
        if value is None or not _glob(pair.value, value):
            return False
    return True


def _substitute(text: str, device: Device, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match["env"] is not None:
            return env.get(match["env"], "")
        return device.env["DEVNAME"] if match["name"] == "devnode" else device.kernel

    result = _SUBST.sub(one, text)
    if "$" in _SUBST.sub("", text) or "%" in text:
        raise ValueError(f"substitution not understood by this evaluator: {text!r}")
    return result


def evaluate(rules: list[Rule], device: Device) -> Outcome:
    """Run ``rules`` on ``device`` as udevd would: matches, GOTO/LABEL, assignments."""
    outcome = Outcome(env=dict(device.env))
    labels = {p.value: i for i, r in enumerate(rules) for p in r.pairs if p.key == "LABEL"}
    index = 0
    while index < len(rules):
        pairs = rules[index].pairs
        index += 1
        matches = [p for p in pairs if _is_match(p) and p.key not in _PARENT_KEYS]
        parents = [p for p in pairs if p.key in _PARENT_KEYS]
        if not all(_matches(p, device, outcome.env) for p in matches):
            continue
        if parents and not any(_parent_matches(parents, node) for node in device.chain):
            continue
        for pair in pairs:
            if _is_match(pair) or pair.key in _PARENT_KEYS or pair.key == "LABEL":
                continue
            if pair.key == "GOTO":
                if pair.value not in labels:
                    raise ValueError(f"line {rules[index - 1].line}: no LABEL {pair.value}")
                index = labels[pair.value]
            elif pair.key == "TAG":
                outcome.tags.add(pair.value)
            elif pair.key == "RUN":
                # Substituted when the event has run all its rules, as udevd does.
                outcome.run.append(pair.value)
            else:
                _assign_env(outcome.env, pair, _substitute(pair.value, device, outcome.env))
    outcome.run = [_substitute(command, device, outcome.env) for command in outcome.run]
    return outcome


def _assign_env(env: dict[str, str], pair: Pair, value: str) -> None:
    name = pair.attr or ""
    if pair.op == "+=" and env.get(name):
        env[name] = f"{env[name]} {value}"
    elif value:
        env[name] = value
    else:
        env.pop(name, None)


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return parse_rules(RULE.read_text(), RULE.name)


# -- devices ------------------------------------------------------------------------------

_USB_READER = (
    Node("1:0:0:0", "scsi", {"vendor": "Generic-", "model": "SD/MMC"}),
    Node("host1", "scsi"),
    Node("1-1.2:1.0", "usb", {"bInterfaceClass": "08"}),
    # USB devices have a "removable" attribute of their own, with words: never "1".
    Node("1-1.2", "usb", {"removable": "removable", "product": "USB3.0 Card Reader"}),
    Node("usb1", "usb", {"removable": "unknown"}),
    Node("0000:01:00.0", "pci"),
)
_SATA = (Node("0:0:0:0", "scsi", {"vendor": "ATA"}), Node("ata1", "ata_port"))
_PI_SLOT = (Node("mmc0", "mmc_host"), Node("fe340000.mmc", "platform"))


def _fs(fs_type: str, uuid: str | None, devnode: str, devtype: str) -> dict[str, str]:
    env = {"DEVNAME": devnode, "DEVTYPE": devtype, "ID_FS_USAGE": "filesystem"}
    env["ID_FS_TYPE"] = fs_type
    if uuid is not None:
        env["ID_FS_UUID"] = uuid
    return env


def usb_card(
    fs_type: str = "vfat",
    uuid: str | None = "1A2B-3C4D",
    action: str = "add",
    *,
    removable: str = "1",
    partition: bool = True,
    **env: str,
) -> Device:
    """A card in a USB reader (or a USB stick, or a USB disk with removable="0")."""
    disk = Node("sdb", "block", {"removable": removable})
    chain = ((Node("sdb1", "block"), disk) if partition else (disk,)) + _USB_READER
    devnode = f"/dev/{chain[0].kernel}"
    props = _fs(fs_type, uuid, devnode, "partition" if partition else "disk")
    props |= {"ID_BUS": "usb", **env}
    return Device(action, chain, props)


def mmc_card(host: int, card_type: str = "SD", **env: str) -> Device:
    """The first partition of a card in the board's slot ``host`` (0: the Pi's own)."""
    card = Node(f"mmc{host}:aaaa", "mmc", {"type": card_type, "name": "SC64G"})
    chain = (
        Node(f"mmcblk{host}p1", "block"),
        Node(f"mmcblk{host}", "block", {"removable": "0"}),
        card,
        *_PI_SLOT,
    )
    props = _fs("vfat", "5DE4-A4F8", f"/dev/mmcblk{host}p1", "partition") | env
    return Device("add", chain, props)


def sata_partition(fs_type: str = "vfat") -> Device:
    """The EFI system partition of an internal disk: FAT, but no card."""
    chain = (Node("sda1", "block"), Node("sda", "block", {"removable": "0"}), *_SATA)
    return Device("add", chain, _fs(fs_type, "C0FF-EE00", "/dev/sda1", "partition"))


def loop_device(action: str = "change", **env: str) -> Device:
    chain = (Node("loop0", "block", {"removable": "0"}),)
    return Device(action, chain, _fs("vfat", "1234-ABCD", "/dev/loop0", "disk") | env)


MOUNTED: dict[str, tuple[Device, str]] = {
    "vfat card in a USB reader": (usb_card(), "1A2B-3C4D"),
    "exfat card in a USB reader": (usb_card("exfat", "64A1-0C2E"), "64A1-0C2E"),
    "lowercase UUID": (usb_card(uuid="1a2b-3c4d"), "1a2b-3c4d"),
    "card without partition table, reader plugged in before": (
        usb_card(partition=False, action="change"),
        "1A2B-3C4D",
    ),
    "card without partition table at plug-in": (usb_card(partition=False), "1A2B-3C4D"),
    "SD card in a second slot": (mmc_card(1), "5DE4-A4F8"),
    "loop device a local rule declares a card": (loop_device(DRONESYNC_CARD="1"), "1234-ABCD"),
    "loop device attached as a card, add": (
        loop_device("add", DRONESYNC_CARD="1"),
        "1234-ABCD",
    ),
    "USB SSD a local rule declares a card": (
        usb_card("exfat", removable="0", DRONESYNC_CARD="1"),
        "1A2B-3C4D",
    ),
}

UNTOUCHED: dict[str, Device] = {
    "the Raspberry Pi's own card": mmc_card(0),
    "the Pi's own card even when a local rule says card": mmc_card(0, DRONESYNC_CARD="1"),
    "eMMC in a second slot": mmc_card(1, "MMC"),
    "ext4 USB disk": usb_card("ext4", "0b6e5a3c-2f1d-4c8e-9a7b-3d2e1f0a9b8c"),
    "ext4 even when a local rule says card": usb_card("ext4", "0b6e5a3c", DRONESYNC_CARD="1"),
    "FAT partition of an internal SATA disk": sata_partition(),
    "exFAT USB SSD (media not removable)": usb_card("exfat", removable="0"),
    "loop device (tests, images)": loop_device(),
    "loop device, add": loop_device("add"),
    "card a local rule excludes": usb_card(DRONESYNC_CARD="0"),
    "remove event": usb_card(action="remove"),
    "change on a partition": usb_card(action="change"),
    "bind event": usb_card(action="bind"),
    "no UUID": usb_card(uuid=None),
    "empty UUID": usb_card(uuid=""),
    "UUID with a path in it": usb_card(uuid="../../etc"),
    "UUID with a space": usb_card(uuid="1A2B 3C4D"),
    "encrypted volume": usb_card(ID_FS_USAGE="crypto", ID_FS_TYPE="crypto_LUKS"),
    "partition table, no file system": usb_card(ID_FS_USAGE="", ID_FS_TYPE=""),
    "not a block device": Device("add", _USB_READER[2:], {"ID_FS_USAGE": "filesystem"}),
}


@pytest.mark.parametrize(("device", "uuid"), MOUNTED.values(), ids=MOUNTED.keys())
def test_a_card_is_mounted_read_only_and_wants_the_daemon(
    rules: list[Rule], device: Device, uuid: str
) -> None:
    outcome = evaluate(rules, device)
    assert outcome.run == [mount_command(device.env["DEVNAME"], uuid)]
    assert outcome.env["UDISKS_IGNORE"] == "1"
    assert "systemd" in outcome.tags
    assert outcome.env["SYSTEMD_WANTS"] == "dronesync.service"
    # Kept in udev's database: later events for the same card do not mount again.
    assert outcome.env["DRONESYNC_MOUNTED"] == "1"


MOUNTED_BEFORE = {"DRONESYNC_MOUNTED": "1"}
AGAIN: dict[str, Device] = {
    "resize event after media change": replace(
        usb_card(partition=False, action="change"), db=MOUNTED_BEFORE
    ),
    "udevadm trigger (add) on a mounted card": replace(usb_card(), db=MOUNTED_BEFORE),
    "loop device's second change": replace(loop_device(DRONESYNC_CARD="1"), db=MOUNTED_BEFORE),
}


@pytest.mark.parametrize("device", AGAIN.values(), ids=AGAIN.keys())
def test_a_card_is_mounted_once_however_many_events_it_brings(
    rules: list[Rule], device: Device
) -> None:
    outcome = evaluate(rules, device)
    assert outcome.run == []
    # Still a card: the mark is stored again, udisks still keeps off, the daemon still wanted.
    assert outcome.env["DRONESYNC_MOUNTED"] == "1"
    assert outcome.env["UDISKS_IGNORE"] == "1"
    assert outcome.env["SYSTEMD_WANTS"] == "dronesync.service"


def test_the_next_card_in_the_same_reader_is_mounted(rules: list[Rule]) -> None:
    # Card out: the reader's disk gets a change without a file system; the mark is dropped.
    out = replace(
        usb_card(partition=False, action="change", ID_FS_USAGE="", ID_FS_TYPE="", ID_FS_UUID=""),
        db=MOUNTED_BEFORE,
    )
    after_out = evaluate(rules, out)
    assert after_out.run == []
    assert "DRONESYNC_MOUNTED" not in after_out.env
    card = usb_card("exfat", "0C0C-1234", "change", partition=False)
    following = replace(card, db=after_out.env)
    assert evaluate(rules, following).run == [mount_command("/dev/sdb", "0C0C-1234")]


@pytest.mark.parametrize("device", UNTOUCHED.values(), ids=UNTOUCHED.keys())
def test_anything_else_is_left_alone(rules: list[Rule], device: Device) -> None:
    outcome = evaluate(rules, device)
    assert outcome.run == []
    assert outcome.env == device.env
    assert outcome.tags == set()


def test_the_mount_is_read_only_without_fsck_and_does_not_block(rules: list[Rule]) -> None:
    (command,) = evaluate(rules, usb_card()).run
    argv = shlex.split(command)
    assert argv[0] == SYSTEMD_MOUNT
    assert set(MOUNT_FLAGS) <= set(argv)
    (options,) = (a.removeprefix("--options=") for a in argv if a.startswith("--options="))
    assert set(options.split(",")) == MOUNT_OPTIONS
    assert argv[-2:] == ["/dev/sdb1", f"{CARDS}/1A2B-3C4D"]


def test_other_units_wanted_by_the_device_are_kept(rules: list[Rule]) -> None:
    outcome = evaluate(rules, usb_card(SYSTEMD_WANTS="backup.service"))
    assert outcome.env["SYSTEMD_WANTS"].split() == ["backup.service", "dronesync.service"]


def _parse_and_evaluate(text: str) -> Outcome:
    return evaluate(parse_rules(text), usb_card())


def test_the_evaluator_refuses_what_it_does_not_understand() -> None:
    for text in (
        'SUBSYSTEM=="block", PROGRAM=="/bin/true"',
        'ENV{X}:="1"',
        'ATTRS{removable}!="1"',
        'KERNEL=="sd*", SUBSYSTEM=="block" GOTO="x"',
        'ENV{X}="%k"',
    ):
        with pytest.raises(ValueError, match=r"not understood|cannot parse"):
            _parse_and_evaluate(text)


def test_the_evaluator_follows_udev_semantics() -> None:
    # Parent keys must all match on one device of the chain: the USB device's own
    # "removable" is a word, so this never matches although both exist somewhere.
    text = "\n".join(
        (
            'SUBSYSTEMS=="usb", ATTRS{removable}=="1", ENV{A}="both"',
            'ATTRS{removable}=="1", ENV{B}="$env{ID_BUS}+$kernel"',
            "# a comment, then a continued line",
            'ENV{B}=="usb+sdb1", \\',
            '  ENV{C}="continued"',
        )
    )
    outcome = evaluate(parse_rules(text), usb_card())
    assert "A" not in outcome.env
    assert outcome.env["B"] == "usb+sdb1"
    assert outcome.env["C"] == "continued"


# -- udevadm test on a real loop device -----------------------------------------------------

_NAMESPACE_SCRIPT = r"""
set -eu
rules=$1 dev=$2 major=$3 minor=$4 action=$5 db=$6
# unshare makes every mount private already; nothing below propagates to the host.
mount --make-rprivate /
# A private /run: the rules go to /run/udev/rules.d, the udev database lands here too.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/udev/rules.d
cp "$rules"/* /run/udev/rules.d/
# What udev stored for the device's previous event, when the test gives one.
if [ -n "$db" ]; then
    mkdir -p /run/udev/data
    printf '%s\n' "$db" >"/run/udev/data/b$major:$minor"
fi
# An installed copy in /etc would win over /run: hide it.
if [ -d /etc/udev/rules.d ]; then mount -t tmpfs tmpfs /etc/udev/rules.d; fi
# udevadm test creates /dev symlinks and sets node modes: give it a /dev of its own.
mount -t tmpfs -o mode=0755 tmpfs /dev
mknod "/dev/$dev" b "$major" "$minor"
mknod -m 0666 /dev/null c 1 3
# ... and writes ATTR{} assignments to sysfs.
mount -o remount,bind,ro /sys
exec udevadm test --action="$action" "/sys/class/block/$dev"
"""
# What udev prints about a broken rule, or a rule that failed while the event ran.
_COMPLAINT = re.compile(r"invalid|ignoring|fail|error|unknown|no matching|not found", re.I)


def _fat16_image(path: Path, serial: int) -> str:
    """A blank FAT16 file system (no mkfs.vfat needed); returns the UUID blkid reports."""
    size = 16 << 20
    sector, per_cluster, reserved, fats, root_entries, per_fat = 512, 4, 4, 2, 512, 32
    boot = bytearray(sector)
    boot[0:11] = b"\xeb\x3c\x90MSDOS5.0"
    struct.pack_into(
        "<HBHBHHBHHHII",
        boot,
        11,
        sector,
        per_cluster,
        reserved,
        fats,
        root_entries,
        size // sector,
        0xF8,  # media: fixed disk
        per_fat,
        32,  # sectors per track
        64,  # heads
        0,
        0,
    )
    struct.pack_into("<BBBI11s8s", boot, 36, 0x80, 0, 0x29, serial, b"NO NAME    ", b"FAT16   ")
    boot[510:512] = b"\x55\xaa"
    with path.open("wb") as image:
        image.truncate(size)
        image.write(boot)
        for copy in range(fats):
            image.seek((reserved + copy * per_fat) * sector)
            image.write(b"\xf8\xff\xff\xff")  # media byte and end-of-chain of entry 1
    return f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"


@dataclass(frozen=True)
class Loop:
    name: str
    uuid: str


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    missing = [tool for tool in ("udevadm", "unshare", "losetup") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: apt-get install udev util-linux)")
    if os.geteuid() != 0:
        pytest.skip("udevadm test on a loop device needs root (loop devices, mount namespaces)")
    image = tmp_path_factory.mktemp("card") / "card.img"
    uuid = _fat16_image(image, 0x1234ABCD)
    attached = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        yield Loop(Path(device).name, uuid)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def _udevadm_in_namespace(
    rules: Path, loop: Loop, action: str, db: str = ""
) -> subprocess.CompletedProcess[str]:
    major, minor = Path(f"/sys/class/block/{loop.name}/dev").read_text().strip().split(":")
    argv = ["unshare", "--mount", "sh", "-c", _NAMESPACE_SCRIPT, "sh", str(rules)]
    return subprocess.run(
        [*argv, loop.name, major, minor, action, db],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def udevadm_test(
    tmp_path: Path, loop: Loop, action: str, local_rule: str = "", db: str = ""
) -> dict[str, str | list[str]]:
    """Run the real rule (and a local one before it) on the loop device; what udev decided."""
    rules = tmp_path / "rules.d"
    rules.mkdir()
    shutil.copy(RULE, rules / RULE.name)
    if local_rule:
        (rules / "90-dronesync-local.rules").write_text(local_rule + "\n")
    result = _udevadm_in_namespace(rules, loop, action, db)
    output = result.stdout + result.stderr
    if result.returncode != 0 and "unshare failed" in output:
        pytest.skip(f"no private mount namespace here: {output.strip()}")
    assert result.returncode == 0, output
    assert f"Reading rules file: /run/udev/rules.d/{RULE.name}" in output, output
    complaints = [
        line
        for line in output.splitlines()
        if _COMPLAINT.search(line) and (RULE.name in line or line.startswith(f"{loop.name}: "))
    ]
    assert complaints == [], "\n".join(complaints)
    decided: dict[str, str | list[str]] = {"run": []}
    for line in result.stdout.splitlines():
        if line.startswith("run: '") and line.endswith("'"):
            run = decided["run"]
            assert isinstance(run, list)
            run.append(line[len("run: '") : -1])
        elif re.fullmatch(r"[A-Z_]+=.*", line):
            key, _, value = line.partition("=")
            decided[key] = value
    return decided


def _card_commands(decided: dict[str, str | list[str]]) -> list[str]:
    run = decided["run"]
    assert isinstance(run, list)
    return [command for command in run if command.startswith(SYSTEMD_MOUNT)]


@pytest.mark.parametrize("action", ["add", "change"])
def test_udev_mounts_a_device_declared_a_card(tmp_path: Path, loop: Loop, action: str) -> None:
    local = f'KERNEL=="{loop.name}", ENV{{DRONESYNC_CARD}}="1"'
    decided = udevadm_test(tmp_path, loop, action, local)
    assert decided["ID_FS_TYPE"] == "vfat"
    assert decided["ID_FS_UUID"] == loop.uuid
    assert _card_commands(decided) == [mount_command(f"/dev/{loop.name}", loop.uuid)]
    assert decided["UDISKS_IGNORE"] == "1"
    assert "systemd" in str(decided["TAGS"]).split(":")
    assert str(decided["SYSTEMD_WANTS"]).split() == ["dronesync.service"]
    assert decided["DRONESYNC_MOUNTED"] == "1"


def test_udev_mounts_a_card_once(tmp_path: Path, loop: Loop) -> None:
    local = f'KERNEL=="{loop.name}", ENV{{DRONESYNC_CARD}}="1"'
    decided = udevadm_test(tmp_path, loop, "change", local, db="E:DRONESYNC_MOUNTED=1")
    assert _card_commands(decided) == []
    assert decided["DRONESYNC_MOUNTED"] == "1"
    assert decided["UDISKS_IGNORE"] == "1"


@pytest.mark.parametrize(
    "local_rule",
    [
        "",  # a loop device is not removable media
        'ENV{DRONESYNC_CARD}="0"',
        # A UUID that would escape the cards folder (udev's glob must catch it, as ours does).
        'ENV{DRONESYNC_CARD}="1", ENV{ID_FS_UUID}="../../etc"',
        'ENV{DRONESYNC_CARD}="1", ENV{ID_FS_TYPE}="ext4"',
    ],
    ids=["no override", "excluded", "unsafe UUID", "ext4"],
)
def test_udev_leaves_other_devices_alone(tmp_path: Path, loop: Loop, local_rule: str) -> None:
    local = f'KERNEL=="{loop.name}", {local_rule}' if local_rule else ""
    decided = udevadm_test(tmp_path, loop, "change", local)
    assert _card_commands(decided) == []
    assert "UDISKS_IGNORE" not in decided
    assert "SYSTEMD_WANTS" not in decided


def test_udev_does_nothing_on_removal(tmp_path: Path, loop: Loop) -> None:
    local = f'KERNEL=="{loop.name}", ENV{{DRONESYNC_CARD}}="1"'
    decided = udevadm_test(tmp_path, loop, "remove", local)
    assert _card_commands(decided) == []


def test_udev_complaints_are_caught(tmp_path: Path, loop: Loop) -> None:
    # The check above relies on udevadm printing what is wrong: make sure it still does.
    broken = tmp_path / "broken"
    broken.mkdir()
    original = RULE.read_text()
    text = original.replace('ENV{ID_FS_USAGE}!="filesystem"', 'ENV{ID_FS_USAGE}~"filesystem"')
    assert text != original
    (broken / RULE.name).write_text(text)
    result = _udevadm_in_namespace(broken, loop, "add")
    assert result.returncode == 0  # udevadm test does not fail on a broken rule...
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if RULE.name in line and _COMPLAINT.search(line)
    ]
    assert complaints, result.stderr  # ...but says so.
