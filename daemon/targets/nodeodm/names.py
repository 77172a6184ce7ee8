"""The name each file has in its task, and the ancillary files that name images.

An image keeps its file name unless another file of the dataset already has it; such a file
gets a short hash of its path in its name. The first file sent under a name keeps it for the
dataset, recorded in the journal, so the choice holds for every later task and across
restarts. ODM's ancillary files (``gcp_list.txt``, ``geo.txt``, ``image_groups.txt``) go into
the task too; one that names a renamed image is reported at commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

from daemon.errors import PermanentTargetError
from daemon.targets.base import DatasetRef, TargetState, UploadItem
from daemon.targets.nodeodm import ODM_ANCILLARY

_SAFE = re.compile(rb"[^A-Za-z0-9._-]")
_MAX_PLAIN_NAME = 150
# ODM reads these beside the images; they name images by file name.
ANCILLARY = frozenset(ODM_ANCILLARY)
_MAX_ANCILLARY = 4 << 20
_IMAGE_NAME = re.compile(r"[^\s,;\"']+\.(?:jpe?g|tiff?|dng|png)\b", re.IGNORECASE)
_RENAMED = "nodeodm.renamed:"  # memo per name: a file of the dataset went under another
_REFS = "nodeodm.refs:"  # memo per ancillary file: the image names it mentions
_WARNING = "nodeodm.warning"  # an ancillary file names a renamed image (set at commit)


def file_memo(name: str) -> str:
    """The memo of the file sent as ``name``: "<task> sending", "<task> sent" or "gave-up"."""
    return f"nodeodm.file:{name}"


def plain_name(key: bytes) -> str | None:
    """The file's own name when it can go to the node as it is, else None."""
    base = key.rpartition(b"/")[2]
    if _SAFE.search(base) or len(base) > _MAX_PLAIN_NAME or not base.strip(b"._"):
        return None
    return base.decode("ascii")


def hashed_name(key: bytes) -> str:
    """The file's name with ten hex digits of the SHA-256 of its whole path before the extension.

    Only ``[A-Za-z0-9._-]`` is sent, so ``100MEDIA/DJI_0001.JPG`` and ``101MEDIA/DJI_0001.JPG``
    stay apart when both are in one dataset.
    """
    safe = _SAFE.sub(b"_", key.rpartition(b"/")[2])
    stem, dot, ext = safe.rpartition(b".")
    if not dot or not stem:
        stem, ext = safe, b""
    tag = hashlib.sha256(key).hexdigest()[:10].encode()
    return (stem[:100] + b"-" + tag + (b"." + ext[:20] if ext else b"")).decode("ascii")


def _claim_memo(name: str) -> str:
    return f"nodeodm.name:{name}"


class Names:
    """Which file of a dataset has which name on the node, kept in the journal."""

    def __init__(self, state: TargetState) -> None:
        self._state = state

    def name_of(self, dataset: DatasetRef, key: bytes) -> str:
        """The name the file has (or will have) on the node; see :meth:`claim`."""
        plain = plain_name(key)
        if plain is not None:
            owner = self._state.get_memo(dataset.id, _claim_memo(plain))
            if owner is None or owner == key.hex():
                return plain
        return hashed_name(key)

    def claim(self, dataset: DatasetRef, key: bytes) -> str:
        """Record the file's name on the node: its own unless another file of the dataset has it.

        A second ancillary file of one name is refused: ODM reads these by name.
        """
        plain = plain_name(key)
        if plain is None:
            return hashed_name(key)
        memo = _claim_memo(plain)
        owner = self._state.get_memo(dataset.id, memo)
        if owner is None:
            self._state.put_memo(dataset.id, memo, key.hex())
            return plain
        if owner == key.hex():
            return plain
        if plain in ANCILLARY:
            # ODM reads these by name (and takes any other .txt for a GCP file): one each.
            first = bytes.fromhex(owner).decode("utf-8", "backslashreplace")
            raise PermanentTargetError(
                f"a second {plain} in the dataset: {first} is the one sent;"
                " keep one per dataset folder"
            )
        self._state.put_memo(dataset.id, f"{_RENAMED}{plain}", "1")
        return hashed_name(key)

    async def sent(self, dataset: DatasetRef, name: str, item: UploadItem) -> None:
        """After an ancillary file was sent: record the image names it mentions."""
        if name in ANCILLARY:
            refs = await asyncio.to_thread(_image_names, item)
            self._state.put_memo(dataset.id, f"{_REFS}{name}", json.dumps(refs))

    def check_refs(self, dataset: DatasetRef) -> str | None:
        """At commit: the warning for ancillary files that name a renamed image, kept."""
        warning = self._renamed_refs(dataset)
        self._state.put_memo(dataset.id, _WARNING, warning)
        return warning

    def warning(self, dataset: DatasetRef) -> str | None:
        """The warning :meth:`check_refs` found at commit, if any."""
        return self._state.get_memo(dataset.id, _WARNING)

    def _renamed_refs(self, dataset: DatasetRef) -> str | None:
        """Which ancillary files name an image that reached the node under another name."""
        renamed = self._state.memos(dataset.id, _RENAMED)
        problems = []
        for memo, value in sorted(self._state.memos(dataset.id, _REFS).items()):
            # A name that several images of the dataset have: all but one were renamed.
            clashes = [r for r in json.loads(value) if f"{_RENAMED}{r}" in renamed]
            if clashes:
                shown = ", ".join(clashes[:3]) + (" ..." if len(clashes) > 3 else "")
                problems.append(f"{memo.partition(':')[2]} names {shown}")
        if not problems:
            return None
        return (
            "; ".join(problems)
            + ": images of that name in several folders reached the node renamed (a hash"
            " of their path in the name); fix the file's names, or keep one folder per dataset"
        )


def _image_names(item: UploadItem) -> list[str]:
    """The image names an ancillary file mentions (worker thread; checked at commit)."""
    try:
        with item.path.open("rb") as f:
            text = f.read(_MAX_ANCILLARY).decode("utf-8", "replace")
    except OSError:
        return []  # sent already; the check at commit is a courtesy
    return sorted({m.group(0).rpartition("/")[2] for m in _IMAGE_NAME.finditer(text)})
