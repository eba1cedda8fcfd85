"""Shared fixtures: a call over memory streams (no sockets), and a task/fd census for leak
checks."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from gateway.acs import client as acs_client
from gateway.call.run import CallOutcome, CallSettings
from gateway.config import Config
from gateway.processors import Processor, load
from gateway.server import ServerContext, serve_connection
from gateway.testing import SimulatedCall, simulated_call
from gateway.testing.census import open_fds, task_count  # noqa: F401  (re-exported for tests)
from gateway.wire.websocket import DEFAULT_SEND_TIMEOUT


@attrs.define
class MemoryCall:
    peer: SimulatedCall
    outcome: list[CallOutcome]  # filled when the call ends

    @property
    def result(self) -> CallOutcome:
        assert self.outcome, "the call has not ended"
        return self.outcome[0]


@asynccontextmanager
async def memory_call(
    processor: Processor | str = "echo",
    settings: CallSettings | None = None,
    *,
    stream_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] | None = None,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    **peer: Any,
) -> AsyncIterator[MemoryCall]:
    """One gateway call over a memory stream pair, served by `serve_connection` as the server
    serves a socket: the real WebSocket engine, codec, call and player, with the simulated ACS
    peer on the other end. Works on the autojump clock. `stream_pair` makes (ACS end, gateway
    end); default: `memory_stream_pair`. No handshake deadline: the peer's pace is the test's."""
    if isinstance(processor, str):
        processor = load(processor)
    config = Config(
        **attrs.asdict(settings or CallSettings()),
        send_timeout=send_timeout,
        handshake_timeout=math.inf,
    )
    client, server = (stream_pair or trio.testing.memory_stream_pair)()
    outcome: list[CallOutcome] = []

    async def serve_one() -> None:
        result = await serve_connection(server, ServerContext(config, processor))
        if result is not None:
            outcome.append(result)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        async with simulated_call(stream=client, **peer) as call:
            yield MemoryCall(call, outcome)


RAW_MASK = b"\x5a\x13\xc7\x2e"  # any mask does: the gateway unmasks whatever key a client picks


async def raw_acs_stream(url: str, resource: str = "/") -> trio.SocketStream:
    """A bare TCP connection that has sent ACS's upgrade request and a 16 kHz AudioMetadata,
    and reads nothing yet: for tests that control every byte the peer reads."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(acs_client.upgrade_request("x", resource, ())[0])
    await stream.send_all(acs_client.masked_text(acs_client.metadata_text(16000), RAW_MASK))
    return stream


logging.getLogger("gateway").setLevel(logging.DEBUG)
