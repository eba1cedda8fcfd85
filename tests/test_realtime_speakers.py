"""The `speakers` policy on unmixed streams: the mixer (sans-IO, given `now`), and end to end
with the fake model: `mix` sends every voice time-aligned on the packets' timestamps, `follow`
hears the caller, `first` stays as it was."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pybase64
import pytest
import trio

from gateway.acs.client import audio_packet
from gateway.audio.mix import Mixer
from gateway.call.observer import NoObserver
from gateway.processors import AudioHandler, Call, load
from gateway.testing import open_fake_model, open_gateway, simulated_call
from tests.test_realtime_e2e import KEY_ENV, idle, options

RATE = 24000
FRAME = 960  # bytes in 20 ms at 24 kHz
T0 = datetime(2024, 11, 15, 19, 16, 12, 925000, tzinfo=UTC)


def tone(hz: float, seconds: float, amplitude: int = 12000) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes()


def stamp(k: int) -> str:
    """ACS's ISO-8601 timestamp of frame `k`."""
    return (T0 + timedelta(milliseconds=20 * k)).isoformat(timespec="milliseconds")


def mixed(*tracks: bytes) -> bytes:
    n = max(len(t) for t in tracks) // 2
    acc = np.zeros(n, dtype=np.int32)
    for t in tracks:
        acc[: len(t) // 2] += np.frombuffer(t, dtype=np.int16)
    return np.clip(acc, -32768, 32767).astype(np.int16).tobytes()


def frames_of(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]


# -- the mixer -----------------------------------------------------------------------------------


def sample(v: int) -> bytes:
    return v.to_bytes(2, "little", signed=True) * 480


def test_frames_of_one_slot_are_summed_and_clipped():
    m = Mixer()
    assert m.push("a", stamp(0), sample(1), 0.0) == []  # b's frame of this instant may come
    assert m.push("b", stamp(0), sample(2), 0.001) == [sample(3)]
    assert m.push("a", stamp(1), sample(30000), 0.02) == []  # waits for b
    assert m.push("b", stamp(1), sample(30000), 0.021) == [sample(32767)]  # clipped, not wrapped
    assert m.push("a", stamp(2), sample(-30000), 0.04) == []
    assert m.push("b", stamp(2), sample(-30000), 0.041) == [sample(-32768)]
    assert m.push("b", stamp(3), sample(200), 0.06) == []
    assert m.push("a", stamp(3), sample(-300), 0.061) == [sample(-100)]
    assert m.push("a", stamp(4), sample(5), 0.08) == []
    assert m.push("a", stamp(5), sample(6), 0.2) == [sample(5)]  # b gone quiet: a alone
    assert m.push("b", stamp(4), sample(7), 0.2) == []  # too late to align: dropped, counted
    assert m.stats.late_frames == 1 and m.stats.waits_expired == 0
    assert m.flush() == [sample(6)]


def test_a_late_speaker_is_aligned_on_timestamps_within_the_wait():
    m = Mixer(wait_ms=60)
    a, b = frames_of(tone(440, 0.2)), frames_of(tone(1000, 0.2))
    out: list[bytes] = []
    # b's first frame comes with a's; later ones in bursts of three, up to 40 ms late
    for tick in range(12):
        now = tick * 0.020
        if tick < len(a):
            out += m.push("a", stamp(tick), a[tick], now)
        for k in range(len(b)):
            if k == tick == 0 or (k > 0 and tick == 3 * -(-k // 3)):
                out += m.push("b", stamp(k), b[k], now)
    out += m.flush()
    assert b"".join(out) == mixed(b"".join(a), b"".join(b))
    assert m.stats.waits_expired == 0 and m.stats.late_frames == 0


def test_a_speaker_who_stops_holds_the_others_at_most_the_wait():
    m = Mixer(wait_ms=60)
    a = frames_of(tone(440, 0.4))
    out_times: list[float] = []
    for k, f in enumerate(a):
        now = k * 0.020
        out_times += [now] * len(m.push("a", stamp(k), f, now))
        if k < 5 and k != 2:  # b skips a frame, then leaves
            out_times += [now] * len(m.push("b", stamp(k), bytes(FRAME), now))
    assert len(out_times) + len(m.flush()) == len(a)  # nothing lost
    delays = [t - k * 0.020 for k, t in enumerate(out_times)]
    assert max(delays) <= 0.060 + 0.020 + 1e-9  # bounded by the wait (and one frame's arrival)
    assert delays[-1] == pytest.approx(0.020)  # and b, gone quiet, holds nothing any more
    assert m.stats.waits_expired == 0 and m.stats.late_frames == 0


def test_a_speaker_further_behind_than_the_wait_is_dropped_and_counted():
    m = Mixer(wait_ms=60)
    a = frames_of(tone(440, 2.0))
    out: list[bytes] = []
    delays: list[float] = []
    for k in range(len(a)):
        for who, j, now in (("a", k, k * 0.020), ("b", k - 5, k * 0.020 + 0.001)):
            if j >= 0:  # b trails by 100 ms, for good
                got = m.push(who, stamp(j), a[j] if who == "a" else bytes(FRAME), now)
                delays += [now - (len(out) + i) * 0.020 for i in range(len(got))]
                out += got
    assert max(delays) <= 0.060 + 0.001 + 1e-9  # a waits at most the wait, never more
    out += m.flush()
    assert b"".join(out) == b"".join(a)  # and loses nothing
    assert m.stats.waits_expired > 0 and m.stats.late_frames > 0


def test_frames_without_timestamps_follow_on():
    m = Mixer()
    a, b = frames_of(tone(440, 0.1)), frames_of(tone(1000, 0.1))
    out: list[bytes] = []
    for k in range(len(a)):
        out += m.push("a", None, a[k], k * 0.02)
        out += m.push("b", "not a time", b[k], k * 0.02)
    out += m.flush()
    assert b"".join(out) == mixed(b"".join(a), b"".join(b))


# -- end to end ----------------------------------------------------------------------------------


class Notes(NoObserver):
    def __init__(self) -> None:
        self.notes: list[tuple[str, dict[str, object]]] = []

    def note(self, kind: str, **fields: object) -> None:
        self.notes.append((kind, fields))


class Control:
    """A control handle that knows only the caller (the rest is not used here)."""

    def __init__(self, caller: str) -> None:
        self.caller = caller


class spied:
    """The realtime processor, with a record and (`caller`) the answered call's caller: set
    before the bridge is made, by whichever of the handler and the coroutine asks first."""

    def __init__(self, opts: dict[str, object], calls: list[Call], caller: str | None = None):
        self.inner = load("realtime", opts)
        self.calls = calls
        self.caller = caller

    def _prepare(self, call: Call) -> None:
        if call not in self.calls:
            call.observer = Notes()
            if self.caller is not None:
                call.control = Control(self.caller)  # type: ignore[assignment]  # a stub
            self.calls.append(call)

    def audio_handler(self, call: Call) -> AudioHandler | None:
        self._prepare(call)
        return self.inner.audio_handler(call)  # type: ignore[attr-defined,no-any-return]

    async def __call__(self, call: Call) -> None:
        self._prepare(call)
        await self.inner(call)


def packet(pcm: bytes, who: str, k: int) -> str:
    obj: dict[str, Any] = audio_packet(pcm, who)
    obj["audioData"]["timestamp"] = stamp(k)
    return orjson.dumps(obj).decode()


async def unmixed_call(
    monkeypatch: pytest.MonkeyPatch,
    tracks: Mapping[str, tuple[bytes, int]],  # participant -> (PCM, burst)
    caller: str | None = None,
    **opts: object,
) -> tuple[bytes, Call]:
    """Stream each participant's track, frame k stamped k; a track's frames after the first
    come in bursts of `burst` (up to `burst - 1` frames late). The audio the model received,
    and the call."""
    monkeypatch.setenv(KEY_ENV, "k")
    calls: list[Call] = []
    framed = {who: (frames_of(pcm), burst) for who, (pcm, burst) in tracks.items()}
    ticks = max(len(f) + burst for f, burst in framed.values()) + 5
    async with open_fake_model() as model:
        async with open_gateway(spied(options(model.url, **opts), calls, caller)) as server:
            async with simulated_call(server.urls[0], sample_rate=RATE) as acs:
                start = trio.current_time()
                for tick in range(ticks):
                    await trio.sleep_until(start + tick * 0.020)
                    for who, (fs, burst) in framed.items():
                        for k in range(len(fs)):
                            if k == tick == 0 or (k > 0 and tick == burst * -(-k // burst)):
                                await acs.send_raw(packet(fs[k], who, k))
                await trio.sleep(0.2)
            await idle(server)
    appended = [e["audio"] for e in model.received("input_audio_buffer.append")]
    return b"".join(pybase64.b64decode(a) for a in appended), calls[0]


async def test_mix_sends_both_voices_time_aligned(autojump_clock, monkeypatch):
    alice = tone(440, 1.0)
    bob = bytes(10 * FRAME) + tone(1000, 0.6)  # starts 200 ms in
    heard, call = await unmixed_call(
        monkeypatch, {"8:acs:alice": (alice, 1), "8:acs:bob": (bob, 3)}, speakers="mix"
    )
    # what the model heard is the sample-exact sum of both: aligned on the timestamps, though
    # bob's packets arrived up to 40 ms after alice's
    assert heard == mixed(alice, bob)
    assert call.stats.mix_waits_expired == 0 and call.stats.mix_late_frames == 0
    spoke = [f["participant"] for kind, f in call.observer.notes if kind == "speaker"]  # type: ignore[attr-defined]
    assert spoke == ["8:acs:alice", "8:acs:bob"]
    [mix] = [f for kind, f in call.observer.notes if kind == "mix"]  # type: ignore[attr-defined]
    assert mix == {"waits_expired": 0, "late_frames": 0, "held_at_end": 0}


async def test_follow_hears_the_caller_only(autojump_clock, monkeypatch):
    alice, bob = tone(440, 0.5), tone(1000, 0.5)
    heard, call = await unmixed_call(
        monkeypatch,
        {"8:acs:alice": (alice, 1), "4:+14255550123": (bob, 1)},
        caller="4:+14255550123",
        speakers="follow",
    )
    assert heard == bob
    notes = [f for kind, f in call.observer.notes if kind == "speaker"]  # type: ignore[attr-defined]
    assert {"participant": "8:acs:alice", "policy": "follow", "heard": False} in notes
    assert {"participant": "4:+14255550123", "policy": "follow"} in notes


async def test_follow_without_a_control_handle_hears_the_first(autojump_clock, monkeypatch, caplog):
    alice, bob = tone(440, 0.5), tone(1000, 0.5)
    heard, _ = await unmixed_call(
        monkeypatch, {"8:acs:alice": (alice, 1), "8:acs:bob": (bob, 1)}, speakers="follow"
    )
    assert heard == alice
    assert "the caller's id is unknown" in caplog.text


def test_a_clock_far_ahead_is_held_a_bounded_way_ahead():
    m = Mixer()
    a = frames_of(tone(440, 2.0))
    out: list[bytes] = []
    for k in range(len(a)):
        out += m.push("a", stamp(k), a[k], k * 0.020)
        out += m.push("b", stamp(k + 500), bytes(FRAME), k * 0.020 + 0.001)  # 10 s ahead
        assert m.pending_frames <= 2 * 52  # never the 10 s its stamps ask for
        assert len(out) >= k - 1  # a is not held back by it
    out += m.flush()
    assert b"".join(out)[: len(a) * FRAME] == b"".join(a)  # a's audio flowed, in order


def test_an_empty_slot_waited_for_goes_by_the_clock():
    m = Mixer(wait_ms=60)
    assert m.push("a", stamp(0), sample(1), 0.0) == []
    assert m.push("b", stamp(0), sample(2), 0.001) == [sample(3)]
    assert m.push("a", stamp(2), sample(5), 0.02) == []  # a skipped slot 1; b may still send it
    due = m.due_at(0.02)
    assert due == pytest.approx(0.08)  # not before the wait: no busy loop until then
    assert m.release(0.05) == []
    assert m.release(due) == [sample(5)]  # b sent nothing for slot 1 in time
    assert m.stats.waits_expired == 1
