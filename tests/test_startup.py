"""A newcomer's first start: every error names the setting, where its value came from, the value
and the fix, and exits 2; a processor beside the configuration imports; the log says when
authentication is off, which worker wrote a line, and who ended each call."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli, config, logs
from gateway.errors import ConfigError
from gateway.processors import Call
from gateway.testing import open_gateway, simulated_call
from tests.daemons import gateway_process

SERVE = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1"]


def refused(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as failed:
        config.load(**kwargs)  # type: ignore[arg-type]
    return str(failed.value)


def test_a_bad_value_names_the_setting_its_source_and_the_value(tmp_path):
    assert refused(environ={"ACS_GATEWAY_MAX_CALLS": "abc"}) == (
        "invalid configuration: max_calls (environment variable ACS_GATEWAY_MAX_CALLS) = 'abc': "
        "not a whole number"
    )
    assert refused(environ={}, overrides={"port": 70000}) == (
        "invalid configuration: port (flag --port) = 70000: must be a TCP port (0-65535), got 70000"
    )
    path = tmp_path / "gateway.toml"
    path.write_text('shutdown_grace = "soon"\n')
    assert refused(path=path, environ={}) == (
        f"invalid configuration: shutdown_grace (config file '{path}', key shutdown_grace) = "
        "'soon': not a number"
    )


def test_a_playout_step_must_leave_acs_a_frame_to_play_on():
    assert refused(environ={"ACS_GATEWAY_PLAYOUT_STEP_MS": "60"}) == (
        "invalid configuration: playout_step_ms (environment variable "
        "ACS_GATEWAY_PLAYOUT_STEP_MS) = '60': must be whole 20 ms frames, from 20 to "
        "playout_lead_ms less a frame (40); got 60"
    )
    assert config.load(environ={"ACS_GATEWAY_PLAYOUT_STEP_MS": "40"}).playout_step_ms == 40
    assert refused(environ={"ACS_GATEWAY_PLAYOUT_STEP_MS": "30"}).endswith("got 30")


def test_a_misspelt_key_gets_the_close_one(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("max_call = 3\n")
    assert refused(path=path, environ={}).endswith(
        "unknown setting 'max_call'; did you mean 'max_calls'?"
    )
    path.write_text("[processor.echo]\nvolume = 2\n")
    assert refused(path=path, environ={}).endswith(
        "not a string; did you mean `[processors.echo]`?"
    )
    path.write_text('processor = "echo"\n[processor.echo]\nvolume = 2\n')
    assert refused(path=path, environ={}).endswith("did you mean `[processors.NAME]`?")


def test_missing_tls_files_name_the_setting_and_exit_2():
    env = {"ACS_GATEWAY_TLS_CERTFILE": "/nope.pem", "ACS_GATEWAY_TLS_KEYFILE": "/nope.pem"}
    done = subprocess.run(
        [*SERVE, "--port", "0"], capture_output=True, text=True, timeout=30, env=env_with(env)
    )
    assert done.returncode == 2, done.stderr
    assert (
        "tls_certfile (environment variable ACS_GATEWAY_TLS_CERTFILE) = '/nope.pem': "
        "No such file or directory; give the path of a readable PEM file"
    ) in done.stderr


def env_with(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


@pytest.mark.parametrize(
    "which, flags",
    [
        ("media", ["--port", "{port}"]),
        ("health", ["--port", "0", "--health-port", "{port}"]),
        ("health", ["--port", "0", "--health-port", "{port}", "--workers", "2"]),  # supervisor's
    ],
)
def test_a_taken_port_names_the_address_and_which_port_and_exits_2(which, flags):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*SERVE, *(f.format(port=port) for f in flags)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env_with({"ACS_GATEWAY_HEALTH_HOST": "127.0.0.1"}),
        )
    assert done.returncode == 2, done.stderr
    flag = "--port" if which == "media" else "--health-port"
    assert f"cannot listen on 127.0.0.1:{port}, the {which} port (flag {flag})" in done.stderr
    if "--workers" not in flags:
        assert "listening on" not in done.stderr  # nothing said it served


async def test_a_processor_module_in_the_working_directory_imports(tmp_path):
    (tmp_path / "my_bot.py").write_text(
        "async def bot(call):\n    async for _ in call.packets:\n        pass\n\n"
        "def make(options):\n    return bot\n"
    )
    command = [*SERVE, "--port", "0", "--processor", "my_bot:make", "--app-dir", str(tmp_path)]
    async with gateway_process(command) as gateway:  # "listening on": it imported
        assert "processor 'my_bot:make'" in gateway.text


def test_the_console_script_imports_a_processor_from_the_current_directory(tmp_path):
    # `python -m` puts the current directory on the path by itself; the console script does not
    (tmp_path / "here_bot.py").write_text(
        "def make(options):\n    print('imported from', __file__)\n    raise SystemExit(0)\n"
    )
    script = Path(sys.executable).parent / "acs-media-gateway"
    done = subprocess.run(
        [str(script), "serve", "--port", "0", "--processor", "here_bot:make"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr
    assert f"imported from {tmp_path / 'here_bot.py'}" in done.stdout


def test_authentication_off_on_an_open_address_is_a_warning(caplog):
    open_config = config.Config(host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="gateway"):
        cli._warn_if_open(open_config, ())
        cli._warn_if_open(config.Config(host="127.0.0.1"), ())
        cli._warn_if_open(config.Config(host="::1"), ())
        cli._warn_if_open(config.Config(host="0.0.0.0", acs_resource_id="some-guid"), ())
    (warning,) = caplog.records
    assert warning.getMessage().startswith(
        "authentication is OFF (acs_resource_id is not set) and the gateway listens on 0.0.0.0"
    )


def test_log_lines_carry_the_worker_index(capsys):
    try:
        for fmt, tagged in (("text", "[worker=3]"), ("json", '"worker":3')):
            logs.configure("info", fmt, worker=3)
            logging.getLogger("gateway.test").info("hello")
            assert tagged in capsys.readouterr().err
        logs.configure("info", "text")  # a reload keeps the index
        logging.getLogger("gateway.test").info("hello")
        assert "[worker=3]" in capsys.readouterr().err
    finally:
        logs._worker = None
        logging.getLogger().handlers[:] = []


async def test_debug_logs_a_calls_life_and_who_ended_it(caplog):
    async def says_goodbye(call: Call) -> None:
        return

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        async with open_gateway(says_goodbye) as server:
            async with simulated_call(server.urls[0]) as call:
                await call.wait_closed()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.call"]
    steps = ["handshake: /", "admitted: ", "metadata: ", "processor started", "processor returned"]
    at = [next(i for i, line in enumerate(lines) if line.startswith(step)) for step in steps]
    assert at == sorted(at), lines
    assert any(line.startswith("call ended by processor (close code 1000)") for line in lines)
    assert not any("ACS hung up" in line for line in lines), lines
