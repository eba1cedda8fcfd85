"""The pytest plugin (`gateway.testing.pytest_plugin`, entry point `pytest11`): its fixtures, and
the example tests of docs/testing.md, run as a user runs them (a fresh pytest in a directory of
its own)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio_websocket

from gateway.acs.packets import DtmfData
from gateway.simulate import workers
from gateway.simulate.runner import Options
from gateway.testing import open_gateway

PAGE = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()

pressed: list[str] = []


async def dtmf_listener(call) -> None:
    async for packet in call.packets:
        if isinstance(packet, DtmfData):
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


def _readme_block(first_line: str) -> str:
    return next(
        b for b in re.findall(r"```python\n(.*?)```", PAGE, re.S) if b.startswith(first_line)
    )


async def test_the_readme_example_tests_pass(tmp_path):
    (tmp_path / "test_greeter.py").write_text(_readme_block("# test_greeter.py"))
    (tmp_path / "test_bug_1234.py").write_text(_readme_block("# test_bug_1234.py"))
    # the bug report: a call recorded against an echo gateway (the fixtures' default)
    async with open_gateway("echo") as server:
        report = await workers.run(
            Options(url=server.urls[0], duration=0.6, record=str(tmp_path / "bug-1234.jsonl"))
        )
    assert report.totals()["errors"] == 0
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"],
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    assert "PASSED test_greeter.py::test_greets_then_stops_when_the_caller_speaks" in output
    assert "PASSED test_bug_1234.py::test_bug_1234_answers_as_recorded" in output


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
    assert b"needs pytest-trio: pip install pytest-trio" in done.stdout
