"""`SocketTransport`: a Trio stream over a plain non-blocking TCP socket, with fewer trips
through the scheduler than `trio.SocketStream` on the per-frame path.

Owns: the two socket calls of every frame (one recv, one send). Never: framing, TLS
(`gateway.wire.tls` runs over this class, for ACS's `wss://` and for the model's connection).

Why: at 100 calls, profiling showed trio's generic socket path as the gateway's largest cost
(docs/performance-echo.md, "What moved the knee"). For each read, `SocketStream.receive_some` first
tries `recv` (which fails with EAGAIN right after we drained the socket), waits, reads, then
yields once more; for each write `send_all` yields after a successful `send`. This class does
the same with less:

- receive: after a short read the kernel buffer is (almost surely) empty, so it waits for
  readability first and then reads once: one park, one `recv`. After a full read it reads again
  at once, but only after `trio.lowlevel.checkpoint()`, so a peer that keeps the buffer full
  cannot starve other calls. Every call to `receive_some` therefore yields at least once.
- send: `send` is tried at once and waits for writability only if the kernel buffer is full.
  A successful send does not yield: the callers (the call's send task and close handling) park
  on their own right after sending, so cancellation and fairness are unaffected.

Errors: `OSError` from the socket becomes `trio.BrokenResourceError`; use after `aclose()`
raises `trio.ClosedResourceError`; concurrent use of one direction raises
`trio.BusyResourceError`, as with trio's own streams.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Final

import trio

DEFAULT_RECEIVE_BYTES: Final = 65536


class SocketTransport(trio.abc.HalfCloseableStream):
    __slots__ = ("socket", "_closed", "_drained", "_sending", "_receiving")  # one per call

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._closed = False
        self._drained = True  # last read was short: wait before reading
        self._sending = False
        self._receiving = False

    @classmethod
    def from_socket_stream(cls, stream: trio.SocketStream) -> SocketTransport:
        """Take over the socket of a stream that trio's listener accepted."""
        trio_socket = stream.socket
        return cls(socket.socket(trio_socket.family, trio_socket.type, fileno=trio_socket.detach()))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # Hot path: kept flat (no helper coroutines), since every await level is paid twice
        # per wake-up.
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._check_open()
        size = max_bytes or DEFAULT_RECEIVE_BYTES
        sock = self.socket
        self._receiving = True
        try:
            if self._drained:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint()
            while True:
                self._check_open()
                try:
                    data = sock.recv(size)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                else:
                    self._drained = len(data) < size
                    return data
        except OSError as exc:  # ClosedResourceError is not an OSError: it passes through
            raise trio.BrokenResourceError(exc) from exc
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            with memoryview(data) as view:
                sent = 0
                while sent < len(view):
                    self._check_open()
                    try:
                        sent += self.socket.send(view[sent:])
                    except BlockingIOError:
                        await self._wait_writable()
                    except OSError as exc:
                        raise trio.BrokenResourceError(exc) from exc
        finally:
            self._sending = False

    def send_nowait(self, data: bytes) -> bytes:
        """Write what the kernel takes right now, without waiting; return the rest (all of it
        if nothing could be written). Errors are left for the next `send_all` to raise."""
        if self._sending or self._closed:
            return data
        try:
            return data[self.socket.send(data) :]
        except OSError:  # BlockingIOError included
            return data

    async def wait_send_all_might_not_block(self) -> None:
        await self._wait_writable()

    async def send_eof(self) -> None:
        self._check_open()
        await trio.lowlevel.checkpoint()
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
        await trio.lowlevel.checkpoint()

    async def _wait_writable(self) -> None:
        self._check_open()
        try:
            await trio.lowlevel.wait_writable(self.socket)
        except trio.ClosedResourceError:
            raise
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")


def direct_writes(
    stream: trio.abc.Stream,
) -> tuple[Callable[[bytes], bytes] | None, Callable[[], bool]]:
    """What writing without waiting needs of a stream: its `send_nowait` (this class's, or
    `TLSStream`'s over it), None if it has none; and its `backlogged()` (TLS: encrypted bytes
    the next write sends first), always False for a stream without one."""
    return getattr(stream, "send_nowait", None), getattr(stream, "backlogged", _never)


def _never() -> bool:
    return False
