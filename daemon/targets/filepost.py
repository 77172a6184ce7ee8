"""One file as the body of a plain-HTTP request: sent by the kernel, checked beside it.

A NodeODM upload is one multipart request per image, and the bytes it sends must be the bytes
that were hashed. Through httpx each byte is read into Python, hashed and written back out, all
in one thread: more CPU than the transfer itself, and the sending waits on the hashing. Here
the file goes from the page cache to the socket with ``sendfile(2)`` while a second thread
reads it again from the page cache and hashes it. The caller sends the body's last part only
after :meth:`FilePost.finish` found the recorded hash, so a file that changed reaches the server
cut short, never whole and wrong.

The request is written with :mod:`http.client` on the connection httpx would have made
(same URL, same headers); only ``http://`` without a proxy goes this way (:func:`direct_ok`):
TLS needs the bytes in Python, and a proxy is httpx's to reach.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import select
import threading
import urllib.request

import httpx

from daemon.errors import FileChangedError, SourceError, TransientTargetError
from daemon.hashing import CHUNK
from daemon.targets.base import Transfer, UploadItem

# Errors of sendfile(2) that come from reading the file, not from the socket.
_READ_ERRNOS = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.ESTALE}
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
    """Reads the file from the start in a thread of its own and hashes it (the check hash)."""

    def __init__(self, fd: int, item: UploadItem) -> None:
        super().__init__(name="dronesync-check", daemon=True)
        self._fd = fd
        self._item = item
        self.stop = False
        self.error: BaseException | None = None
        self.digest = ""
        self.read = 0

    def run(self) -> None:
        # One buffer per check: it lives as long as the upload (the sending thread's own
        # buffer, chunk_buffer(), belongs to whoever else runs in that thread).
        view = memoryview(bytearray(CHUNK))
        digest = hashlib.sha256()
        try:
            while not self.stop:
                n = os.preadv(self._fd, [view], self.read)
                if not n:
                    break
                digest.update(view[:n])
                self.read += n
                if self.read > self._item.size:
                    break
        except OSError as exc:
            self.error = SourceError(f"{self._item.path}: read error: {exc.strerror}")
        self.digest = digest.hexdigest()


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
        self._timeout_ms = int(timeout_s * 1000)

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
        check = _Check(fd, item)
        check.start()
        try:
            self._sendfile(fd, item, transfer)
        except BaseException:
            check.stop = True
            raise
        finally:
            check.join()  # the caller closes fd next: no read may outlive it
        if check.error is not None:
            raise check.error
        after = os.fstat(fd)
        if check.read != item.size or after.st_size != item.size:
            raise FileChangedError(f"{item.path}: changed while it was being uploaded")
        if after.st_mtime_ns != item.mtime_ns:
            raise FileChangedError(f"{item.path}: changed while it was being uploaded")
        if check.digest != item.sha256:
            raise FileChangedError(f"{item.path}: content differs from its recorded hash")

    def _sendfile(self, fd: int, item: UploadItem, transfer: Transfer) -> None:
        out = self._conn.sock.fileno()  # connected in connect()
        # The socket has a timeout, so it is non-blocking underneath: wait for room with poll.
        poller = select.poll()
        poller.register(out, select.POLLOUT)
        offset = 0
        while offset < item.size:
            try:
                sent = os.sendfile(out, fd, offset, min(item.size - offset, 4 * CHUNK))
            except BlockingIOError:
                if not poller.poll(self._timeout_ms):
                    raise self._broken(TimeoutError("timed out sending")) from None
                continue
            except OSError as exc:
                if exc.errno in _READ_ERRNOS:
                    raise SourceError(f"{item.path}: read error: {exc.strerror}") from exc
                raise self._broken(exc) from exc
            if not sent:
                raise FileChangedError(f"{item.path}: shrank while it was being uploaded")
            offset += sent
            transfer.progress(sent)

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
