"""Public test helpers: a simulated ACS peer, bundled speech, an in-process gateway, and a fake
realtime model server (`open_fake_model`, for the `realtime` processor), and a fake ACS control
plane (`open_fake_acs`: Call Automation REST, Event Grid, callbacks, the media socket).

    async with open_gateway(processor=my_processor) as server:
        async with simulated_call(server.urls[0]) as call:
            await call.stream(speech(16000))
            ...

Everything here runs on loopback (or memory streams) and on Trio's autojump clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..config import Config
from ..processors import Processor, load
from ..server.serve import Server, serve
from .acs_auth import AcsTokenIssuer, KeySetServer, bearer, serve_key_set
from .audio import frames, read_wav, speech, speech_path
from .failures import ProcessorFailed, ProcessorFailures, register, unregister
from .fake_acs import FakeAcs, FakeAcsError, FakeCall, open_fake_acs
from .fake_model import FakeModel, open_fake_model
from .fake_model_calls import FunctionCall
from .peer import AcsPlayback, Received, SimulatedCall, WaitFailed, simulated_call

__all__ = [
    "AcsPlayback",
    "AcsTokenIssuer",
    "KeySetServer",
    "FakeAcs",
    "FakeAcsError",
    "FakeCall",
    "FakeModel",
    "FunctionCall",
    "ProcessorFailed",
    "Received",
    "SimulatedCall",
    "WaitFailed",
    "bearer",
    "frames",
    "open_fake_acs",
    "open_fake_model",
    "open_gateway",
    "read_wav",
    "serve_key_set",
    "simulated_call",
    "speech",
    "speech_path",
]


@asynccontextmanager
async def open_gateway(
    processor: Processor | str = "echo", **settings: Any
) -> AsyncIterator[Server]:
    """Run a gateway in this Trio run on 127.0.0.1, port 0, with `processor` (a processor
    function or a registered name) and any `Config` settings; yields the `Server`
    (`server.urls[0]` is its ws:// URL). On exit, live calls are cancelled.

    What the processor raises is recorded by call, so that a `simulated_call` to this gateway
    raises `ProcessorFailed` (with the processor's traceback) at its next wait or send."""
    config = Config(**{"host": "127.0.0.1", "port": 0, **settings})
    if isinstance(processor, str):
        processor = load(processor, config.processors.get(processor, {}))
    failures = ProcessorFailures()
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config, failures.watch(processor))
        register(server.urls, failures)
        try:
            yield server
        finally:
            unregister(server.urls)
            server.stop_now()
