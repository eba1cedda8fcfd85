"""The pytest plugin (`gateway.testing.pytest_plugin`, entry point `pytest11`): its fixtures, the
extra that installs what it needs, and what it says when that is missing. (The examples of
docs/testing.md run in a fresh project of their own: tests/test_examples.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import trio_websocket

from gateway.acs.packets import DtmfData
from gateway.testing import ProcessorFailed

pressed: list[str] = []


async def dtmf_listener(call) -> None:
    async for packet in call.packets:
        if isinstance(packet, DtmfData):
            assert packet.tone in "0123456789*#ABCD", packet.tone
            pressed.append(packet.tone)


@pytest.fixture
def acs_processor():
    return dtmf_listener


@pytest.fixture
def acs_gateway_settings():
    return {"max_calls": 1}


async def test_fixtures_serve_the_overridden_processor_with_its_settings(acs_gateway, acs_call):
    assert acs_gateway.urls[0].startswith("ws://127.0.0.1:")
    pressed.clear()
    async with acs_call(connection_id="fixture-call") as call:
        await call.send_dtmf("7")
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:  # max_calls = 1
            async with acs_call():
                pass
        assert refused.value.status_code == 503
        await call.hang_up()
    assert pressed == ["7"]


def test_the_plugin_is_registered_through_its_entry_point():
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "acs_media_gateway"]
    assert plugin.value == "gateway.testing.pytest_plugin"


def test_without_pytest_trio_the_fixtures_say_what_is_missing(tmp_path):
    # a user who has the gateway but not pytest-trio: pytest must still run, and the fixtures
    # must say what to install
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pytest_trio.py").write_text("raise ImportError('pytest-trio is not installed')\n")
    (tmp_path / "test_x.py").write_text("def test_x(acs_gateway):\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:trio"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(shadow)},
        capture_output=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert b"needs pytest-trio: pip install 'acs-media-gateway[testing]'" in done.stdout


def test_the_testing_extra_brings_pytest_and_pytest_trio():
    from importlib.metadata import requires

    testing = [r for r in requires("acs-media-gateway") or [] if 'extra == "testing"' in r]
    assert {re.split(r"[<>=; ]", r)[0] for r in testing} >= {"pytest", "pytest-trio"}


async def test_a_processor_crash_fails_the_fixture_call_with_its_traceback(acs_call):
    pressed.clear()
    async with acs_call() as call:
        await call.send_dtmf("!")  # not a tone: the listener's own assertion fails
        with pytest.raises(ProcessorFailed) as failed:
            await call.wait_for(lambda c: c.stop_times)
    assert isinstance(failed.value.__cause__, AssertionError)
