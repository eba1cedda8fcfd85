"""Call records: the recording (what the caller heard, on the call's clock), the event log,
the latencies, retention, and a disk that fails. End to end on Trio's autojump clock; the long
call's alignment is checked on the recording itself (its I/O is small)."""

from __future__ import annotations

import errno
import json
import os
import wave
from array import array
from functools import partial
from pathlib import Path

import pytest
import trio

from gateway.records import disk as disk_module
from gateway.records import wavfile
from gateway.records.disk import DISK, enforce_retention
from gateway.records.record import file_stem, safe
from gateway.records.recording import AudioRecording
from gateway.testing import open_gateway, simulated_call, speech

FRAME = 320  # samples in a 20 ms frame at 16 kHz


def read_channels(path: Path) -> tuple[list[array], int]:
    with wave.open(str(path), "rb") as w:
        channels, rate = w.getnchannels(), w.getframerate()
        samples = array("h", w.readframes(w.getnframes()))
    return [samples[c::channels] for c in range(channels)], rate


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def only(directory: Path, suffix: str) -> Path:
    [path] = list(directory.glob(f"*{suffix}"))
    return path


async def settle() -> None:
    await trio.to_thread.run_sync(DISK.wait_idle, 10.0)


def numbered_frames(first: int, count: int) -> bytes:
    """Frames whose every sample is the frame's number: where each went is easy to find."""
    return b"".join(array("h", [k] * FRAME).tobytes() for k in range(first, first + count))


async def test_echo_recording_keeps_the_caller_byte_for_byte(autojump_clock, tmp_path):
    caller = speech(16000)[: 16000 * 2 * 3]
    async with open_gateway(
        "echo", recording=True, call_events=True, recording_dir=str(tmp_path)
    ) as server:
        async with simulated_call(server.urls[0], connection_id="../../etc/x y") as acs:
            await acs.stream(caller)
            await acs.send_dtmf("5")
            await trio.sleep(1.0)
            await acs.stream(caller[: 16000 * 2])
            await trio.sleep(0.5)
    await settle()
    wav = only(tmp_path, ".wav")
    assert "/" not in wav.name and wav.name.endswith("__.._etc_x_y.wav")
    (said, bot), rate = read_channels(wav)
    sent = bytes(acs.sent[None])
    assert rate == 16000
    # the caller's channel is what was sent, with the pause as silence where it was
    first = said.tobytes()[: len(caller)]
    assert first == caller
    assert said.tobytes().rstrip(b"\0").endswith(caller[: 16000 * 2].rstrip(b"\0"))
    assert sum(1 for s in said if s) == sum(1 for s in array("h", sent) if s)
    # the bot channel is the echo: the same audio, as released
    assert bot.tobytes().replace(b"\0", b"") == acs.received_pcm.replace(b"\0", b"")
    log = events(only(tmp_path, ".jsonl"))
    kinds = [e["event"] for e in log]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended"
    assert log[-1]["ended_by"] == "hangup"
    assert "dtmf" in kinds and [e["tone"] for e in log if e["event"] == "dtmf"] == ["5"]
    [first_audio] = [e for e in log if e["event"] == "latency"]
    assert first_audio["kind"] == "first_audio" and first_audio["ms"] <= 20
    assert [t for t in (e["t"] for e in log)] == sorted(e["t"] for e in log)


