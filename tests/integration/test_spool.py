"""Spool mode: the card is read once, at card speed, and can be removed long before uploads end.

A plain folder stands in for the card here (``spool = true`` makes it one); pulling it is a
rename. The uploads are slowed by ``bandwidth_limit`` so that the copying clearly runs ahead.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tests.conftest import Box, wait_until
from tests.fakes.webhook import Webhook


def _card(folder: Path, count: int, size: int = 120_000) -> list[str]:
    rng = random.Random(11)
    hashes = []
    (folder / "DCIM" / "100MEDIA").mkdir(parents=True)
    for n in range(count):
        data = rng.randbytes(size)
        (folder / "DCIM" / "100MEDIA" / f"DJI_{n:04d}.JPG").write_bytes(data)
        hashes.append(hashlib.sha256(data).hexdigest())
    return sorted(hashes)


def _configure(box: Box, cards: Path, spool: Path, *, max_gb: float, extra: str = "") -> None:
    box.write_config(
        upload="bandwidth_limit = 150000\nconcurrency = 2",
        source_path=f"{cards}/*",
        source='spool = true\nlayout = "dcim"\ndataset = "{label}-{folder}"\n',
        extra=f'[spool]\ndir = "{spool}"\nmax_gb = {max_gb}\nmin_free_gb = 0\n{extra}',
    )


def _uploaded(box: Box) -> int:
    return sum(d["files"]["uploaded"] for d in box.status()["datasets"])


def _archived(box: Box) -> list[str]:
    return sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in box.archive.rglob("*") if p.is_file()
    )


def test_the_card_can_be_removed_once_copied_and_uploads_go_on_without_it(
    box: Box, tmp_path: Path
) -> None:
    hook = Webhook()
    cards, spool = tmp_path / "cards", tmp_path / "spool"
    cards.mkdir()
    expected = _card(tmp_path / "staging", 10)
    _configure(box, cards, spool, max_gb=1, extra=f'[notifications]\nwebhook_url = "{hook.url}"\n')
    proc = box.start()
    (tmp_path / "staging").rename(cards / "PILOT")

    wait_until(
        lambda: any(c["removable"] for c in box.status()["cards"]),
        what="the card said removable",
    )
    dataset = box.datasets()["PILOT-100MEDIA"]
    assert dataset["files"]["uploaded"] < 10, "removable before every upload ended"
    assert "PILOT (" in box.cli("status").stdout
    assert "can be removed" in box.cli("status").stdout
    wait_until(lambda: hook.events("PILOT") == ["card_removable"], what="the notification")
    # The pilot takes the card: uploads go on from the spool, nothing pauses or fails.
    (cards / "PILOT").rename(tmp_path / "in-the-pilots-pocket")
    wait_until(
        lambda: box.datasets()["PILOT-100MEDIA"]["state"] == "processed",
        timeout=90,
        what="the dataset uploaded from the spool and processed",
    )
    assert box.datasets()["PILOT-100MEDIA"]["files"]["failed"] == 0
    assert _archived(box) == expected
    assert list(spool.iterdir()) == []  # every copy freed once uploaded
    assert box.stop(proc) == 0
    hook.close()


def test_a_full_spool_waits_with_a_message_and_loses_nothing(box: Box, tmp_path: Path) -> None:
    cards, spool = tmp_path / "cards", tmp_path / "spool"
    cards.mkdir()
    expected = _card(tmp_path / "staging", 8)
    # room for about two copies at a time
    _configure(box, cards, spool, max_gb=round(260_000 / 1024**3, 9))
    proc = box.start()
    (tmp_path / "staging").rename(cards / "PILOT")
    full = wait_until(
        lambda: (box.status().get("spool") or {}).get("full"), what="the spool full message"
    )
    assert "copying off cards waits for uploads" in full
    assert "spool full" in box.cli("status").stdout
    wait_until(
        lambda: box.datasets().get("PILOT-100MEDIA", {}).get("state") == "processed",
        timeout=90,
        what="every file through the small spool",
    )
    assert _archived(box) == expected
    assert box.datasets()["PILOT-100MEDIA"]["files"]["failed"] == 0
    assert box.stop(proc) == 0


def test_a_lost_spool_copy_fails_its_file_and_retry_reads_the_card(
    box: Box, tmp_path: Path
) -> None:
    cards, spool = tmp_path / "cards", tmp_path / "spool"
    cards.mkdir()
    expected = _card(tmp_path / "staging", 6)
    _configure(box, cards, spool, max_gb=1)
    proc = box.start()
    (tmp_path / "staging").rename(cards / "PILOT")
    wait_until(lambda: any(c["removable"] for c in box.status()["cards"]), what="all spooled")
    last = max(spool.iterdir(), key=lambda p: int(p.stem))  # the last one to be uploaded
    last.unlink()
    failed = wait_until(
        lambda: [
            f
            for f in box.status("PILOT-100MEDIA", files=True)["datasets"][0]["file_list"]
            if f["status"] == "failed"
        ],
        what="the file whose copy vanished failed",
    )
    assert "reads it from the card" in failed[0]["last_error"]
    box.cli("retry", "--all")
    wait_until(
        lambda: box.datasets()["PILOT-100MEDIA"]["state"] == "processed",
        timeout=60,
        what="processed after the retry",
    )
    assert _archived(box) == expected
    assert box.stop(proc) == 0


def test_folders_moved_in_whole_are_read_once(box: Box, tmp_path: Path) -> None:
    """Watcher events that meet files whose copies wait for the spool's sync read nothing again.

    Each folder moved in brings a rescan and an event per file while its first files are
    being copied; a copy waiting for the spool's sync is not made a second time.
    """
    spool = tmp_path / "spool"
    box.write_config(
        source="spool = true\n",
        extra=f'[spool]\ndir = "{spool}"\nmax_gb = 1\nmin_free_gb = 0\n',
    )
    # Released at once, so copies are made while the watcher still reports the folder's files.
    text = box.config.read_text(encoding="utf-8")
    box.config.write_text(text.replace("stable_s = 0.3", "stable_s = 0"), encoding="utf-8")
    proc = box.start()
    count = 0
    for flight in range(4):
        staging = tmp_path / f"flight-{flight}" / "mission"
        staging.mkdir(parents=True)
        for n in range(300):
            (staging / f"DJI_{n:04d}.JPG").write_bytes(random.randbytes(65536))
        count += 300
        staging.parent.rename(box.inbox / f"flight-{flight}")
        wait_until(
            lambda: _uploaded(box) == count,  # noqa: B023 (waited for within this pass)
            timeout=60,
            what="every file uploaded",
        )
    assert box.stop(proc) == 0
    stopped = [line for line in box.log().splitlines() if '"stopped"' in line][-1]
    assert f'"files_hashed": {count},' in stopped, stopped
