"""One file as the body of an upload, hashed beside the sending.

A NodeODM upload is one multipart request per image, and the bytes it sends must be the bytes
that were hashed. Read, hashed and sent in one thread, the sending would wait on the hashing
and that one thread's CPU would bound the upload. :class:`CheckedRead` reads each chunk into
one of a few reused buffers for the sender while a second thread hashes the same buffer
(hashlib lets go of the GIL). The caller sends the body's last part only after
:meth:`CheckedRead.verify` found the recorded hash, so a file that changed reaches the server
cut short, never whole and wrong. The bytes hashed are the bytes sent.

:class:`FilePost` writes such a request with :mod:`http.client`, the chunks going from the
buffers to the socket without passing through httpx's Python: the request httpx would have
sent (same URL, same headers), on a connection of its own. Only ``http://`` without a proxy
goes this way (:func:`direct_ok`); TLS and proxies are httpx's, which takes the same chunks
as ``bytes``.

``sendfile(2)`` is not used: it saves the client a copy but costs the receiving side more
(page-sized pieces; measured in docs/performance.md), and the page cache could change between
the read that is hashed and the one that is sent.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import threading
import urllib.request
from collections.abc import Iterator

import httpx

from daemon.errors import FileChangedError, SourceError, TransientTargetError
from daemon.hashing import CHUNK
from daemon.targets.base import Transfer, UploadItem

# Chunks read ahead of the check: the sender waits when it is this far ahead.
_BUFFERS = 3
# The reply of an upload is a line of JSON; more than this is not read.
_MAX_REPLY = 1 << 20
# How long a reply is waited for after the server broke off the sending.
_EARLY_REPLY_S = 2.0


def direct_ok(url: httpx.URL) -> bool:
    """Whether a request to ``url`` may bypass httpx: plain HTTP, no proxy set at all.

    With a proxy set, httpx decides whether ``no_proxy`` exempts the node (its rules are not
    urllib's), and the upload goes through httpx.
    """
    if url.scheme != "http":
        return False
    proxies = urllib.request.getproxies()  # http_proxy, HTTP_PROXY, all_proxy, ...
    return not (proxies.get("http") or proxies.get("all"))


class CheckedRead:
    """A file read in chunks for sending while a thread of its own hashes each chunk.

    Use as a context manager: :meth:`chunks` hands out each chunk as a view of one of up to
    ``_BUFFERS`` reused buffers, valid until the next one is asked for; once the block is left,
    :meth:`verify` says whether what was read is the file that was hashed.
    """

    def __init__(self, fd: int, item: UploadItem) -> None:
        self._fd = fd
        self._item = item
        self._todo: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._made = 0
        self._digest = hashlib.sha256()
        self._thread = threading.Thread(target=self._hash, name="dronesync-check", daemon=True)
        self.read = 0

    def __enter__(self) -> CheckedRead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._todo.put(None)
        self._thread.join()  # its buffers are not reused, and fd is closed next

    def _hash(self) -> None:
        while (chunk := self._todo.get()) is not None:
            view, n = chunk
            self._digest.update(view[:n])
            self._free.put(view)

    def _buffer(self) -> memoryview:
        # Made as needed (a small image needs one, and each is a zeroed MiB); past
        # _BUFFERS, this waits for the check to give one back.
        if self._made < _BUFFERS and self._free.empty():
            self._made += 1
            return memoryview(bytearray(CHUNK))
        return self._free.get()

    def chunks(self) -> Iterator[memoryview]:
        """The file's bytes in order; the buffer behind a chunk is handed to the check too."""
        item = self._item
        while True:
            if self.read >= item.size:
                # Only the end is left to see: one byte, not a buffer of its own.
                try:
                    more = os.read(self._fd, 1)
                except OSError as exc:
                    raise SourceError(f"{item.path}: read error: {exc.strerror}") from exc
                if more:
                    raise FileChangedError(f"{item.path}: grew while it was being uploaded")
                return
            view = self._buffer()
            try:
                n = os.readv(self._fd, [view])
            except OSError as exc:
                raise SourceError(f"{item.path}: read error: {exc.strerror}") from exc
            if not n:
                return
            self.read += n
            if self.read > item.size:
                raise FileChangedError(f"{item.path}: grew while it was being uploaded")
            # Both read the buffer at once; it is written again only once both are done.
            self._todo.put((view, n))
            yield view[:n]

    def verify(self) -> None:
        """Raise :class:`FileChangedError` unless the bytes read are the file as hashed."""
        item = self._item
        after = os.fstat(self._fd)
        if self.read != item.size or after.st_mtime_ns != item.mtime_ns:
            raise FileChangedError(f"{item.path}: changed while it was being uploaded")
        if self._digest.hexdigest() != item.sha256:
            raise FileChangedError(f"{item.path}: content differs from its recorded hash")


class FilePost:
    """One POST whose body is ``head``, the file behind ``fd``, then what :meth:`finish` allows.

    ``request`` is the request httpx built (URL with its query, every header, Content-Length
    of the whole body). Errors of the connection are :class:`TransientTargetError` naming
    ``route``; errors reading the file are :class:`SourceError`.
    """

    def __init__(self, request: httpx.Request, route: str, timeout_s: float) -> None:
        self._request = request
        self._route = route
        url = request.url
        # raw_host: the name as httpx resolves it (IDNA-encoded), not the Unicode form.
        host = url.raw_host.decode("ascii")
        self._conn = http.client.HTTPConnection(host, url.port or 80, timeout=timeout_s)
        self._send_failed = False

    def connect(self) -> None:
        """Open the connection; failing here, nothing reached the server."""
        try:
            self._conn.connect()
        except OSError as exc:
            raise self._broken(exc) from exc

    def send_head(self, head: bytes) -> None:
        """The request line, the headers (httpx's, as they are) and the start of the body."""
        request = self._request
        try:
            self._conn.putrequest(
                request.method,
                request.url.raw_path.decode("ascii"),
                skip_host=True,
                skip_accept_encoding=True,
            )
            for name, value in request.headers.multi_items():
                self._conn.putheader(name, value)
            self._conn.endheaders(head)
        except (OSError, http.client.HTTPException) as exc:
            raise self._broken(exc) from exc

    def send_file(self, fd: int, item: UploadItem, transfer: Transfer) -> None:
        """Send the file's ``item.size`` bytes, hashing them beside; raise if they changed."""
        sock = self._conn.sock  # connected in connect()
        with CheckedRead(fd, item) as check:
            for chunk in check.chunks():
                left = chunk
                try:
                    # Not sendall: its timeout bounds the whole chunk, and on a slow link
                    # a MiB may take longer than timeout_s. Each send() waits at most that.
                    while left:
                        left = left[sock.send(left) :]
                except OSError as exc:
                    self._send_failed = True
                    raise self._broken(exc) from exc
                transfer.progress(len(chunk))
        check.verify()

    def early_reply(self) -> httpx.Response | None:
        """The reply a server sent before the body's end, when sending broke off; else None.

        A server may refuse a request at once (an unknown task, say), answer and close: the
        answer says what happened, where the broken connection alone does not.
        """
        if not self._send_failed:
            return None
        self._conn.sock.settimeout(_EARLY_REPLY_S)
        try:
            return self._response()
        except TransientTargetError:
            return None

    def finish(self, tail: bytes) -> httpx.Response:
        """Send the end of the body and read the reply."""
        try:
            self._conn.send(tail)
        except OSError as exc:
            raise self._broken(exc) from exc
        return self._response()

    def _response(self) -> httpx.Response:
        try:
            reply = self._conn.getresponse()
            content = reply.read(_MAX_REPLY)
        except (OSError, http.client.HTTPException) as exc:
            raise self._broken(exc) from exc
        # http.client decoded each header as latin-1; httpx takes bytes as they came.
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.getheaders()]
        return httpx.Response(reply.status, headers=headers, content=content, request=self._request)

    def close(self) -> None:
        """Close the connection (a body left unfinished reaches the server cut short)."""
        self._conn.close()

    def _broken(self, exc: BaseException) -> TransientTargetError:
        kind = type(exc).__name__
        reason = str(exc).splitlines()[0] if str(exc) else kind
        return TransientTargetError(f"{self._route}: {reason} ({kind})")
