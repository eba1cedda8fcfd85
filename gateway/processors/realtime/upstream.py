"""Opening the bridge's connection to the model: TCP, TLS for `wss://`, and the WebSocket upgrade
with the provider's key header, on the gateway's own client wire (`gateway.wire.client`).

Owns: turning `RealtimeOptions.url` into an open `ClientWebSocket`, within `connect_timeout`
for TCP and TLS and again for the upgrade, and every way that can fail as one `Unavailable`
with the reason the bridge logs. Never: the session's events, reconnect policy, or the key in
any message.
"""

from __future__ import annotations

import ssl
from functools import cache
from typing import Final
from urllib.parse import urlsplit

import trio

from ...errors import ConnectionClosed
from ...wire.client import ClientWebSocket, UpgradeRefused, connect
from ...wire.tls import TLSStream
from ...wire.transport import SocketTransport
from .options import RealtimeOptions

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024  # a session.updated with long instructions is large


class Unavailable(Exception):
    """No session: `reason` says why (connect, TLS, refusal with its HTTP status, timeout)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@cache
def _tls_context() -> ssl.SSLContext:
    """One context for every session: loading the CA store costs milliseconds each time."""
    return ssl.create_default_context()


async def open_upstream(
    options: RealtimeOptions, ssl_context: ssl.SSLContext | None = None
) -> ClientWebSocket:
    """The open WebSocket to the model, or `Unavailable`. The caller closes it. `wss://`
    verifies the server against the system's CAs unless `ssl_context` is given."""
    url = urlsplit(options.url)
    secure = url.scheme == "wss"
    host = url.hostname or ""
    port = url.port or (443 if secure else 80)
    stream: trio.abc.Stream
    try:
        with trio.fail_after(options.connect_timeout):
            # The gateway's own socket stream: fewer trips through the scheduler per read and
            # write than trio.SocketStream (see gateway.wire.transport); TLS runs over it.
            stream = SocketTransport.from_socket_stream(await trio.open_tcp_stream(host, port))
            if secure:
                context = ssl_context or _tls_context()
                stream = TLSStream(stream, context, server_hostname=host)
                try:
                    await stream.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise Unavailable(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
    resource = (url.path or "/") + (f"?{url.query}" if url.query else "")
    name = f"[{host}]" if ":" in host else host  # an IPv6 address is bracketed
    authority = name if url.port is None else f"{name}:{port}"
    try:
        with trio.fail_after(options.connect_timeout):
            return await connect(
                stream, authority, resource, options.headers(), max_message_bytes=MAX_MESSAGE_BYTES
            )
    except trio.TooSlowError:
        reason = "upstream handshake timed out"
    except UpgradeRefused as exc:
        reason = (
            f"upstream refused the session (HTTP {exc.status})"
            if exc.status and exc.status != 101
            else f"upstream handshake failed ({exc})"
        )
    except ConnectionClosed as exc:
        reason = f"upstream handshake failed ({exc.reason})"
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    await trio.aclose_forcefully(stream)
    raise Unavailable(reason)
