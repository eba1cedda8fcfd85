"""The daemon as users run it: a real process, real signals, real sockets on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import AbstractAsyncContextManager

import pytest
import trio
import trio_websocket

from gateway.testing import simulated_call
from tests.daemons import Gateway, gateway_process

SERVE = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0"]


def test_bad_configuration_names_the_setting(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('max_calls = "many"\n')
    result = subprocess.run(
        [*SERVE, "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "max_calls" in result.stderr

    result = subprocess.run(
        [*SERVE, "--processor", "no_such_module:make"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "no_such_module" in result.stderr


Daemon = Gateway  # the name other tests import


def daemon(*args: str) -> AbstractAsyncContextManager[Gateway]:
    return gateway_process([*SERVE, *args])


async def test_sigterm_drains_live_calls_then_exits_zero():
    async with daemon("--shutdown-grace", "20") as d:
        async with simulated_call(d.url) as call:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call.stream, bytes(640 * 50))  # 1 s
                await trio.sleep(0.3)
                d.process.send_signal(signal.SIGTERM)
                await trio.sleep(0.2)
                # the port is closed to new calls while this one goes on
                with pytest.raises((OSError, trio_websocket.HandshakeError)):
                    async with simulated_call(d.url):
                        pass
            with trio.fail_after(5):
                await call.wait_for_audio(640 * 50)
            assert not call.closed.is_set()  # the live call was not cut
        with trio.fail_after(10):
            code = await d.process.wait()
    assert code == 0
    assert any("draining" in line for line in d.log)


async def test_calls_past_the_grace_period_are_closed_with_1001():
    async with daemon("--shutdown-grace", "0.5") as d:
        async with simulated_call(d.url) as call:
            await call.stream(bytes(640), realtime=False)
            d.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await call.closed.wait()
            assert call.close_code == 1001
        with trio.fail_after(10):
            assert await d.process.wait() == 0


async def test_a_second_signal_stops_at_once():
    async with daemon("--shutdown-grace", "60") as d:
        async with simulated_call(d.url) as call:
            await call.stream(bytes(640), realtime=False)
            d.process.send_signal(signal.SIGTERM)
            await trio.sleep(0.3)
            d.process.send_signal(signal.SIGINT)
            with trio.fail_after(5):
                assert await d.process.wait() == 0
            with trio.fail_after(5):
                await call.closed.wait()


def test_the_example_configuration_loads():
    from pathlib import Path

    from gateway import config

    example = Path(__file__).resolve().parent.parent / "deploy" / "gateway.toml"
    loaded = config.load(example, environ={})
    assert loaded.max_calls == 400 and loaded.log_format == "json"