def test_a_long_call_stays_aligned_within_a_frame(tmp_path):
    """10 minutes of call time: caller frames with jitter, pauses (nothing sent) and bursts,
    bot replies released ahead by the lead window, and cuts; caller and bot frame k, sent at
    the same moment, end up within one frame of each other."""
    rate, frame_s = 16000, 0.02
    path = tmp_path / "long.wav"
    rec = AudioRecording(str(path), rate, 100.0, max_pending=10**8)
    k, t = 0, 100.0
    jitter = [0.0, 0.004, 0.011, 0.002, 0.017, 0.0, 0.009]
    while t < 100.0 + 600:
        if (k // 500) % 4 == 3:  # a pause: the caller's side sends nothing for 10 s
            k += 1
            t += frame_s
            continue
        now = t + jitter[k % len(jitter)]
        pcm = numbered_frames(k % 30000 + 1, 1)
        rec.caller(pcm, None, now)
        if k % 50 < 40:  # the bot talks back (released at most 60 ms ahead), then is cut
            rec.bot([pcm], t)
        elif k % 50 == 40:
            rec.cut(t)
        k += 1
        t += frame_s
    rec.close(t)
    DISK.wait_idle(10.0)
    (said, bot), _ = read_channels(path)
    assert rec.dropped_bytes == 0 and rec.late_bytes == 0 and rec.failed is None
    where_said: dict[int, int] = {}
    where_bot: dict[int, int] = {}
    for i in range(0, len(said), FRAME // 4):
        where_said.setdefault(said[i], i)
    for i in range(0, len(bot), FRAME // 4):
        where_bot.setdefault(bot[i], i)
    common = [n for n in where_bot if n and n in where_said]
    assert len(common) > 10000
    assert max(abs(where_bot[n] - where_said[n]) for n in common) <= FRAME


def test_both_interleavers_lay_out_the_same_samples():
    """numpy's (with the `realtime` extra) and the `array` module's (without it)."""
    pytest.importorskip("numpy")
    from gateway.records.recording import _interleave_array, _interleave_numpy

    caller = [
        (0, [numbered_frames(1, 1), numbered_frames(2, 1)]),
        (3 * FRAME, [numbered_frames(3, 1)]),
    ]
    bot = [(FRAME // 2, [numbered_frames(7, 1)])]  # silence around it
    n = 4 * FRAME
    laid = _interleave_array(n, [caller, bot])
    assert bytes(_interleave_numpy(n, [caller, bot])) == laid
    samples = array("h", laid)
    assert samples[0::2] == array("h", [1] * FRAME + [2] * FRAME + [0] * FRAME + [3] * FRAME)
    assert samples[1::2] == array("h", [0] * (FRAME // 2) + [7] * FRAME + [0] * (5 * FRAME // 2))


def test_a_run_of_frames_splits_at_any_byte_slicing_one_frame_at_most():
    from gateway.records.recording import split

    parts = [b"ab", b"cdef", b"gh"]
    for at in range(9):
        head, tail = split(parts, at)
        assert b"".join(head) == b"abcdefgh"[:at] and b"".join(tail) == b"abcdefgh"[at:]
        assert all(p in parts for p in head[:-1]) and all(p in parts for p in tail[1:])
    assert split(parts, 2) == ([b"ab"], [b"cdef", b"gh"])  # on a boundary: nothing sliced


def test_a_writer_stopped_mid_call_leaves_a_playable_file(tmp_path):
    path = tmp_path / "cut.wav"
    w = wavfile.WavFile(str(path), 2, 16000)
    w.write(0, bytes(4 * 16000))
    w.write(16000, b"\1\0\2\0" * 8000)
    # no close, no final header: the process died here
    with wave.open(str(path), "rb") as r:
        assert r.getnchannels() == 2 and r.getnframes() == 24000
        assert r.readframes(24000)[-4:] == b"\1\0\2\0"


async def test_a_gateway_killed_mid_call_leaves_a_playable_recording(tmp_path):
    """A real gateway process, SIGKILLed during a call (no exit handler, no final header):
    its WAV opens and holds what the caller said up to about its last flushed second."""
    import signal

    from tests.daemons import SERVE, gateway_process

    sent = speech(16000)[: 16000 * 2 * 5 // 2]  # 2.5 s, streamed in real time
    env = {"ACS_GATEWAY_RECORDING": "true", "ACS_GATEWAY_RECORDING_DIR": str(tmp_path)}
    command = [*SERVE, "--host", "127.0.0.1", "--port", "0"]
    async with gateway_process(command, env=env) as gateway:
        async with simulated_call(gateway.url) as acs:
            await acs.stream(sent)
            gateway.process.send_signal(signal.SIGKILL)  # the call is still open
            assert await gateway.wait_exit() == -signal.SIGKILL
            await acs.closed.wait()
    wav = only(tmp_path, ".wav")
    with wave.open(str(wav), "rb") as r:
        assert (r.getnchannels(), r.getframerate()) == (2, 16000)
        kept = r.getnframes()
    (said, _), _ = read_channels(wav)
    assert 0.5 <= kept / 16000 <= 2.5  # the last second or two may be lost, never more
    # and what was kept is what was said (the silences where the network held frames aside)
    heard = said.tobytes().replace(b"\0\0", b"")
    assert len(heard) > 16000 and sent.replace(b"\0\0", b"").startswith(heard)


def test_retention_removes_the_oldest_first(tmp_path):
    now = 1_000_000.0
    for age, name in [(50, "c"), (400, "a"), (200, "b"), (10, "d")]:
        p = tmp_path / f"{name}.wav"
        p.write_bytes(bytes(1000))
        os.utime(p, (now - age, now - age))
    (tmp_path / "notes.txt").write_bytes(bytes(5000))  # not a record: never removed
    removed = enforce_retention(tmp_path, 0, 2500, now=now)
    assert [Path(p).name for p in removed] == ["a.wav", "b.wav"]
    removed = enforce_retention(tmp_path, 30, 0, keep=[str(tmp_path / "c.wav")], now=now)
    assert removed == []  # c is older, but open
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.wav", "d.wav", "notes.txt"]
    assert enforce_retention(tmp_path, 30, 0, now=now) == [str(tmp_path / "c.wav")]


async def test_a_failing_disk_ends_the_recording_not_the_call(
    autojump_clock, tmp_path, monkeypatch
):
    writes = 0

    def full_disk(fd: int, data: bytes, offset: int) -> int:
        nonlocal writes
        writes += 1
        if writes > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.pwrite(fd, data, offset)

    monkeypatch.setattr(wavfile, "_pwrite", full_disk)
    caller = speech(16000)[: 16000 * 2 * 4]
    async with open_gateway(
        "echo", recording=True, call_events=True, recording_dir=str(tmp_path)
    ) as server:
        async with simulated_call(server.urls[0]) as acs:
            await acs.stream(caller[: 16000 * 2 * 3])  # two chunks flushed, the second fails
            DISK.wait_idle(10.0)  # blocking: the call's clock stands while the disk fails
            await acs.stream(caller[16000 * 2 * 3 :])
            await trio.sleep(0.2)
    await settle()
    assert acs.received_pcm.replace(b"\0", b"") == caller.replace(b"\0", b"")  # all echoed
    log = events(only(tmp_path, ".jsonl"))
    assert [e["event"] for e in log if e["event"] == "recording_stopped"] == ["recording_stopped"]
    assert log[-1]["event"] == "call_ended" and log[-1]["ended_by"] == "hangup"
    assert "No space left" in log[-1]["recording_failed"]
    stopped = server.metrics.registry.get_sample_value
    assert stopped("acs_gateway_recordings_stopped_total", {"route": "echo"}) == 1
    with wave.open(str(only(tmp_path, ".wav")), "rb") as r:  # what was written stays playable
        assert 0 < r.getnframes() < len(caller) // 2


async def test_a_disk_that_falls_behind_drops_audio_and_keeps_time(tmp_path):
    rec = AudioRecording(str(tmp_path / "slow.wav"), 16000, 0.0, max_pending=100_000)
    gate = __import__("threading").Event()
    DISK.submit(lambda: gate.wait(10))  # the disk thread is stuck
    for k in range(250):  # 5 s of caller audio
        rec.caller(numbered_frames(k + 1, 1), None, k * 0.02)
    assert rec.dropped_bytes > 0
    gate.set()
    await settle()
    rec.close(5.0)
    await settle()
    (said, _), _ = read_channels(tmp_path / "slow.wav")
    assert len(said) == 250 * FRAME  # the dropped second is silence, and later audio is in place
    assert said[-1] == 250 and said.count(0) >= 16000


def test_names_from_the_peer_are_made_safe():
    assert safe("../a b/c") == "_a_b_c"
    assert safe(None) == "none" and safe("...") == "none"
    assert file_stem("{route}-{connection_id}", {"route": "echo", "connection_id": "a/b"}) == (
        "echo-a_b"
    )


def test_no_records_costs_no_observer():
    from gateway.call.observer import NO_OBSERVER
    from gateway.records import Records, RecordSettings

    assert Records().open(RecordSettings(), {}, "echo") is NO_OBSERVER


@pytest.fixture(autouse=True)
def _disk_idle():
    yield
    disk_module.DISK.wait_idle(10.0)


async def test_barge_in_cuts_the_bot_channel_at_the_stop_audio(
    autojump_clock, tmp_path, monkeypatch
):
    from gateway.config import Config
    from gateway.processors import load
    from gateway.server.serve import serve
    from gateway.testing import open_fake_model
    from tests.test_realtime_e2e import KEY_ENV, conversation, options

    monkeypatch.setenv(KEY_ENV, "k")
    async with open_fake_model([speech(24000)], api_key="k") as model:
        config = Config(
            host="127.0.0.1",
            port=0,
            processor="realtime",
            recording=True,
            call_events=True,
            recording_dir=str(tmp_path),
        )
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config, load("realtime", options(model.url)))
            async with simulated_call(server.urls[0]) as acs:
                await acs.stream(conversation(16000))
            metrics = server.metrics
            server.stop_now()
    await settle()
    log = events(only(tmp_path, ".jsonl"))
    [barge] = [e for e in log if e["event"] == "barge_in"]
    (said, bot), rate = read_channels(only(tmp_path, ".wav"))
    cut = round(barge["t"] * rate)
    # the bot spoke up to the stop-audio, and not a frame after it
    assert any(bot[cut - FRAME : cut])
    assert not any(bot[cut + FRAME : cut + rate])
    [stop_at] = acs.stop_times
    assert len(bot) >= cut
    # what the caller heard of the reply: the bot channel's run up to the cut
    start = cut
    while start > 0 and any(bot[start - FRAME : start]):
        start -= FRAME
    assert abs(barge["heard_ms"] - (cut - start) * 1000 / rate) <= 40
    assert barge["stop_latency_ms"] <= 20
    kinds = {e["event"] for e in log}
    assert {"speech_started", "turn_ended", "session"} <= kinds
    latencies = log[-1]["latency_ms"]
    assert set(latencies) == {"response", "barge_in_stop", "first_audio"}
    assert 0 <= latencies["response"][0] < 1000  # the fake model answers at once
    sample = metrics.registry.get_sample_value
    assert sample("acs_gateway_response_latency_seconds_count", {"route": "realtime"}) == 1
    assert sample("acs_gateway_barge_in_stop_latency_seconds_count", {"route": "realtime"}) == 1
    assert stop_at > 0 and model.sent_of("response.done")


async def test_local_vad_turn_ends_are_recorded_and_time_the_answer(
    autojump_clock, tmp_path, monkeypatch
):
    """The model's VAD waits 900 ms of silence, the local one 300: both turn ends are in the
    log, the local one first, and the answer is timed from the last end before it."""
    pytest.importorskip("webrtcvad")
    from gateway.config import Config
    from gateway.processors import load
    from gateway.server.serve import serve
    from gateway.testing import open_fake_model
    from tests.test_realtime_e2e import KEY_ENV, options

    monkeypatch.setenv(KEY_ENV, "k")
    said = speech(16000)[: 16000 * 2 * 2]
    async with open_fake_model([speech(24000)[: 24000 * 2]], silence_ms=900) as model:
        config = Config(
            host="127.0.0.1",
            port=0,
            processor="realtime",
            call_events=True,
            recording_dir=str(tmp_path),
        )
        processor = load("realtime", options(model.url, local_vad=True))
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config, processor)
            async with simulated_call(server.urls[0]) as acs:
                await acs.stream(said + bytes(16000 * 2 * 3))
            metrics = server.metrics
            server.stop_now()
    await settle()
    log = events(only(tmp_path, ".jsonl"))
    ends = [(e["t"], e["by"]) for e in log if e["event"] == "turn_ended"]
    [(vad_end, _)] = [end for end in ends if end[1] == "vad"]
    [(model_end, _)] = [end for end in ends if end[1] == "model"]
    assert vad_end < model_end - 0.4  # the local VAD heard the end 600 ms sooner
    [answer] = [e for e in log if e["event"] == "latency" and e["kind"] == "response"]
    assert answer["t"] >= model_end and answer["ms"] == pytest.approx(
        1000 * (answer["t"] - model_end), abs=1
    )
    sample = metrics.registry.get_sample_value
    assert sample("acs_gateway_response_latency_seconds_count", {"route": "realtime"}) == 1


async def test_a_turn_end_times_the_answer_unless_the_bot_is_already_talking(autojump_clock):
    from gateway.records.record import CallRecord, RecordSettings

    measured: list[tuple[str, float]] = []

    class Sink:
        def latency(self, kind: str, route: str, seconds: float) -> None:
            measured.append((kind, round(seconds, 3)))

        def recording_stopped(self, route: str) -> None:
            pass

    class Audio:
        sample_rate = 16000

    class Stub:  # what `started` reads of a Call
        connection_id = correlation_id = None
        path = "/"
        sample_rate = 16000
        audio = Audio

    record = CallRecord(RecordSettings(), "r", None, Sink())
    record.started(Stub, trio.current_time())  # type: ignore[arg-type]  # a stand-in Call
    record.bot_audio([bytes(640)], trio.current_time())  # the greeting: first audio at once
    await trio.sleep(1.0)
    record.note("turn_ended", by="vad")  # the bot is silent: the answer is awaited from here
    await trio.sleep(0.4)
    record.bot_audio([bytes(640) * 10], trio.current_time())  # 200 ms of answer
    await trio.sleep(0.1)
    record.note("turn_ended", by="vad")  # the answer is playing: this starts nothing
    await trio.sleep(0.05)
    record.bot_audio([bytes(640)], trio.current_time() + 0.05)
    assert measured == [("first_audio", 0.0), ("response", 0.4)]


async def test_show_draws_a_record(autojump_clock, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from gateway import cli
    from gateway.records.timeline import load_record

    caller = speech(16000)[: 16000 * 2 * 2]
    async with open_gateway(
        "echo", recording=True, call_events=True, recording_dir=str(tmp_path)
    ) as server:
        async with simulated_call(server.urls[0]) as acs:
            await acs.stream(caller)
            await acs.send_dtmf("7")
            await acs.stream(bytes(16000))
    await settle()
    record = only(tmp_path, ".jsonl")
    timeline = load_record(record.with_suffix(""))
    assert timeline.dtmf == [(pytest.approx(2.0, abs=0.05), "7")]
    assert timeline.speech and timeline.bot and len(timeline.envelopes) == 2
    out = tmp_path / "call.png"
    assert await trio.to_thread.run_sync(cli.main, ["show", str(record), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["show", str(tmp_path / "missing.jsonl")]) == 2


async def test_a_call_is_traced_with_model_sessions_turns_and_barge_ins(
    autojump_clock, monkeypatch
):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.config import Config
    from gateway.processors import load
    from gateway.records import Records
    from gateway.server.serve import serve
    from gateway.testing import open_fake_model
    from tests.test_realtime_e2e import KEY_ENV, conversation, options

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    correlation = "0f9a1b2c-3d4e-5f60-7182-93a4b5c6d7e8"
    monkeypatch.setenv(KEY_ENV, "k")
    async with open_fake_model([speech(24000)], api_key="k") as model:
        config = Config(host="127.0.0.1", port=0, processor="realtime")
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config, load("realtime", options(model.url)))
            server.context.records = Records(server.metrics, tracer=provider.get_tracer("t"))
            async with simulated_call(
                server.urls[0], connection_id="conn-1", correlation_id=correlation
            ) as acs:
                await acs.stream(conversation(16000))
            for _ in range(100):
                if not server.live:
                    break
                await trio.sleep(0.01)
            server.stop_now()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    call = spans["call"]
    assert call.context.trace_id == int(correlation.replace("-", ""), 16)
    assert call.attributes["acs.call_connection_id"] == "conn-1"
    assert call.attributes["gateway.route"] == "realtime"
    assert call.attributes["gateway.ended_by"] == "hangup"
    assert call.attributes["gateway.barge_ins"] == 1
    # 5.5 s of the call clock, plus however long the bridge takes to close its model session
    # after the hang-up (scheduling decides; `hangup_grace` bounds it)
    assert 5.4 < (call.end_time - call.start_time) / 1e9 < 5.5 + config.hangup_grace + 0.1
    [barge] = [e for e in call.events if e.name == "barge_in"]
    assert barge.attributes["heard_ms"] > 0
    turns = [s for s in exporter.get_finished_spans() if s.name == "turn"]
    assert turns and any(t.attributes["gateway.turn.answered"] for t in turns)
    assert spans["model session"].parent.span_id == call.context.span_id
    assert all(t.parent.span_id == call.context.span_id for t in turns)
    assert acs.stop_times


def test_tracing_off_never_imports_opentelemetry():
    import subprocess
    import sys

    code = (
        "import sys, gateway.server.serve, gateway.records;"
        "from gateway.records import Records, RecordSettings;"
        "Records().open(RecordSettings(), {}, 'echo');"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unmixed_audio_gets_a_channel_per_participant(tmp_path):
    path = tmp_path / "unmixed.wav"
    rec = AudioRecording(str(path), 16000, 0.0, participants=4, max_pending=10**8)
    for k in range(50):
        for n, who in enumerate(["8:acs:a", "8:acs:b", "8:acs:c", "8:acs:d", "8:acs:e"]):
            rec.caller(numbered_frames(n + 1, 1), who, k * 0.02)
    rec.bot([numbered_frames(9, 1)], 0.5)
    rec.close(1.0)
    DISK.wait_idle(10.0)
    channels, _ = read_channels(path)
    assert len(channels) == 5  # four participants, then the bot
    assert [set(c) for c in channels[:4]] == [{1}, {2}, {3}, {4}]  # the fifth is not recorded
    assert set(channels[4]) == {0, 9}


async def test_echo_channels_stay_aligned_through_pauses(autojump_clock, tmp_path):
    """End to end: 30 s of numbered frames in bursts with pauses; the echo of frame k sits
    within one frame of frame k on the caller's channel. The autojump clock runs far ahead of
    the disk thread's real time, so the buffer holds the whole call: on a loaded machine the
    default would drop audio (counted), which this test is not about."""
    async with open_gateway(
        "echo",
        recording=True,
        call_events=True,
        recording_dir=str(tmp_path),
        recording_buffer_seconds=120,
    ) as server:
        async with simulated_call(server.urls[0]) as acs:
            first = 1
            for burst, pause in [(150, 1.0), (400, 0.33), (250, 2.5), (500, 0.07), (200, 0.5)]:
                await acs.stream(numbered_frames(first, burst))
                first += burst
                await trio.sleep(pause)
    await settle()
    (said, bot), _ = read_channels(only(tmp_path, ".wav"))
    assert said.tobytes().replace(b"\0\0", b"") == bytes(acs.sent[None]).replace(b"\0\0", b"")
    where_said = {said[i]: i for i in range(len(said) - 1, -1, -FRAME // 4) if said[i]}
    where_bot = {bot[i]: i for i in range(len(bot) - 1, -1, -FRAME // 4) if bot[i]}
    assert len(where_bot) == first - 1
    assert max(abs(where_bot[k] - where_said[k]) for k in where_bot) <= FRAME


def test_bot_audio_placed_before_the_flushed_point_keeps_only_what_is_still_ahead(tmp_path):
    """A bot run that starts before what was already handed to the disk: its part there is
    counted late and left out, the rest lands where it belongs."""
    rec = AudioRecording(str(tmp_path / "late.wav"), 16000, 0.0, max_pending=10**8)
    for k in range(51):  # the caller's first second: the flush at 1.0 s settles 0-0.75 s
        rec.caller(bytes(2 * FRAME), None, k * 0.02)
    assert rec.base == 12000
    rec.bot([numbered_frames(101, 3)], 0.70)  # samples 11200-12159: 800 of them are settled
    for k in range(51, 100):
        rec.caller(bytes(2 * FRAME), None, k * 0.02)
    rec.close(2.0)
    DISK.wait_idle(10.0)
    (_, bot), _ = read_channels(tmp_path / "late.wav")
    assert rec.late_bytes == 2 * 800
    assert not any(bot[:12000]) and not any(bot[12160:])
    assert list(bot[12000:12160]) == [103] * 160  # the third frame's second half


def test_bot_audio_alone_is_flushed_as_it_goes(tmp_path):
    rec = AudioRecording(str(tmp_path / "bot.wav"), 16000, 0.0, max_pending=10**8)
    for k in range(500):  # 10 s of bot audio, and not a frame from the caller
        rec.bot([numbered_frames(k + 1, 1)], k * 0.02)
    waiting = 500 * FRAME * 2 * 2 - rec.submitted  # stereo bytes not yet handed to the disk
    assert waiting < 3 * 16000 * 2 * 2  # at most about 3 s wait in memory
    rec.close(10.0)
    DISK.wait_idle(10.0)
    (said, bot), _ = read_channels(tmp_path / "bot.wav")
    assert not any(said) and bot[0] == 1 and bot[-1] == 500 and len(bot) == 500 * FRAME


async def test_a_route_records_its_calls_when_the_gateway_does_not(autojump_clock, tmp_path):
    from gateway.config import Config, Route
    from gateway.control import ControlPlane
    from gateway.processors import load
    from gateway.server.serve import serve

    routes = (Route(name="kept", recording=True, call_events=True), Route(name="plain"))
    config = Config(host="127.0.0.1", port=0, routes=routes, recording_dir=str(tmp_path))
    echo = load("echo")
    control = ControlPlane(config, {"kept": echo, "plain": echo, "default": echo})
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, echo, control=control))
        for resource, connection_id in (("/ws/plain", "call-plain"), ("/ws/kept", "call-kept")):
            async with simulated_call(
                server.urls[0], resource=resource, connection_id=connection_id
            ) as acs:
                await acs.stream(speech(16000)[: 16000 * 2])
                await acs.wait_for_audio(16000 * 2)
        server.stop_now()
    await settle()
    assert [p.name.endswith("call-kept.wav") for p in tmp_path.glob("*.wav")] == [True]
    assert [p.name.endswith("call-kept.jsonl") for p in tmp_path.glob("*.jsonl")] == [True]
