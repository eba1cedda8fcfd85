"""Shared fixtures: a call over memory streams (no sockets), and a task/fd census for leak
checks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from gateway.acs import client as acs_client
from gateway.call.run import CallOutcome, CallSettings, run_call
from gateway.logs import call_logger
from gateway.processors import Processor, load
from gateway.testing import SimulatedCall, simulated_call
from gateway.testing.census import open_fds, task_count  # noqa: F401  (re-exported for tests)
from gateway.wire.websocket import DEFAULT_SEND_TIMEOUT, ServerWebSocket


@attrs.define
class MemoryCall:
    peer: SimulatedCall
    outcome: list[CallOutcome]  # filled when run_call returns

    @property
    def result(self) -> CallOutcome:
        assert self.outcome, "run_call has not returned"
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
    """One gateway call over a memory stream pair: the real WebSocket engine, codec, call and
    player, with the simulated ACS peer on the other end. Works on the autojump clock.
    `stream_pair` makes (ACS end, gateway end); default: `memory_stream_pair`."""
    if isinstance(processor, str):
        processor = load(processor)
    client, server = (stream_pair or trio.testing.memory_stream_pair)()
    outcome: list[CallOutcome] = []

    async def serve_one() -> None:
        ws = ServerWebSocket(server, max_message_bytes=65536, send_timeout=send_timeout)
        try:
            handshake = await ws.read_handshake()
            await ws.accept()
            log = call_logger(
                handshake.headers.get("x-ms-call-connection-id"),
                handshake.headers.get("x-ms-call-correlation-id"),
                "memory",
            )
            outcome.append(
                await run_call(ws, handshake, processor, settings or CallSettings(), log)
            )
        finally:
            await trio.aclose_forcefully(server)

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
