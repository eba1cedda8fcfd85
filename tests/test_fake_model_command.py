"""`acs-media-gateway fake-model`: the fake model's echo mode as a process, for load tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from gateway.cli import main
from gateway.processors.realtime import upstream
from gateway.simulate.fake_model import REPLY_S
from gateway.testing import open_fake_model, open_gateway, simulated_call, speech
from gateway.testing.fake_model import REPLIES_KEPT
from tests.daemons import throwaway_tls

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


def _realtime(url: str, provider: str = "openai") -> dict[str, dict[str, object]]:
    return {"realtime": {"endpoint": url, "api_key_env": KEY_ENV, "provider": provider}}


class FakeModelProcess:
    """`acs-media-gateway fake-model ...` in a process of its own (killed if a test fails)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.printed = bytearray()
        self.url = ""

    async def stop(self) -> bytes:
        """SIGTERM: it exits 0; all it printed."""
        assert self.process.stdout is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await self.process.wait() == 0
            return bytes(self.printed) + b"".join([c async for c in self.process.stdout])


@asynccontextmanager
async def fake_model_process(*flags: str) -> AsyncIterator[FakeModelProcess]:
    command = [sys.executable, "-m", "gateway", "fake-model", "--port", "0", *flags]
    model = FakeModelProcess(await trio.lowlevel.open_process(command, stdout=subprocess.PIPE))
    try:
        assert model.process.stdout is not None
        with trio.fail_after(30):
            first = await _line(model.process.stdout, model.printed)
        assert " listening on ws://127.0.0.1:" in first or " on wss://127.0.0.1:" in first, first
        model.url = first.rsplit(" ", 1)[1]
        yield model
    finally:
        if model.process.returncode is None:
            model.process.kill()
            await model.process.wait()


