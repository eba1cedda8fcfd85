"""pytest plugin: fixtures to test a processor against a real in-process gateway, no ACS needed.

Installed with the package (entry point `pytest11`); the fixtures need `pytest-trio`, which the
`testing` extra installs (`pip install 'acs-media-gateway[testing]'`). In Trio tests:

- `acs_processor`: the processor under test. Override it in your test module or conftest
  (a processor function, a built-in name, or "package.module:factory"); default "echo".
- `acs_gateway_settings`: `Config` settings for the gateway (a dict); default none.
- `acs_gateway`: a running gateway (`gateway.server.Server`) on 127.0.0.1, port 0;
  `acs_gateway.urls[0]` is its ws:// URL. Live calls are cancelled when the test ends.
- `acs_call`: `async with acs_call(**options) as call:` a simulated ACS call to that gateway
  (`gateway.testing.simulated_call` options: `sample_rate`, `headers`, `timeout`, ...).
  Its waits raise `ProcessorFailed` when the processor under test raised.

Owns: fixture wiring only. Never: anything a test could not also do by hand with
`gateway.testing.open_gateway` and `simulated_call`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from ..processors import Processor
from ..server.serve import Server
from . import SimulatedCall, open_gateway, simulated_call

try:
    from pytest_trio import trio_fixture
except ImportError:  # the fixtures need pytest-trio; without it, say so when one is used
    trio_fixture = None


@pytest.fixture
def acs_processor() -> Processor | str:
    """The processor under test. Override this fixture; the default is the echo processor."""
    return "echo"


@pytest.fixture
def acs_gateway_settings() -> dict[str, Any]:
    """Gateway `Config` settings (e.g. {"playout_lead_ms": 100}). Override to change them."""
    return {}


async def _acs_gateway(
    acs_processor: Processor | str, acs_gateway_settings: dict[str, Any]
) -> AsyncIterator[Server]:
    async with open_gateway(acs_processor, **acs_gateway_settings) as server:
        yield server


def _acs_call(
    acs_gateway: Server,
) -> Callable[..., AbstractAsyncContextManager[SimulatedCall]]:
    def connect(**options: Any) -> AbstractAsyncContextManager[SimulatedCall]:
        return simulated_call(acs_gateway.urls[0], **options)

    return connect


if trio_fixture is not None:
    acs_gateway = trio_fixture(_acs_gateway)
    acs_call = pytest.fixture(_acs_call)
else:

    @pytest.fixture
    def acs_gateway() -> None:
        pytest.fail(
            "the acs_gateway fixture needs pytest-trio: pip install 'acs-media-gateway[testing]'"
        )

    @pytest.fixture
    def acs_call() -> None:
        pytest.fail(
            "the acs_call fixture needs pytest-trio: pip install 'acs-media-gateway[testing]'"
        )
