"""The simulator's connection to a gateway: a non-blocking socket, with TLS through memory
BIOs for wss://. `gateway.simulate.runner` opens one `Link` per simulated call, which
`gateway.simulate.sim_call` sends and reads on.

Owns: connecting (TCP, TLS), non-blocking writes with a backlog, reads, abort (a TCP reset) and
close. Never: WebSocket framing or what a call sends (`gateway.acs.client`, `sim_call`).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import Final

import trio

RECEIVE_BYTES: Final = 65536
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class ConnectFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Link:
    """A non-blocking socket, with TLS through memory BIOs when the URL is wss://.

    `send_nowait` never waits (the ticker calls it for every call); `recv` parks once per read.
    """

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None) -> None:
        self.sock = sock
        self.tls = tls
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.backlog = bytearray()

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext | None) -> Link:
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectFailed("connect_failed", f"cannot resolve {host}: {exc}") from None
        family, type_, proto, _, address = infos[0]
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(address)
            if err not in (0, 115):  # 115: EINPROGRESS
                raise OSError(err, os.strerror(err))
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except ConnectionRefusedError as exc:
            sock.close()
            raise ConnectFailed("connect_refused", str(exc)) from None
        except OSError as exc:
            sock.close()
            kind = "connect_refused" if exc.errno == 111 else "connect_failed"
            raise ConnectFailed(kind, str(exc)) from None
        except BaseException:
            sock.close()
            raise
        link = cls(sock, None)
        if context is not None:
            link.tls = context.wrap_bio(link._incoming, link._outgoing, server_hostname=host)
            try:
                await link._handshake()
            except (ssl.SSLError, OSError, EOFError) as exc:
                link.abort()
                raise ConnectFailed("tls_failed", str(exc)) from None
            except BaseException:
                link.abort()
                raise
        return link

    async def _handshake(self) -> None:
        assert self.tls is not None
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.send_all(b"")
                data = await self._recv_raw()
                if not data:
                    raise EOFError("connection closed during the TLS handshake") from None
                self._incoming.write(data)
        await self.send_all(b"")

    def _wrap(self, data: bytes) -> bytes:
        if self.tls is None:
            return data
        if data:
            self.tls.write(data)
        return self._outgoing.read()

    def send_nowait(self, data: bytes) -> None:
        """Write what the kernel takes now; keep the rest for the next call. Raises OSError
        when the connection is gone."""
        data = self._wrap(data)
        if self.backlog:
            self.backlog += data
            data = bytes(self.backlog)
            self.backlog.clear()
        if not data:
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.backlog += data[sent:]

    async def send_all(self, data: bytes) -> None:
        self.send_nowait(data)
        while self.backlog:
            await trio.lowlevel.wait_writable(self.sock)
            self.send_nowait(b"")

    async def _recv_raw(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                continue

    async def recv(self) -> bytes:
        """Bytes from the server (decrypted); b"" when it closed the connection."""
        if self.tls is None:
            return await self._recv_raw()
        while True:
            raw = await self._recv_raw()
            if raw:
                self._incoming.write(raw)
            else:
                self._incoming.write_eof()
            out = bytearray()
            try:
                while chunk := self.tls.read(RECEIVE_BYTES):
                    out += chunk
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return bytes(out)
            if self._outgoing.pending:
                self.send_nowait(b"")
            if out or not raw:
                return bytes(out)

    def abort(self) -> None:
        """Drop the connection at once (RST), as a phone network does when a call dies."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