async def test_the_command_serves_bridged_calls_and_stops_on_sigterm(monkeypatch):
    """It prints its URL; a gateway's realtime processor pointed there gets each 24 kHz
    caller's audio back as the model's, byte for byte (what `simulate` checks), and one with
    another key than the one it was told to require is refused; SIGTERM ends it with exit 0
    and a count of the sessions it served."""
    monkeypatch.setenv(KEY_ENV, "load-test-key")
    async with fake_model_process("--api-key-env", KEY_ENV) as model:
        rate = 24000
        said = speech(rate)[: rate * 2 * 2 // 5]  # 0.4 s: ten appends of 40 ms
        async with open_gateway("realtime", processors=_realtime(model.url)) as server:
            for _ in range(2):
                async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                    await acs.stream(said)
                    with trio.fail_after(10):
                        await acs.wait_for_audio(len(said))
                    assert acs.received_pcm == said
        monkeypatch.setenv(KEY_ENV, "another-key")  # refused (401): the call ends, unanswered
        hangup = {"realtime": {**_realtime(model.url)["realtime"], "on_upstream_failure": "hangup"}}
        async with open_gateway("realtime", processors=hangup) as server:
            async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                await acs.send_audio(said[:960])
                with trio.fail_after(10):
                    await acs.wait_closed()
                assert not acs.received_pcm
        printed = await model.stop()
    assert b"fake model: sessions served: 2;" in printed, printed


async def test_the_command_serves_wss_with_the_certificate_it_is_given(monkeypatch, tmp_path):
    """`--tls-certfile`/`--tls-keyfile`: wss://, as the service; a gateway that trusts the
    certificate's CA bridges through it as through ws://."""
    monkeypatch.setenv(KEY_ENV, "k")
    certfile, keyfile, client_context = throwaway_tls(tmp_path)
    monkeypatch.setattr(upstream, "_tls_context", lambda: client_context)  # trusts the test CA
    tls = ("--tls-certfile", str(certfile), "--tls-keyfile", str(keyfile))
    async with fake_model_process(*tls) as model:
        assert model.url.startswith("wss://127.0.0.1:")
        said = speech(24000)[:19200]  # 0.4 s
        async with open_gateway("realtime", processors=_realtime(model.url)) as server:
            async with simulated_call(server.urls[0], sample_rate=24000) as acs:
                await acs.stream(said)
                with trio.fail_after(10):
                    await acs.wait_for_audio(len(said))
                assert acs.received_pcm == said
        await model.stop()


async def test_conversing_it_answers_each_turn_and_hears_a_barge_in(monkeypatch):
    """`--converse`: each caller turn (speech, then silence) is answered with the bundled
    reply, again at the next turn (the script repeats); a caller who speaks over the reply is
    heard, and the gateway stops the bot's audio (stop-audio), as `simulate --barge-in-after`
    measures it."""
    monkeypatch.setenv(KEY_ENV, "k")
    async with fake_model_process("--converse") as model:
        rate = 24000
        reply = speech(rate)[: int(REPLY_S * rate) * 2]
        turn = speech(rate)[: rate * 2] + bytes(rate * 2 * 7 // 10)  # 1 s, then 0.7 s quiet
        async with open_gateway("realtime", processors=_realtime(model.url)) as server:
            async with simulated_call(server.urls[0], sample_rate=rate) as acs:
                await acs.stream(turn)
                with trio.fail_after(15):
                    await acs.wait_for_audio(len(reply))  # the reply, played in real time
                    await acs.wait_for(lambda c: len(c.received_pcm) == len(reply))
                assert acs.received_pcm == reply  # 24 kHz: passed through as the model sent it
                await acs.stream(turn)  # the next turn: the reply again
                with trio.fail_after(15):
                    await acs.wait_for_audio(len(reply) + rate * 2 // 2)
                await acs.stream(turn[: rate * 2])  # over the bot: a barge-in
                with trio.fail_after(10):
                    await acs.wait_for(lambda c: c.stop_times)
                assert acs.received_pcm.startswith(reply + reply[: rate * 2 // 2])
        printed = await model.stop()
    assert b"fake model: sessions served: 1;" in printed, printed


async def test_a_conversing_model_replies_at_the_rate_each_session_asks(
    autojump_clock, monkeypatch
):
    """`rate_scripts`: a Voice Live session (16 kHz out) gets the 16 kHz reply, an OpenAI one
    the 24 kHz reply; `repeat`: the one-reply script answers every turn."""
    monkeypatch.setenv(KEY_ENV, "k")
    replies = {rate: [speech(rate)[: rate * 2]] for rate in (16000, 24000)}  # 1 s each
    for rate, provider in ((16000, "voice-live"), (24000, "openai")):
        async with open_fake_model(rate_scripts=replies, repeat=True, record=False) as model:
            async with open_gateway("realtime", processors=_realtime(model.url, provider)) as gw:
                async with simulated_call(gw.urls[0], sample_rate=rate) as acs:
                    turn = speech(rate)[: rate * 2] + bytes(rate * 2)  # 1 s, then 1 s quiet
                    for n in (1, 2, 3):
                        await acs.stream(turn)
                        await acs.wait_for_audio(n * len(replies[rate][0]))
                    assert acs.received_pcm == replies[rate][0] * 3, provider


async def test_a_model_that_records_nothing_keeps_only_its_latest_replies():
    """Without `record`, the replies' audio counts (a truncate is checked against them) and
    texts are kept for the latest `REPLIES_KEPT` only, so a long load test does not grow."""
    async with open_fake_model(record=False) as model:
        for n in range(REPLIES_KEPT + 5):
            model.new_reply(f"item_{n}", f"reply {n}")
        assert len(model.audio_sent_ms) == len(model.transcripts) == REPLIES_KEPT
        assert next(iter(model.audio_sent_ms)) == "item_5"
        assert model.transcripts[f"item_{REPLIES_KEPT + 4}"] == f"reply {REPLIES_KEPT + 4}"
    async with open_fake_model() as model:  # a test's model keeps them all
        for n in range(REPLIES_KEPT + 5):
            model.new_reply(f"item_{n}", "")
        assert len(model.audio_sent_ms) == REPLIES_KEPT + 5


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
        (["--reply-wav", "reply.wav"], "--reply-wav and --speed go with --converse"),
        (["--converse", "--burst-ms", "400"], "--burst-ms is for the echo"),
        (["--converse", "--speed", "0"], "--speed must be above 0"),
        (["--converse", "--reply-wav", "missing.wav"], "--reply-wav: "),
        (["--converse", "--reply-wav", "8k.wav"], "need audio at 16000 or 24000 Hz"),
    ],
)
def test_bad_flags_exit_2_and_say_why(flags, says, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("TEST_FAKE_MODEL_UNSET", raising=False)
    monkeypatch.chdir(tmp_path)
    with wave.open("8k.wav", "wb") as w:  # a reply at a rate no session asks for
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(1600))
    assert main(["fake-model", "--port", "0", *flags]) == 2
    assert says in capsys.readouterr().err


def test_a_port_in_use_exits_2_and_names_it(capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["fake-model", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
