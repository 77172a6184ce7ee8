"""Object keys in a fleet's bucket, and the record of this box's unfinished multipart uploads.

Under ``PREFIX/``:

- ``objects/sha256/<first two hex>/<hash>``: an image, once, whoever sent it (``content``);
- ``<box>/<dataset>/<path inside the dataset>``: an image where people browse (``mirror``);
- ``datasets/<box>/<dataset>/manifest.json``: a dataset's manifest, written last;
- ``datasets/<box>/checksum-probe``: what asks the store whether it checks SHA-256s
  (``kit.s3checks``; a store that checks never keeps it, one that does not has it deleted).

Bytes of a path outside ``[A-Za-z0-9._~/-]`` are percent-encoded (``%`` too), so the mapping is
one-to-one and a name that is not UTF-8 still makes a valid key; a box or dataset name has its
``/`` encoded as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote_from_bytes, unquote

MANIFEST = "manifest.json"


def quoted(raw: bytes, *, slash: bool = True) -> str:
    """``raw`` as a key's part: one-to-one, ASCII."""
    return quote_from_bytes(raw, safe="/-._~" if slash else "-._~")


class Keys:
    """Where one box's objects and manifests go in the bucket."""

    def __init__(self, prefix: str, box: str) -> None:
        self.base = f"{prefix}/" if prefix else ""
        self.datasets = manifests_prefix(prefix)
        self.box = quoted(box.encode(), slash=False)

    def content(self, sha256: str) -> str:
        """The key of an image under its hash."""
        return f"{self.base}objects/sha256/{sha256[:2]}/{sha256}"

    def mirror(self, dataset: str, path: bytes) -> str:
        """The key of an image under this box, its dataset and its path."""
        return f"{self.base}{self.box}/{quoted(dataset.encode(), slash=False)}/{quoted(path)}"

    def probe(self) -> str:
        """The key this box asks the store about checksums under (never a manifest's)."""
        return f"{self.datasets}{self.box}/checksum-probe"

    def manifest(self, dataset: str) -> str:
        """The key of a dataset's manifest."""
        name = quoted(dataset.encode(), slash=False)
        return f"{self.datasets}{self.box}/{name}/{MANIFEST}"


def manifests_prefix(prefix: str) -> str:
    """The prefix every box's manifests are under."""
    return f"{prefix}/datasets/" if prefix else "datasets/"


def manifest_place(prefix: str, key: str) -> tuple[str, str] | None:
    """(box, dataset) a manifest's key names, decoded; None for a key that is not a manifest's."""
    base = manifests_prefix(prefix)
    parts = key[len(base) :].split("/") if key.startswith(base) else []
    if len(parts) != 3 or parts[2] != MANIFEST or not parts[0] or not parts[1]:
        return None
    box, dataset = (unquote(part, errors="backslashreplace") for part in parts[:2])
    return box, dataset


def alternative(path: bytes, n: int) -> bytes:
    """The ``n``-th name for a path whose name is taken by other content: ``NAME~2.EXT``."""
    if n == 1:
        return path
    head, sep, name = path.rpartition(b"/")
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem:
        stem, ext = name, b""
    return head + sep + stem + b"~%d" % n + (b"." + ext if ext else b"")


class UploadLog:
    """The multipart uploads this box began: one small file each while it runs.

    Boxes of a fleet write the same keys: an unfinished upload under ``objects/`` may be
    another box's, on its wire right now. Each box aborts only the uploads this log says it
    began and never ended (a crash, a SIGKILL, a power cut, an abort that failed) and that
    no upload of this process is sending.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, upload_id: str) -> Path:
        return self.folder / (hashlib.sha256(upload_id.encode()).hexdigest()[:32] + ".json")

    def started(self, key: str, upload_id: str) -> None:
        """Record the upload before any part is sent."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._file(upload_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "upload_id": upload_id}), encoding="utf-8")
        os.replace(tmp, path)

    def ended(self, upload_id: str) -> None:
        """The upload was completed or aborted."""
        self._file(upload_id).unlink(missing_ok=True)

    def records(self) -> list[tuple[Path, str, str]]:
        """(record, key, upload id) of every upload begun and not known to have ended."""
        try:
            paths = sorted(p for p in self.folder.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []
        found = []
        for path in paths:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                record = json.loads(path.read_text(encoding="utf-8"))
                found.append((path, str(record["key"]), str(record["upload_id"])))
        return found
