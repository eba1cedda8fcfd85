"""`acs-media-gateway fake-model`: the fake model's echo mode as a process, for load tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
import trio

from gateway.cli import main
from gateway.testing import open_fake_model, open_gateway, simulated_call, speech

KEY_ENV = "TEST_FAKE_MODEL_KEY"


async def _line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"the fake model ended before a line: {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


def _realtime(url: str) -> dict[str, object]:
    return {"realtime": {"endpoint": url, "api_key_env": KEY_ENV, "provider": "openai"}}


async def test_the_command_serves_bridged_calls_and_stops_on_sigterm(monkeypatch):
    """It prints its URL; a gateway's realtime processor pointed there gets each 24 kHz
    caller's audio back as the model's, byte for byte (what `simulate` checks), and one with
    another key than the one it was told to require is refused; SIGTERM ends it with exit 0
    and a count of the sessions it served."""
    monkeypatch.setenv(KEY_ENV, "load-test-key")
    command = [sys.executable, "-m", "gateway", "fake-model", "--port", "0"]
    command += ["--api-key-env", KEY_ENV]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    out = bytearray()
    try:
        with trio.fail_after(30):
            first = await _line(process.stdout, out)
        assert first.startswith("fake model (echo) listening on ws://127.0.0.1:"), first
        url = first.rsplit(" ", 1)[1]
        rate = 24000
        said = speech(rate)[: rate * 2 * 2 // 5]  # 0.4 s: ten appends of 40 ms
        async with open_gateway("realtime", processors=_realtime(url)) as server:
            for _ in range(2):
                async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                    await acs.stream(said)
                    with trio.fail_after(10):
                        await acs.wait_for_audio(len(said))
                    assert acs.received_pcm == said
        monkeypatch.setenv(KEY_ENV, "another-key")  # refused (401): the call ends, unanswered
        hangup = {"realtime": {**_realtime(url)["realtime"], "on_upstream_failure": "hangup"}}
        async with open_gateway("realtime", processors=hangup) as server:
            async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                await acs.send_audio(said[:960])
                with trio.fail_after(10):
                    await acs.wait_closed()
                assert not acs.received_pcm
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
            rest = out + b"".join([chunk async for chunk in process.stdout])
        assert b"fake model: sessions served: 2;" in rest, rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_model_that_records_nothing_keeps_nothing(autojump_clock, monkeypatch):
    """`record=False` (the command's): a long load test grows nothing; the echo is the same."""
    monkeypatch.setenv(KEY_ENV, "k")
    rate = 24000
    said = speech(rate)[: rate * 2]
    async with open_fake_model(echo=True, record=False) as model:
        async with open_gateway("realtime", processors=_realtime(model.url)) as server:
            async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                await acs.stream(said)
                await acs.wait_for_audio(len(said))
                assert acs.received_pcm == said
        with trio.fail_after(5):
            await model.wait_for(lambda m: m.live == 0)
    assert model.connections == 1
    assert (model.events, model.sent, model.requests, model.items) == ([], [], [], {})


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tls-certfile", "cert.pem"], "--tls-certfile and --tls-keyfile go together"),
        (["--api-key-env", "TEST_FAKE_MODEL_UNSET"], "$TEST_FAKE_MODEL_UNSET is not set"),
        (["--session-max-s", "0"], "--session-max-s must be above 0"),
        (["--burst-ms", "-1"], "--burst-ms must be at least 0"),
        (["--tls-certfile", "no.pem", "--tls-keyfile", "no.key"], "cannot load the TLS"),
    ],
)
def test_bad_flags_exit_2_and_say_why(flags, says, capsys, monkeypatch):
    monkeypatch.delenv("TEST_FAKE_MODEL_UNSET", raising=False)
    assert main(["fake-model", "--port", "0", *flags]) == 2
    assert says in capsys.readouterr().err


def test_a_port_in_use_exits_2_and_names_it(capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["fake-model", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
