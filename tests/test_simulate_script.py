"""What simulated callers say: scenarios and per-call scripts (sans-IO, no clock)."""

from __future__ import annotations

import random
import wave

import pytest

from gateway.simulate.script import QUIET_GAP, CallScript, build_scenario
from gateway.testing import frames, speech


def _wav(path, rate, pcm=b"\x10\x00" * 800):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return str(path)


def test_talk_mode_loops_the_clip_in_real_frames():
    sc = build_scenario(duration=1.0, pause=0)
    clip = frames(speech(16000), 16000)
    script = CallScript(sc, random.Random(1), keep_timeline=True)
    assert script.ticks == 50
    sent = [script.tick(k, k * 0.02) for k in range(len(clip) + 2)]
    assert all(len(s) == 1 and s[0][0] is None and not s[0][2] for s in sent)
    assert [s[0][1] for s in sent[: len(clip)]] == clip
    assert sent[len(clip)][0][1] == clip[0]  # looped
    assert script.speech == [[0.0, pytest.approx((len(clip) + 2) * 0.02)]]


def test_unmixed_speakers_are_tagged_and_do_not_speak_in_unison():
    sc = build_scenario(unmixed=True, speakers=3)
    script = CallScript(sc, random.Random(1), keep_timeline=False)
    tick = script.tick(0, 0.0)
    assert [who for who, _, _ in tick] == [
        "8:acs:simulated-speaker-1",
        "8:acs:simulated-speaker-2",
        "8:acs:simulated-speaker-3",
    ]
    assert len({pcm for _, pcm, _ in tick}) == 3


def test_turns_speak_pause_then_wait_for_the_bots_reply():
    sc = build_scenario(duration=30, turn=1.0, pause=0.5, reply_timeout=2.0)
    clip = frames(speech(16000), 16000)
    script = CallScript(sc, random.Random(1), keep_timeline=False)
    spoken = [not script.tick(k, k * 0.02)[0][2] for k in range(75)]
    assert spoken == [True] * 50 + [False] * 25  # a 1 s turn, then 0.5 s of silence
    # the bot answers for 1 s from 1.5 s: the caller waits for it to end (plus QUIET_GAP)
    k = 75
    for _ in range(50):
        script.bot_audio(k * 0.02)
        assert script.tick(k, k * 0.02)[0][2]
        k += 1
    while script.tick(k, k * 0.02)[0][2]:
        k += 1
    assert k * 0.02 == pytest.approx(2.5 + QUIET_GAP, abs=0.03)
    assert script.tick(k + 1, (k + 1) * 0.02)[0][1] == clip[51]  # the clip goes on
    # a quiet bot: the next turn follows the pause; a bot that never stops: reply_timeout
    quiet = CallScript(sc, random.Random(1), keep_timeline=False)
    assert [quiet.tick(k, k * 0.02)[0][2] for k in range(76)][74:] == [True, False]
    endless = CallScript(sc, random.Random(1), keep_timeline=False)
    silent = []
    for k in range(75 + 100 + 1):
        endless.bot_audio(k * 0.02)
        silent.append(endless.tick(k, k * 0.02)[0][2])
    assert silent[75:] == [True] * 100 + [False]


