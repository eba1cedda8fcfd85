"""The socket under a connection's stream: the peer's address, and a reset on close.

Owns: reaching through TLS to the TCP socket of a stream (trio's `SocketStream` or our
`SocketTransport`). Never: reads or writes data; fails for a stream with no socket (memory
streams in tests): it answers "-" or does nothing.
"""

from __future__ import annotations

import socket
import struct

import trio


def _socket_of(stream: trio.abc.Stream) -> socket.socket | trio.socket.SocketType | None:
    """The TCP socket under `stream` (through TLS), if it has one (memory streams do not)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)  # trio's SocketStream, or our SocketTransport
    return sock if isinstance(sock, socket.socket | trio.socket.SocketType) else None


def reset_on_close(stream: trio.abc.Stream) -> None:
    """Make closing the socket send a reset: a peer that stopped reading would otherwise keep
    its unsent bytes in our kernel until TCP gives up."""
    sock = _socket_of(stream)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


def peer_address(stream: trio.abc.Stream) -> str:
    """`host:port` of the peer, or "-" when the stream has no socket (memory streams)."""
    sock = _socket_of(stream)
    if sock is None:
        return "-"
    try:
        host, port = sock.getpeername()[:2]
    except (OSError, ValueError):
        return "-"
    return f"{host}:{port}"
