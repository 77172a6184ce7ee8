"""Synthetic cards, and the daemon's configuration file for a card or a folder."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from benchkit.files import KIB, MIB, write_distinct
from benchkit.settling import settle
from benchkit.smallcpu import CardImage

JPEG_SOI = b"\xff\xd8\xff\xe0"  # every card file starts like a JPEG


@dataclass(frozen=True)
class Card:
    """A synthetic card: dataset folders of distinct files (a JPEG header, then random bytes)."""

    root: Path
    files: int
    nbytes: int
    label: str
    image: CardImage | None = None  # --card-mbps: mounted at ``root`` for a run, read cold


def make_card(root: Path, files: int, size: int, folders: int, pool: bytes, label: str) -> Card:
    """``files`` files of ``size`` bytes in ``folders`` folders, each distinct, from ``pool``."""
    per_folder = math.ceil(files / folders)
    total = 0
    for i in range(files):
        folder = root / f"mission-{i // per_folder:02d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        write_distinct(folder / f"DJI_{i:06d}.JPG", i, size, pool, JPEG_SOI)
        total += size
    settle()
    return Card(root, files, total, label)


def card_shape(args: argparse.Namespace, shape: str) -> tuple[int, int, int, str]:
    """Files, bytes per file, folders and label of the card of ``shape``."""
    if shape == "big":
        files, size, folders = args.big_files, int(args.big_mb * MIB), 1
        return files, size, folders, f"{files} x {args.big_mb:g} MiB"
    if shape == "images":
        files, size = args.image_files, int(args.image_mb * MIB)
        return files, size, 4, f"{files} x {args.image_mb:g} MiB"
    files, size = args.small_files, int(args.small_kb * KIB)
    return files, size, 10, f"{files} x {args.small_kb:g} KiB"


def toml_str(value: Path | str) -> str:
    """A TOML basic string holding ``value``."""
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(
    path: Path,
    state: Path,
    archive: Path,
    source: Path | str,
    *,
    stable_s: float,
    spool: Path | None = None,
    spool_gb: float = 1.0,
    require_mount: bool = False,
    target: list[str] | None = None,
    upload: list[str] | None = None,
) -> None:
    """The daemon's configuration: one target, one source (a folder or a card glob).

    The target is a directory (``archive``) unless ``target`` gives the lines of its table;
    ``upload``: lines of the ``[upload]`` table.
    """
    lines = [f"state_dir = {toml_str(state)}", 'log_level = "info"']
    if upload:
        lines += ["[upload]", *upload]
    # The page stays on, as by default, on a free port: benches side by side do not collide.
    lines += ["[web]", 'listen = "127.0.0.1:0"', "[targets.a]"]
    lines += target or ['type = "directory"', f"path = {toml_str(archive)}"]
    if spool is not None:
        lines += ["[spool]", f"dir = {toml_str(spool)}", f"max_gb = {spool_gb:.3f}"]
    lines += [
        "[[sources]]",
        f"path = {toml_str(source)}",
        'target = "a"',
        f"stable_s = {stable_s}",
        "quiet_s = 3600",
    ]
    if spool is not None:
        lines.append("spool = true")
    if require_mount:
        lines.append("require_mount = true")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
