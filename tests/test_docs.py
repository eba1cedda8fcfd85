"""The README is the user's manual: keep its promises checked."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import trio

from gateway.config import FILE_ONLY, SETTINGS, env_name
from gateway.testing import open_gateway, simulated_call

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_with_its_environment_variable():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", README, re.M)}
    for name in SETTINGS:
        assert name in rows, f"README misses setting {name}"
        if name not in FILE_ONLY:
            assert f"`{env_name(name)}`" in rows[name]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "python -m pytest" in line)
    assert f"```sh\n{command}\n```" in README


def _readme_processor_module() -> types.ModuleType:
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "def make(" in b)
    module = types.ModuleType("readme_bot")
    exec(compile(block, "README.md", "exec"), module.__dict__)
    sys.modules["readme_bot"] = module
    return module


async def test_the_readme_processor_example_works():
    _readme_processor_module()
    async with open_gateway(
        "readme_bot:make", processors={"readme_bot:make": {"greeting_ms": 100}}
    ) as server:
        async with simulated_call(server.urls[0]) as call:
            await call.stream(b"\x01\x00" * 320 * 3, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640 * 5 + 640 * 3)
            assert call.received_pcm == bytes(640 * 5) + b"\x01\x00" * 320 * 3
            await call.send_dtmf("0")
            with trio.fail_after(5):
                await call.wait_for(lambda c: c.stop_times)
            await call.send_dtmf("#")
            with trio.fail_after(5):
                await call.closed.wait()
            assert call.close_code == 1000
