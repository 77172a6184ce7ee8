"""One file as the body of a plain-HTTP request, hashed beside the sending.

A NodeODM upload is one multipart request per image, and the bytes it sends must be the bytes
that were hashed. Through httpx each chunk is read into a new ``bytes``, hashed, then handed
to httpx's Python on its way to the socket, all in one thread: the sending waits on the
hashing, and one thread's CPU bounds the upload. Here the sender reads each chunk into one of a
few reused buffers and writes it to the socket while a second thread hashes the same buffer
(hashlib releases the GIL). The caller sends the body's last part only after
:meth:`FilePost.send_file` found the recorded hash, so a file that changed reaches the server
cut short, never whole and wrong.

The bytes hashed are the bytes sent, from the same buffer. ``sendfile(2)`` was measured too:
it saves the client a copy but costs the receiving side more (page-sized pieces), and the page
cache could change between the hashing read and the sending one.

The request is written with :mod:`http.client` on the connection httpx would have made (same
URL, same headers). Only ``http://`` without a proxy goes this way (:func:`direct_ok`): TLS
needs httpx's stack, and a proxy is httpx's to reach.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import threading
import urllib.request

import httpx

from daemon.errors import FileChangedError, SourceError, TransientTargetError
from daemon.hashing import CHUNK
from daemon.targets.base import Transfer, UploadItem

# Chunks read ahead of the check: the sender waits when it is this far ahead.
_BUFFERS = 3
# The reply of an upload is a line of JSON; more than this is not read.
_MAX_REPLY = 1 << 20


def direct_ok(url: httpx.URL) -> bool:
    """Whether a request to ``url`` may bypass httpx: plain HTTP that no proxy takes."""
    if url.scheme != "http":
        return False
    proxies = urllib.request.getproxies()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(url.host))


class _Check(threading.Thread):
    """Hashes the chunks the sender hands over, in order, and hands each buffer back."""

    def __init__(self) -> None:
        super().__init__(name="dronesync-check", daemon=True)
        self.todo: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self.free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._made = 0
        self._digest = hashlib.sha256()

    def buffer(self) -> memoryview:
        """A buffer neither side is using; waits while the check is _BUFFERS chunks behind.

        Made as needed: a small image needs one, and each is a zeroed MiB.
        """
        if self._made < _BUFFERS and self.free.empty():
            self._made += 1
            return memoryview(bytearray(CHUNK))
        return self.free.get()

    def run(self) -> None:
        while (chunk := self.todo.get()) is not None:
            view, n = chunk
            self._digest.update(view[:n])
            self.free.put(view)

    def hexdigest(self) -> str:
        """The hash of every chunk handed over, once the thread has ended."""
        return self._digest.hexdigest()


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
        self._conn = http.client.HTTPConnection(url.host, url.port or 80, timeout=timeout_s)

    def connect(self) -> None:
        """Open the connection; failing here, nothing reached the server."""
        try:
            self._conn.connect()
        except OSError as exc:
            raise self._broken(exc) from exc

    def send_head(self, head: bytes) -> None:
        """The request line, the headers and the start of the body, in one write."""
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
        check = _Check()
        check.start()
        try:
            sent = self._send_chunks(fd, item, transfer, check)
        finally:
            check.todo.put(None)
            check.join()  # its buffers are not reused, and fd is closed next
        after = os.fstat(fd)
        if sent != item.size or after.st_mtime_ns != item.mtime_ns:
            raise FileChangedError(f"{item.path}: changed while it was being uploaded")
        if check.hexdigest() != item.sha256:
            raise FileChangedError(f"{item.path}: content differs from its recorded hash")

    def _send_chunks(self, fd: int, item: UploadItem, transfer: Transfer, check: _Check) -> int:
        sock = self._conn.sock  # connected in connect()
        sent = 0
        while True:
            view = check.buffer()
            try:
                n = os.readv(fd, [view])
            except OSError as exc:
                raise SourceError(f"{item.path}: read error: {exc.strerror}") from exc
            if not n:
                return sent
            sent += n
            if sent > item.size:
                raise FileChangedError(f"{item.path}: grew while it was being uploaded")
            # Both read the buffer at once; it is written again only once both are done.
            check.todo.put((view, n))
            try:
                sock.sendall(view[:n])
            except OSError as exc:
                raise self._broken(exc) from exc
            transfer.progress(n)

    def finish(self, tail: bytes) -> httpx.Response:
        """Send the end of the body and read the reply."""
        try:
            self._conn.send(tail)
            reply = self._conn.getresponse()
            content = reply.read(_MAX_REPLY)
        except (OSError, http.client.HTTPException) as exc:
            raise self._broken(exc) from exc
        return httpx.Response(
            reply.status, headers=reply.getheaders(), content=content, request=self._request
        )

    def close(self) -> None:
        """Close the connection (a body left unfinished reaches the server cut short)."""
        self._conn.close()

    def _broken(self, exc: BaseException) -> TransientTargetError:
        kind = type(exc).__name__
        reason = str(exc).splitlines()[0] if str(exc) else kind
        return TransientTargetError(f"{self._route}: {reason} ({kind})")
