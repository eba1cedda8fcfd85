"""Every Python example of the README and docs/ runs as a user runs it: copied into a fresh
project of its own (its own pyproject.toml, without `trio_mode`; none of this repository's
settings, conftest or test modules on the path), with the package as installed, under a fresh
`pytest` process.

The suite uses the installed package of the environment it runs in (fast and offline). With
`FRESH_VENV_TESTS=1` the same project also runs in a new virtual environment made with
`pip install '<this repository>[testing,realtime,control]'`, as a newcomer's would be (about
20 s, and it needs the package index).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import trio

from gateway.simulate import workers
from gateway.simulate.options import Options
from gateway.testing import open_gateway

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# An example that says it is not complete (it needs the reader's own application) is not run.
SKETCH = "# A sketch, not a complete test"

PYPROJECT = """\
[project]
name = "my-bot"
version = "0"

[tool.pytest.ini_options]
addopts = "-p no:cacheprovider -rA"
"""

# Runs the README's processor (mypackage/bot.py) the way its text says it behaves.
README_PROCESSOR_TEST = """\
import pytest
import trio

from gateway.testing import open_gateway, simulated_call


@pytest.mark.trio
async def test_the_readme_processor_greets_echoes_stops_and_hangs_up():
    options = {"mypackage.bot:make": {"greeting_ms": 100}}
    async with open_gateway("mypackage.bot:make", processors=options) as server:
        async with simulated_call(server.urls[0]) as call:
            await call.stream(b"\\x01\\x00" * 320 * 3, realtime=False)
            await call.wait_for_audio(640 * 5 + 640 * 3)
            assert call.received_pcm == bytes(640 * 5) + b"\\x01\\x00" * 320 * 3
            await call.send_dtmf("0")
            await call.wait_for(lambda c: c.stop_times)
            await call.send_dtmf("#")
            await call.wait_closed()
            assert call.close_code == 1000


def test_this_is_a_project_of_its_own():
    import importlib.util

    assert importlib.util.find_spec("tests") is None  # not the gateway's test suite
"""


def examples() -> dict[str, str]:
    """Every ```python block of the README and docs/, by the file a user would save it as: the
    name on its first line ("# test_x.py"), or mypackage/bot.py for the processor."""
    found: dict[str, str] = {}
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            if block.startswith(SKETCH):
                continue  # says so to its reader; counted in test_only_the_known_sketches_...
            named = re.match(r"# (\w+\.py)\n", block)
            if named:
                name = named.group(1)
            elif "def make(" in block:
                name = "mypackage/bot.py"
            else:
                raise AssertionError(f"{page.name}: a Python example with no file name:\n{block}")
            assert found.get(name, block) == block, f"two different examples named {name}"
            found[name] = block
    return found


async def write_project(project: Path) -> None:
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "mypackage").mkdir()
    (project / "mypackage" / "__init__.py").write_text("")
    for name, block in examples().items():
        (project / name).write_text(block)
    (project / "test_readme_processor.py").write_text(README_PROCESSOR_TEST)
    # the bug report that test_bug_1234.py replays: a call recorded against an echo gateway
    async with open_gateway("echo") as server:
        report = await workers.run(
            Options(url=server.urls[0], duration=0.6, record=str(project / "bug-1234.jsonl"))
        )
    assert report.totals()["errors"] == 0


def expected_tests() -> list[str]:
    tests = ["test_readme_processor.py::test_the_readme_processor_greets_echoes_stops_and_hangs_up"]
    for name, block in examples().items():
        tests += [f"{name}::{t}" for t in re.findall(r"^async def (test_\w+)", block, re.M)]
    return tests


async def run_pytest(python: str, project: Path) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "PYTEST"))}
    environ["OPENAI_API_KEY"] = "never-sent"  # the realtime example sets its own; no real key
    with trio.fail_after(120):
        done = await trio.run_process(
            [python, "-m", "pytest", "-q"],
            cwd=project,
            env=environ,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    return output


def test_every_example_has_a_file_name_and_a_test():
    names = set(examples())
    assert {"mypackage/bot.py", "test_greeter.py", "test_bug_1234.py"} <= names
    assert {"test_my_bot.py", "test_realtime_bot.py"} <= names
    assert len(expected_tests()) >= 5


def test_only_the_known_sketches_are_not_run():
    sketches = {
        page.name: text.count("```python\n" + SKETCH)
        for page in PAGES
        if (text := page.read_text())
    }
    assert {name: n for name, n in sketches.items() if n} == {"testing.md": 1}  # the fake ACS


async def test_the_examples_pass_in_a_fresh_project(tmp_path):
    await write_project(tmp_path)
    output = await run_pytest(sys.executable, tmp_path)
    for test in expected_tests():
        assert f"PASSED {test}" in output, output
    assert "PASSED test_readme_processor.py::test_this_is_a_project_of_its_own" in output


@pytest.mark.skipif(not os.environ.get("FRESH_VENV_TESTS"), reason="set FRESH_VENV_TESTS=1")
async def test_the_examples_pass_in_a_fresh_virtual_environment(tmp_path):
    venv = tmp_path / "venv"
    project = tmp_path / "project"
    project.mkdir()
    await write_project(project)
    with trio.fail_after(300):
        await trio.run_process([sys.executable, "-m", "venv", str(venv)])
        await trio.run_process(
            [str(venv / "bin" / "pip"), "install", "-q", f"{ROOT}[testing,realtime,control]"],
            capture_stdout=True,
            capture_stderr=True,
        )
    output = await run_pytest(str(venv / "bin" / "python"), project)
    for test in expected_tests():
        assert f"PASSED {test}" in output, output
