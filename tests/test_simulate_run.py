"""The load simulator end to end: real sockets on 127.0.0.1, an in-process gateway, short runs.

Timing numbers are not asserted here (that is bench/simulator_capacity.py); counts, matching,
errors and files are.
"""

from __future__ import annotations

import ssl

import trio
import trustme

from gateway.acs.packets import DtmfData
from gateway.simulate import workers
from gateway.simulate.options import Options
from gateway.simulate.recording import Recording, compare, replay
from gateway.simulate.report import Report
from gateway.testing import open_gateway
from gateway.testing.processors import barge_in_bot, sink


async def simulate(url: str, **options) -> Report:
    with trio.fail_after(30):
        return await workers.run(Options(url=url, **options))


async def test_echo_round_trips_every_frame_of_every_call():
    async with open_gateway("echo") as server:
        report = await simulate(server.urls[0], calls=4, duration=1.0, ramp=0.2, seed=1)
    t = report.totals()
    assert t["calls_connected"] == 4 and t["errors"] == 0, t["errors_by_kind"]
    assert t["frames_sent"] == 4 * 50
    for call in report.calls:
        assert call.frames_sent == 50
        assert call.frames_received == 50  # echo: one out per one in
        assert call.rtt.count == 50  # every echo matched to the frame it echoes
        assert call.audio_ms_received == 1000
        assert call.first_audio_ms is not None and call.first_audio_ms < 1000
        assert call.close_code == 1000  # the simulator hung up like ACS, the gateway agreed
        assert call.end == "completed" and call.forms == {"sdk": 50}
    assert (t["expect"], t["lost"], t["reordered"], t["corrupted"]) == ("echo", 0, 0, 0)
    assert [c.started for c in report.calls] == sorted(c.started for c in report.calls)
    assert t["simulator_cpu_pct"] > 0 and t["send_late_p50_ms"] is not None


async def test_unmixed_speakers_at_24khz():
    async with open_gateway("echo") as server:
        report = await simulate(
            server.urls[0], calls=1, duration=0.5, sample_rate=24000, unmixed=True, speakers=3
        )
    (call,) = report.calls
    assert call.frames_sent == 3 * 25  # one frame per speaker per tick
    assert call.frames_received == 25  # echo plays back one participant
    assert call.audio_ms_received == 500  # 960-byte frames counted as 20 ms at 24 kHz
    assert call.rtt.count == 25
    t = report.totals()  # one speaker's track is echoed: the other two are not "lost"
    assert (t["expect"], t["echo_expected"], t["lost"], t["corrupted"]) == ("echo", 25, 0, 0)


async def test_dtmf_and_the_bearer_token_reach_the_processor():
    tones: list[str] = []
    auth: list[str | None] = []
    paths: list[str] = []

    async def listener(call):
        auth.append(call.headers.get("authorization"))
        paths.append(call.path)
        async for packet in call.packets:
            if isinstance(packet, DtmfData):
                tones.append(packet.tone)

    async with open_gateway(listener) as server:
        report = await simulate(
            server.urls[0] + "/media?tenant=1",
            calls=2,
            duration=0.6,
            dtmf=((0.1, "5"), (0.3, "#")),
            token="s3cret",
        )
    assert sorted(tones) == ["#", "#", "5", "5"]  # two calls, each pressed 5 then #
    assert auth == ["Bearer s3cret", "Bearer s3cret"]
    assert paths == ["/media?tenant=1"] * 2
    assert report.totals()["dtmf_sent"] == 4
    assert "s3cret" not in str(report.to_json())  # never in the report


async def test_barge_in_gets_stop_audio_and_its_latency(tmp_path):
    async with open_gateway(barge_in_bot({})) as server:
        report = await simulate(
            server.urls[0],
            calls=2,
            duration=2.5,
            barge_in_after=0.4,
            timeline_calls=1,
            record=str(tmp_path / "call.jsonl"),
        )
    t = report.totals()
    assert t["errors"] == 0, t["errors_by_kind"]
    for call in report.calls:
        assert call.barge_ins >= 1
        assert call.stop_audio >= 1
        assert len(call.stop_latencies_ms) >= 1
        assert all(0 < ms < 1000 for ms in call.stop_latencies_ms)
    timeline = report.calls[0].timeline
    assert timeline is not None and report.calls[1].timeline is None
    assert timeline.barge_ins and timeline.stops and timeline.bot and timeline.speech
    assert timeline.stops[0] > timeline.barge_ins[0]
    # the bot's audio in the timeline ends where stop-audio cut it
    assert any(abs(end - timeline.stops[0]) < 1e-9 for _, end in timeline.bot)
    recording = Recording.read(tmp_path / "call.jsonl")
    assert recording.summary()["stop_audio_s"]
    assert recording.sent()[0].msg.startswith('{"kind":"AudioMetadata"')


