"""The socket under a connection's stream: the peer's address, a reset on close, and a refusal.

Owns: reaching through TLS (trio's `SSLStream` or our `TLSStream`: each has a
`transport_stream`) to the TCP socket of a stream (trio's `SocketStream` or our
`SocketTransport`). Never: reads or writes data; fails for a stream with no socket (memory
streams in tests): it answers "-" or does nothing.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import termios

import trio


def _socket_of(stream: trio.abc.Stream) -> socket.socket | trio.socket.SocketType | None:
    """The TCP socket under `stream` (through TLS), if it has one (memory streams do not)."""
    stream = getattr(stream, "transport_stream", stream)  # under TLS
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


def peer_host(stream: trio.abc.Stream) -> str:
    """The peer's address without its port (what per-source limits count by), or "-"."""
    return peer_address(stream).rpartition(":")[0].strip("[]") or "-"


def refuse_at_once(stream: trio.abc.Stream) -> None:
    """Close a just-accepted connection at once, unread, with a reset (no FIN handshake, no
    TIME_WAIT): the cheapest answer to a connection over a limit, with no task and no await."""
    reset_on_close(stream)
    inner = getattr(stream, "transport_stream", stream)  # under TLS
    if isinstance(inner, trio.SocketStream):  # what our listeners accept
        inner.socket.close()


def bytes_waiting(stream: trio.abc.Stream) -> int | None:
    """How many bytes the peer has sent that nobody has read yet (None: unknown, for a stream
    with no socket); one ioctl, no read, so the bytes stay for whoever reads the stream."""
    sock = _socket_of(stream)
    if sock is None:
        return None
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except OSError:
        return None
    return count[0]
