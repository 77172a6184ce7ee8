"""A small streaming ``multipart/form-data`` parser for the local test servers.

The body is pulled through a ``read(n)`` callable in large chunks (1 MiB by default) and each
part's data is handed on as it arrives, so an upload of any size never sits in memory whole.
Boundaries are found with ``bytearray.find`` over the buffered chunk, never a per-byte loop, so
parsing costs far less than hashing and writing the same bytes.

It behaves like busboy (the parser under multer, which NodeODM uses) where that matters to a
client:

* a file name is reduced to its last path component, and ``.`` or ``..`` become empty;
* ``filename*`` (RFC 5987/2231) wins over ``filename``;
* a body that ends before the closing boundary raises :class:`TruncatedBodyError` only *after* the
  data received so far has been handed on, because the real servers leave that partial file on
  disk and a faithful fake has to do the same.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterator

CHUNK_SIZE = 1 << 20
MAX_HEADER_BYTES = 16 * 1024
MAX_BOUNDARY = 200

# One ``; key=value`` parameter; the value is a quoted string (with backslash escapes) or a token.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPE = re.compile(r"\\(.)")


class MultipartError(ValueError):
    """The body is not well-formed ``multipart/form-data`` (messages are busboy's)."""


class TruncatedBodyError(MultipartError):
    """The body ended before the closing boundary."""

    def __init__(self) -> None:
        super().__init__("Unexpected end of multipart data")


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``form-data; name="a"; filename="b"`` into its lower-cased value and parameters."""
    main, sep, rest = value.partition(";")
    params: dict[str, str] = {}
    if sep:
        for match in _PARAM.finditer(";" + rest):
            raw = match.group(2).strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = _ESCAPE.sub(r"\1", raw[1:-1])
            params[match.group(1).lower()] = raw
    return main.strip().lower(), params


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart content type; ``None`` when the body is not multipart.

    Raises :class:`MultipartError` for a multipart type without a usable boundary.
    """
    main, params = parse_header_params(content_type)
    if not main.startswith("multipart/"):
        return None
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise MultipartError("Multipart: Boundary not found")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError("Multipart: Boundary not found") from None


def _decode_ext_value(value: str) -> str | None:
    """Decode an RFC 5987 ``charset'lang'percent-encoded`` value; ``None`` if it is not one."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        return None
    charset = parts[0] or "utf-8"
    try:
        return urllib.parse.unquote(parts[2], encoding=charset, errors="replace")
    except LookupError:
        return None


def basename(name: str) -> str:
    """The last path component, as busboy keeps it (``.`` and ``..`` give ``""``)."""
    tail = re.split(r"[/\\]", name)[-1]
    return "" if tail in {".", ".."} else tail


class Part:
    """One part of the body: its headers, then its data through :meth:`chunks`."""

    def __init__(self, reader: MultipartReader, headers: dict[str, str]) -> None:
        self._reader = reader
        self.headers = headers
        self.done = False
        _, params = parse_header_params(headers.get("content-disposition", ""))
        self.name: str | None = params.get("name")
        raw = params.get("filename")
        if "filename*" in params:
            decoded = _decode_ext_value(params["filename*"])
            if decoded is not None:
                raw = decoded
        self.raw_filename: str | None = raw
        # A part with a filename parameter is a file even when the name is empty.
        self.filename: str | None = None if raw is None else basename(raw)
        self.content_type: str | None = headers.get("content-type")

    def chunks(self) -> Iterator[bytes]:
        """The part's data, in pieces of up to the reader's chunk size."""
        return self._reader._body_chunks(self)

    def read_all(self, limit: int = CHUNK_SIZE) -> bytes:
        """The whole part's data; anything past ``limit`` bytes is read but dropped."""
        out = bytearray()
        for chunk in self.chunks():
            if len(out) < limit:
                out += chunk[: limit - len(out)]
        return bytes(out)


class MultipartReader:
    """Pulls parts out of a multipart body one after the other."""

    def __init__(
        self, read: Callable[[int], bytes], boundary: bytes, chunk_size: int = CHUNK_SIZE
    ) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise MultipartError("Multipart: Boundary not found")
        self._read = read
        self._chunk_size = chunk_size
        self._delim = b"\r\n--" + boundary
        # A virtual CRLF in front lets the first boundary, at the very start of the body, match
        # the same delimiter as every later one.
        self._buf = bytearray(b"\r\n")
        self._eof = False
        self._state = "preamble"  # then "after_delim", "body", "done"
        self._truncated = False
        self._current: Part | None = None

    def _take(self, count: int, skip: int = 0) -> bytes:
        """The first ``count`` buffered bytes, removed with ``skip`` more (one copy only)."""
        with memoryview(self._buf) as view:
            chunk = bytes(view[:count])
        del self._buf[: count + skip]
        return chunk

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._read(self._chunk_size)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _truncate(self) -> TruncatedBodyError:
        self._state = "done"
        self._truncated = True
        return TruncatedBodyError()

    def _need(self, count: int) -> None:
        while len(self._buf) < count:
            if not self._fill():
                raise self._truncate()

    def next_part(self) -> Part | None:
        """The next part (the previous one's unread data is skipped); ``None`` after the last."""
        if self._current is not None and not self._current.done:
            for _ in self._current.chunks():
                pass
        if self._truncated:
            # Also when the consumer of a truncated part stopped before the error was raised.
            raise TruncatedBodyError
        if self._state == "done":
            return None
        if self._state == "preamble":
            self._skip_preamble()
        self._need(2)
        if self._buf[:2] == b"--":
            self._state = "done"
            return None
        self._skip_boundary_line()
        part = Part(self, self._read_headers())
        self._current = part
        self._state = "body"
        return part

    def _skip_preamble(self) -> None:
        keep = len(self._delim) - 1
        while True:
            index = self._buf.find(self._delim)
            if index >= 0:
                del self._buf[: index + len(self._delim)]
                self._state = "after_delim"
                return
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            if not self._fill():
                raise self._truncate()

    def _skip_boundary_line(self) -> None:
        # After the boundary: optional transport padding (spaces, tabs), then CRLF.
        start = 0
        while True:
            index = self._buf.find(b"\r\n", start)
            if index >= 0:
                if self._buf[:index].strip(b" \t"):
                    self._state = "done"
                    raise MultipartError("Malformed part header")
                del self._buf[: index + 2]
                return
            if len(self._buf) > MAX_HEADER_BYTES:
                self._state = "done"
                raise MultipartError("Malformed part header")
            start = max(0, len(self._buf) - 1)
            if not self._fill():
                raise self._truncate()

    def _read_headers(self) -> dict[str, str]:
        start = 0
        while True:
            self._need(2)
            if self._buf[:2] == b"\r\n":
                del self._buf[:2]
                return {}
            index = self._buf.find(b"\r\n\r\n", start)
            if index >= 0:
                block = bytes(self._buf[:index])
                del self._buf[: index + 4]
                return self._parse_headers(block)
            if len(self._buf) > MAX_HEADER_BYTES:
                self._state = "done"
                raise MultipartError("Malformed part header")
            start = max(0, len(self._buf) - 3)
            if not self._fill():
                raise self._truncate()

    @staticmethod
    def _parse_headers(block: bytes) -> dict[str, str]:
        headers: dict[str, str] = {}
        last: str | None = None
        for line in block.decode("utf-8", errors="replace").split("\r\n"):
            if line[:1] in {" ", "\t"} and last is not None:
                headers[last] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                continue
            last = key.strip().lower()
            headers[last] = value.strip()
        return headers

    def _body_chunks(self, part: Part) -> Iterator[bytes]:
        # State is always updated before a yield, so a consumer that stops early and asks again
        # (or next_part draining the rest) continues exactly where it was.
        if part.done or part is not self._current:
            return
        delim_len = len(self._delim)
        while True:
            index = self._buf.find(self._delim)
            if index >= 0:
                chunk = self._take(index, delim_len)
                part.done = True
                self._state = "after_delim"
                if chunk:
                    yield chunk
                return
            # Everything except a tail that could be the start of a delimiter is part data.
            safe = len(self._buf) - (delim_len - 1)
            if safe > 0:
                yield self._take(safe)
            if not self._fill():
                part.done = True
                error = self._truncate()
                chunk = self._take(len(self._buf))
                if chunk:
                    yield chunk
                raise error