async def test_hangups_errors_and_refusals_are_counted_per_call():
    async def fails(call):
        async for _ in call.packets:
            raise RuntimeError("processor bug")

    async with open_gateway(fails) as server:
        report = await simulate(server.urls[0], calls=1, duration=0.5)
    assert report.calls[0].errors == {"closed_early": 1}
    assert report.calls[0].end == "closed_early"
    assert report.calls[0].close_code == 1011 and report.calls[0].close_reason

    async with open_gateway(sink({}), max_calls=1) as server:
        report = await simulate(server.urls[0], calls=3, duration=0.5, ramp=0.1)
        abrupt = await simulate(server.urls[0], calls=4, duration=1.0, hangup_fraction=1.0, seed=3)
        after = await simulate(server.urls[0], calls=1, duration=0.2)  # the gateway is fine
    kinds = [c.errors for c in report.calls]
    assert kinds.count({}) == 1 and kinds.count({"upgrade_refused_503": 1}) == 2
    assert all(c.hung_up and not c.errors for c in abrupt.calls if c.connected)
    assert all(c.frames_sent < 50 for c in abrupt.calls)
    assert after.calls[0].errors == {}

    with trio.socket.socket() as s:  # a port with nobody listening
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = await simulate(f"ws://127.0.0.1:{port}/", calls=2, duration=0.2)
    assert [c.errors for c in report.calls] == [{"connect_refused": 1}] * 2
    assert report.totals()["calls_connected"] == 0


async def test_wss_with_a_ca_file_or_insecure(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    async with open_gateway("echo", tls_certfile=str(certfile), tls_keyfile=str(keyfile)) as server:
        url = server.urls[0]
        assert url.startswith("wss://")
        verified = await simulate(url, calls=2, duration=0.4, ca_file=str(cafile))
        insecure = await simulate(url, calls=1, duration=0.2, insecure=True)
        untrusted = await simulate(url, calls=1, duration=0.2)
    for call in verified.calls:
        assert call.errors == {} and call.frames_received == 20 and call.rtt.count == 20
    assert insecure.calls[0].errors == {}
    assert untrusted.calls[0].errors == {"tls_failed": 1}


async def test_worker_processes_share_the_calls():
    async with open_gateway("echo") as server:
        report = await simulate(server.urls[0], calls=4, duration=0.6, processes=2, ramp=0.1)
    assert [c.index for c in report.calls] == [0, 1, 2, 3]
    assert all(c.errors == {} and c.frames_received == 30 for c in report.calls)
    assert len(report.health.cpu_seconds) == 2  # each worker reports its own CPU


async def test_a_recorded_call_replays_with_the_same_answer(tmp_path):
    path = tmp_path / "rec.jsonl"
    async with open_gateway(barge_in_bot({})) as server:
        await simulate(server.urls[0], calls=1, duration=1.5, barge_in_after=0.3, record=str(path))
        original = Recording.read(path)
        again = await replay(original, server.urls[0], tail=0.5)
    assert len(again.sent()) == len(original.sent())
    assert [e.msg for e in again.sent()] == [e.msg for e in original.sent()]
    assert again.summary()["stop_audio_s"]
    assert compare(original, again, tolerance=0.25) == []


def test_ssl_context_from_options(tmp_path):
    assert Options(url="ws://h/").ssl_context() is None
    context = Options(url="wss://h/", insecure=True).ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    assert Options(url="wss://h/").ssl_context().verify_mode == ssl.CERT_REQUIRED


async def test_a_voice_bot_answers_the_default_turns_and_is_barged_in_on(monkeypatch):
    """The realtime processor against the fake model (whose VAD needs the caller to pause): the
    default scenario's turns get answers; a barge-in caller prompts it, then speaks over it."""
    from gateway.processors import load
    from gateway.testing import open_fake_model, speech

    monkeypatch.setenv("TEST_SIM_KEY", "k")
    async with open_fake_model([speech(24000)[: 24000 * 2 * 2]] * 4, api_key="k") as model:
        realtime = load("realtime", {"endpoint": model.url, "api_key_env": "TEST_SIM_KEY"})
        async with open_gateway(realtime) as server:
            turns = await simulate(server.urls[0], duration=2.5, turn=1.0, pause=0.6)
            barge = await simulate(
                server.urls[0], duration=3.5, barge_in_after=0.3, turn=1.0, reply_timeout=2.0
            )
    (call,) = turns.calls
    assert call.end == "completed" and call.errors == {}
    assert call.audio_ms_received > 500  # the bot answered the first turn
    assert turns.totals()["expect"] == "bot" and turns.totals()["lost"] == 0
    (call,) = barge.calls
    assert call.errors == {} and call.barge_ins == 1 and call.stop_audio >= 1
