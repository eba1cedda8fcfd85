"""What a WebSocket connection says happened: frozen values, told apart by their type.

Owns: the event types that `Connection.receive_data` returns and `Connection.send` takes.
Never: parsing, I/O, or mutable state.

A message's kind is its type (`TextMessage` or `BinaryMessage`), and its payload is `data`,
the bytes as they came off the wire: the codec hands them to orjson without another copy.
A `TextMessage`'s data has been checked to be UTF-8 by the frame reader, so the codec need not
check it again. `Ping` is the ping's payload itself (a `bytes`), for the pong. `Pong` is
sent in answer to a ping; it is received only by the client side (the side that pings), where
its payload says which ping it answers.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class TextMessage:
    data: bytes  # UTF-8, already checked


@attrs.frozen
class BinaryMessage:
    data: bytes


class Ping(bytes):
    """A ping; its payload goes back in the pong. Immutable, as `bytes` are."""

    __slots__ = ()


class Pong(bytes):
    """An answer to a `Ping`, with its payload: `Pong(ping)`."""

    __slots__ = ()


@attrs.frozen
class Close:
    """The peer's close frame (received), or ours (to send)."""

    code: int
    reason: str = ""


Message = TextMessage | BinaryMessage
Event = TextMessage | BinaryMessage | Ping | Pong | Close