def test_barge_in_waits_for_the_bot_then_speaks_over_it_once():
    sc = build_scenario(duration=30, barge_in_after=0.5)
    script = CallScript(sc, random.Random(1), keep_timeline=True)
    silence = sc.silence
    # quiet (silent frames) while the bot has not started
    for k in range(10):
        assert script.tick(k, k * 0.02) == [(None, silence, True)]
    k = 10  # the bot starts talking at 0.2 s
    while not script.barge_ins:
        script.bot_audio(k * 0.02)
        out = script.tick(k, k * 0.02)
        k += 1
    assert script.barge_ins == [pytest.approx(0.7)]  # 0.5 s of bot audio, on the tick grid
    assert out == [(None, sc.barge_in_clip[0], False)]
    for i in range(1, len(sc.barge_in_clip)):
        script.bot_audio(k * 0.02)  # bot audio still arriving does not restart anything
        assert script.tick(k, k * 0.02)[0][1] == sc.barge_in_clip[i]
        k += 1
    assert script.tick(k, k * 0.02) == [(None, silence, True)]  # quiet again
    assert script.speech == [[pytest.approx(0.7), pytest.approx(k * 0.02)]]
    # the next barge-in needs the bot to talk again for 0.5 s
    script.bot_audio(k * 0.02)
    script.stop_audio(k * 0.02 + 0.1)  # the bot stopped: the wait starts over
    assert script.tick(k + 10, (k + 10) * 0.02)[0][2]
    assert len(script.barge_ins) == 1 and not script.no_reply


def test_barge_in_prompts_a_bot_that_waits_and_never_waits_forever():
    sc = build_scenario(duration=60, barge_in_after=0.5, turn=1.0, reply_timeout=2.0)
    script = CallScript(sc, random.Random(1), keep_timeline=False)
    spoken = [not script.tick(k, k * 0.02)[0][2] for k in range(50 + 50 + 100 + 1)]
    # quiet for OPENING_WAIT, a 1 s turn to prompt the bot, 2 s for a reply, then again
    assert spoken == [False] * 50 + [True] * 50 + [False] * 100 + [True]
    assert script.no_reply and not script.barge_ins  # "no reply to barge in on"
    # a bot that answers the prompt is barged in on
    answered = CallScript(sc, random.Random(1), keep_timeline=False)
    for k in range(100):
        answered.tick(k, k * 0.02)
    k = 100
    while not answered.barge_ins:
        answered.bot_audio(k * 0.02)
        answered.tick(k, k * 0.02)
        k += 1
    assert answered.barge_ins == [pytest.approx(2.5)] and not answered.no_reply


def test_dtmf_is_due_by_script_time():
    sc = build_scenario(dtmf=((1.0, "5"), (0.5, "1"), (1.0, "#")))
    script = CallScript(sc, random.Random(1), keep_timeline=False)
    assert script.dtmf_due(0.48) == []
    assert script.dtmf_due(0.5) == ["1"]
    assert script.dtmf_due(2.0) == ["5", "#"]
    assert script.dtmf_due(3.0) == []


def test_hangups_hit_the_requested_share_of_calls_repeatably():
    sc = build_scenario(duration=10, hangup_fraction=0.3)
    ticks = [
        CallScript(sc, random.Random(f"7/{i}"), keep_timeline=False).hangup_tick for i in range(400)
    ]
    again = [
        CallScript(sc, random.Random(f"7/{i}"), keep_timeline=False).hangup_tick for i in range(400)
    ]
    assert ticks == again
    hung = [t for t in ticks if t is not None]
    assert 80 < len(hung) < 160
    assert all(1 <= t < 500 for t in hung)
    assert CallScript(build_scenario(), random.Random(1), keep_timeline=False).hangup_tick is None


def test_wav_files_are_checked(tmp_path):
    sc = build_scenario(sample_rate=24000, wavs=(_wav(tmp_path / "a.wav", 24000),))
    assert sc.clips[0][0][:4] == b"\x10\x00\x10\x00"
    assert len(sc.clips[0][0]) == 960
    with pytest.raises(ValueError, match="16000 Hz, but the calls stream 24000 Hz"):
        build_scenario(sample_rate=24000, wavs=(_wav(tmp_path / "b.wav", 16000),))
    with pytest.raises(ValueError, match="unmixed"):
        build_scenario(speakers=2)
    with pytest.raises(ValueError, match="16000 or 24000"):
        build_scenario(sample_rate=8000)
    with pytest.raises(ValueError, match="between 0 and 1"):
        build_scenario(hangup_fraction=2)
