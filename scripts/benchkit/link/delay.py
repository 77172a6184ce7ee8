"""A TCP proxy that delays each direction by half the round trip (``netem`` stands-in).

    python scripts/benchkit/link/delay.py --to HOST:PORT --rtt-ms MS

Prints ``listening HOST:PORT`` (on 127.0.0.1) once ready, then forwards every connection to
``--to``. Each chunk read is written out half of ``--rtt-ms`` after it arrived, in order, in
both directions, so a request and its reply cross in one round trip as on a real link. At
most ``--buffer-kb`` wait per direction (the reading side then pauses). Runs in the client's
namespace, in a process of its own: its CPU is no side's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import sys
import time

CHUNK = 256 * 1024


class _Pipe:
    """One direction of one connection: chunks stamped on arrival, written once due."""

    def __init__(self, delay_s: float, limit: int) -> None:
        self.delay_s = delay_s
        self.limit = limit
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.ready = asyncio.Event()  # something queued, or the end
        self.room = asyncio.Event()  # below the limit again
        self.room.set()
        self.eof = False
        self.broken = False  # the writing side failed: what comes is dropped

    async def read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.broken:
                    continue
                self.queue.append((time.monotonic() + self.delay_s, data))
                self.queued += len(data)
                self.ready.set()
                if self.queued >= self.limit:
                    self.room.clear()
                    await self.room.wait()
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self.ready.set()

    async def write(self, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        break
                    self.ready.clear()
                    await self.ready.wait()
                    continue
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.queue.popleft()
                self.queued -= len(data)
                if self.queued < self.limit:
                    self.room.set()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            self.broken = True
            self.queue.clear()
            self.room.set()


async def _serve(host: str, port: int, delay_s: float, limit: int) -> asyncio.Server:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(host, port)
        except OSError:
            c_writer.close()
            return
        up, down = _Pipe(delay_s, limit), _Pipe(delay_s, limit)
        # The connection itself takes a round trip, as a SYN and its SYN-ACK would.
        await asyncio.sleep(2 * delay_s)
        try:
            await asyncio.gather(
                up.read(c_reader), up.write(s_writer), down.read(s_reader), down.write(c_writer)
            )
        finally:
            for w in (s_writer, c_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.to.rpartition(":")
    server = await _serve(host, int(port), args.rtt_ms / 2000, args.buffer_kb * 1024)
    sock = server.sockets[0].getsockname()
    print(f"listening {sock[0]}:{sock[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    """Serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="delay.py")
    parser.add_argument("--to", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="the round-trip time added")
    parser.add_argument("--buffer-kb", type=int, default=4096, help="most held per direction")
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
