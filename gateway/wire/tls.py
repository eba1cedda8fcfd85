"""`TLSStream`: TLS over a Trio stream, with fewer trips through the scheduler than
`trio.SSLStream`.

Owns: the TLS session of one connection, either side: the realtime bridge's to the model (the
client), and ACS's to the gateway when the gateway serves `wss://` itself (the server): the
handshake, encrypting what is sent and decrypting what is read, in the order the TLS library
produced its records. Never: the TCP socket (the transport under it), certificates or trust
(the `ssl.SSLContext` given), or framing.

Why: `trio.SSLStream` pays about three scheduler trips for every read and every write: a
checkpoint when it starts, one to take its inner lock, and one before it returns. A bridged call
writes to the model every 40 ms and reads a model event about as often, and the model's
connection is TLS: a 24 kHz bridged call cost about 1.35x the minimal asyncio bridge's per frame
over TLS, against 0.95x over plain TCP. An ACS call served over `wss://` reads and writes a frame
every 20 ms, and over `trio.SSLStream` it could not use the direct path (`send_nowait`): an echo
frame cost 2.5x one over `ws://` (docs/performance-realtime.md, "The model's connection over
TLS" and "ACS over wss:// served by the gateway"). Here, as in `gateway.wire.transport`, a read
parks only when the TLS library needs bytes the socket has not brought yet (the transport's read
yields), and a write does not yield when the socket takes it at once. The work is the same
`ssl.SSLObject` over two `ssl.MemoryBIO`s that `trio.SSLStream` drives.

Writing without waiting (`send_nowait`, for the server's direct path, when the transport has
one): the bytes are encrypted and written as far as the kernel takes them now; encrypted bytes
the kernel did not take (`backlogged()`) go first in the next write, which the caller owes
(`send_all`, even of nothing). Once encrypted they are no longer the caller's bytes, so unlike
the transport's `send_nowait` this one never hands back part of what it took.

Ordering: records must reach the socket in the order the TLS library wrote them to the outgoing
buffer. Both a write and a read can produce records (a read may owe the peer an answer, such as
a TLS 1.3 key update), so taking bytes from that buffer and sending them is done by one task at a
time; another waits its turn (only while a write waits for a full socket), and the first sends
the second's records too, in order.

Errors: a TLS failure (a certificate not trusted, a corrupt record) becomes
`trio.BrokenResourceError` from the `ssl.SSLError`, as with `trio.SSLStream`; the peer's
close_notify, or its closing the socket, is the end of the stream (`b""`). A write cut short
(cancelled, or the socket failed, after records left the buffer) breaks the stream: every later
call raises `trio.BrokenResourceError`, since the peer would read a torn record. Use after
`aclose()` raises `trio.ClosedResourceError`; concurrent reads raise `trio.BusyResourceError`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Final

import trio

RECEIVE_BYTES: Final = 65536  # what one read of the transport asks for


class TLSStream(trio.abc.Stream):
    """TLS over `transport_stream`: as the client of `server_hostname`, or with `server_side`
    as the server (its certificate in `context`). A client calls `do_handshake()` before
    anything else (a write before it fails); a server's first read runs the handshake, as
    the client's hello is what it reads first."""

    __slots__ = (
        "transport_stream",
        "_ssl",
        "_incoming",
        "_outgoing",
        "_flushing",
        "_flushed",
        "_backlog",
        "_transport_nowait",
        "_receiving",
        "_broken",
        "_closed",
    )

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: ssl.SSLContext,
        server_hostname: str | None = None,
        *,
        server_side: bool = False,
    ) -> None:
        self.transport_stream = transport_stream
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        # One task at a time takes the outgoing buffer to the socket, so records keep their
        # order. A flag and a parking lot: trio's locks record their owner at every acquire.
        self._flushing = False
        self._flushed = trio.lowlevel.ParkingLot()
        self._backlog = b""  # encrypted by send_nowait, not taken by the kernel: sent first
        # The transport's own write without waiting (SocketTransport's); without one,
        # send_nowait writes nothing.
        self._transport_nowait: Callable[[bytes], bytes] | None = getattr(
            transport_stream, "send_nowait", None
        )
        self._receiving = False
        self._broken = False  # a write was cut short: the peer would read a torn record
        self._closed = False

    async def do_handshake(self) -> None:
        """Run the TLS handshake; verifies the server as the context says."""
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(exc) from exc
            await self._flush()
            return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check_usable()
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        size = max_bytes or RECEIVE_BYTES
        self._receiving = True
        try:
            while True:
                # Without ciphertext or plaintext at hand, a read would only fail (an exception
                # and a buffer: microseconds), so go to the socket first.
                if self._incoming.pending or self._ssl.pending():
                    data = self._read(size)
                    if data is not None:
                        if self._outgoing.pending:  # the library owes the peer an answer
                            await self._flush()
                        return data
                await self._flush()
                if not await self._fill():
                    return b""  # the socket ended without close_notify: the end all the same
        finally:
            self._receiving = False

    def _read(self, size: int) -> bytes | None:
        """What has been decrypted, up to `size`: every whole record at hand, so the caller's
        framing takes one pass per socket read, not one per record. None: a record is only
        partly here."""
        try:
            data = self._ssl.read(size)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""  # close_notify
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(exc) from exc
        while len(data) < size and (self._ssl.pending() or self._incoming.pending):
            try:
                more = self._ssl.read(size - len(data))
            except ssl.SSLError:  # want-read, or an end or error the next call sees
                break
            if not more:
                break
            data += more
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send `data` after anything owed (`send_all(b"")` sends only that)."""
        self._check_usable()
        if data:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(exc) from exc
        await self._flush()

    def send_nowait(self, data: bytes) -> bytes:
        """Encrypt `data` and write what the kernel takes now; b"" once it is encrypted (what
        the kernel left is `backlogged()`, for the next `send_all`), or all of `data`, not
        encrypted, when it cannot be written now without overtaking (a write in progress, or
        an earlier backlog the kernel still does not take). Errors are left for `send_all`."""
        write = self._transport_nowait
        if write is None or self._flushing or self._closed or self._broken:
            return data
        if self._backlog:
            self._backlog = write(self._backlog)
            if self._backlog:
                return data
        if not data:
            return b""
        try:
            self._ssl.write(data)
        except ssl.SSLError:
            return data
        self._backlog = write(self._outgoing.read())
        return b""

    def backlogged(self) -> bool:
        """Encrypted bytes wait for the next write (see `send_nowait`)."""
        return bool(self._backlog)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify if the socket takes it at once, then close the socket (the peer's
        close_notify is not waited for: the WebSocket's closing handshake came before)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            try:
                self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # close_notify is in the outgoing buffer (or cannot be sent)
            owed = self._backlog or self._outgoing.pending
            if owed and not self._flushing and not self._broken:
                with trio.move_on_after(0):  # never wait for a peer that stopped reading
                    await self._flush()
        finally:
            self._closed = True
            await self.transport_stream.aclose()

    async def _fill(self) -> bool:
        """Read the socket into the library's incoming buffer; False at the socket's end."""
        data = await self.transport_stream.receive_some(RECEIVE_BYTES)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def _flush(self) -> None:
        """Send what the library has written to the outgoing buffer, in order."""
        while self._flushing:  # rare: another task's write waits for a full socket
            await self._flushed.park()
        self._flushing = True
        try:
            while self._backlog or self._outgoing.pending:
                self._check_usable()
                data, self._backlog = self._backlog or self._outgoing.read(), b""
                try:
                    await self.transport_stream.send_all(data)
                except BaseException:
                    self._broken = True
                    raise
        finally:
            self._flushing = False
            self._flushed.unpark_all()

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._broken:
            raise trio.BrokenResourceError("a write to this stream was cut short")
