"""What a simulated caller says, frame by frame: the scenario of a load test and each call's
script (speech, silence, scripted barge-in, DTMF, an abrupt hang-up).

Owns: deciding what each call sends at each 20 ms tick, given the time and what the gateway
has sent so far. Never: I/O or clocks (the simulated call, `sim_call`, passes the time in), so
it is tested without sockets.

Turns, as a caller takes them: speak `turn` seconds of the clip, then be quiet (ACS keeps
sending frames, flagged silent) for `pause` seconds, long enough for a voice-activity detector
to end the turn, then wait while the bot answers (at most `reply_timeout`), and speak again,
where the clip left off. `pause` 0 is one unbroken stream of speech. Echoed audio is not the bot
talking (`sim_call` reports only audio that is not an echo of the caller's own frames).

Barge-in, as a caller does it: the caller is quiet until the bot's audio has been arriving for
`barge_in_after` seconds, then speaks the barge-in clip once while the bot is still talking; the
gateway's processor should answer with stop-audio. A bot that waits for the caller to speak
first is prompted: after `OPENING_WAIT` of silence the caller speaks a turn, and waits for the
reply at most `reply_timeout`; a call whose bot never replied is marked `no_reply` (reported as
"no reply to barge in on"), and the caller speaks again rather than waiting forever.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Final

import attrs

from ..acs.packets import frame_bytes
from ..audio.samples import frames, read_wav, speech

OPENING_WAIT: Final = 1.0  # seconds a barge-in caller waits for a bot that talks first
QUIET_GAP: Final = 0.3  # seconds without bot audio after which the bot has stopped talking


@attrs.frozen
class Scenario:
    """The part of a load test every call shares. Clips are split into 20 ms frames once."""

    sample_rate: int = 16000
    duration: float = 10.0  # seconds each call lasts
    speakers: tuple[str | None, ...] = (None,)  # (None,): mixed; else unmixed participant ids
    clips: tuple[tuple[bytes, ...], ...] = ()  # framed audio, one clip per speaker
    barge_in_after: float | None = None  # seconds of bot audio before the caller barges in
    barge_in_clip: tuple[bytes, ...] = ()
    dtmf: tuple[tuple[float, str], ...] = ()  # (seconds into the call, tone)
    hangup_fraction: float = 0.0  # calls that drop the TCP connection at a random moment
    turn: float = 3.0  # seconds the caller speaks in one turn
    pause: float = 1.5  # seconds of silence that end a turn (0: speak without pauses)
    reply_timeout: float = 5.0  # seconds the caller waits for the bot to answer

    @property
    def silence(self) -> bytes:
        return bytes(frame_bytes(self.sample_rate))


def build_scenario(
    *,
    sample_rate: int = 16000,
    duration: float = 10.0,
    speakers: int = 1,
    unmixed: bool = False,
    wavs: tuple[str, ...] = (),
    barge_in_after: float | None = None,
    barge_in_wav: str | None = None,
    dtmf: tuple[tuple[float, str], ...] = (),
    hangup_fraction: float = 0.0,
    turn: float = 3.0,
    pause: float = 1.5,
    reply_timeout: float = 5.0,
) -> Scenario:
    """A Scenario from command-line terms. Raises ValueError with a readable message."""
    if sample_rate not in (16000, 24000):
        raise ValueError(f"sample rate must be 16000 or 24000, not {sample_rate}")
    if speakers < 1 or (speakers > 1 and not unmixed):
        raise ValueError("several speakers need --unmixed (a mixed stream has one track)")
    if not 0.0 <= hangup_fraction <= 1.0:
        raise ValueError("--hangup-fraction must be between 0 and 1")
    if turn <= 0 or pause < 0 or reply_timeout <= 0:
        raise ValueError("--turn and --reply-timeout must be positive, --pause at least 0")
    clips = [_load(path, sample_rate) for path in wavs] or [speech(sample_rate)]
    names: tuple[str | None, ...] = (
        tuple(f"8:acs:simulated-speaker-{i + 1}" for i in range(speakers)) if unmixed else (None,)
    )
    framed = []
    for i in range(len(names)):
        clip = frames(clips[i % len(clips)], sample_rate)
        # Speakers sharing one clip start at different places in it, so they do not speak in
        # unison.
        shift = (i * len(clip) // len(names)) if len(clips) < len(names) else 0
        framed.append(tuple(clip[shift:] + clip[:shift]))
    if barge_in_wav is not None:
        barge = frames(_load(barge_in_wav, sample_rate), sample_rate)
    elif sample_rate == 16000:
        barge = frames(speech(16000, "interrupt"), 16000)
    else:
        barge = frames(speech(sample_rate), sample_rate)[:150]  # 3 s of the speech clip
    return Scenario(
        sample_rate=sample_rate,
        duration=duration,
        speakers=names,
        clips=tuple(framed),
        barge_in_after=barge_in_after,
        barge_in_clip=tuple(barge),
        dtmf=tuple(sorted(dtmf, key=lambda d: d[0])),  # same time: in the order given
        hangup_fraction=hangup_fraction,
        turn=turn,
        pause=pause,
        reply_timeout=reply_timeout,
    )


def _load(path: str | Path, sample_rate: int) -> bytes:
    pcm, rate = read_wav(path)
    if rate != sample_rate:
        raise ValueError(f"{path}: {rate} Hz, but the calls stream {sample_rate} Hz")
    return pcm


class CallScript:
    """One call's script. `sim_call.SimCall` calls `tick(k, now)` every 20 ms (k counts ticks
    from the call's start) and reports what the gateway sent with `bot_audio` / `stop_audio`."""

    def __init__(self, scenario: Scenario, rng: random.Random, *, keep_timeline: bool) -> None:
        self.scenario = scenario
        self.ticks = round(scenario.duration * 50)
        self.hangup_tick: int | None = None
        if scenario.hangup_fraction and rng.random() < scenario.hangup_fraction:
            self.hangup_tick = rng.randrange(1, max(2, self.ticks))
        self._dtmf = list(scenario.dtmf)
        self._turn_ticks = max(1, round(scenario.turn * 50))
        self._pause_ticks = round(scenario.pause * 50)
        self._pos = 0  # next frame of the clips
        self._phase = "speak"  # speak | pause | wait (turns); listen | prompt | barge (barge-in)
        self._phase_tick = 0  # tick at which the phase began
        self._phase_at: float | None = None  # time at which the phase began
        self._prompted = False  # a barge-in caller has spoken to a bot that did not talk first
        self._bot_since: float | None = None  # the bot has been talking since (None: quiet)
        self._bot_until = 0.0  # the bot's audio received so far ends here
        self.barge_ins: list[float] = []  # when each barge-in began
        self.no_reply = False  # the bot never answered the caller's turn (barge-in scenario)
        self.speech: list[list[float]] | None = [] if keep_timeline else None
        self._speaking = False

    @property
    def barging(self) -> bool:
        return self.scenario.barge_in_after is not None

    def tick(self, k: int, now: float) -> list[tuple[str | None, bytes, bool]]:
        """(participant, 20 ms of PCM, silent) for every track at tick `k`."""
        sc = self.scenario
        if self._phase_at is None:
            self._phase_at = now
        if self._bot_since is not None and now > self._bot_until + QUIET_GAP:
            self._bot_since = None  # the bot's reply is over
        if self.barging:
            return self._barge_tick(k, now)
        speaking = self._turn(k, now)
        if speaking:
            out = [
                (who, clip[self._pos % len(clip)], False)
                for who, clip in zip(sc.speakers, sc.clips, strict=True)
            ]
            self._pos += 1
        else:
            out = [(who, sc.silence, True) for who in sc.speakers]
        self._note_speech(now, speaking)
        return out

    def _turn(self, k: int, now: float) -> bool:
        if not self._pause_ticks:
            return True
        if self._phase == "speak" and k - self._phase_tick >= self._turn_ticks:
            self._enter("pause", k, now)
        if self._phase == "pause" and k - self._phase_tick >= self._pause_ticks:
            self._enter("wait", k, now)
        if self._phase == "wait":
            assert self._phase_at is not None
            bot_talking = now < self._bot_until + QUIET_GAP
            if not bot_talking or now - self._phase_at >= self.scenario.reply_timeout:
                self._enter("speak", k, now)
        return self._phase == "speak"

    def _barge_tick(self, k: int, now: float) -> list[tuple[str | None, bytes, bool]]:
        sc = self.scenario
        assert sc.barge_in_after is not None and self._phase_at is not None
        if self._phase == "speak":  # a barge-in call starts listening
            self._enter("listen", k, now)
        if self._phase == "listen":
            if self._bot_since is not None and now - self._bot_since >= sc.barge_in_after:
                self._enter("barge", k, now)
                self.barge_ins.append(now)
            elif self._bot_since is None:
                waited = now - self._phase_at
                if waited >= (sc.reply_timeout if self._prompted else OPENING_WAIT):
                    if self._prompted and not self.barge_ins:
                        self.no_reply = True
                    self._prompted = True
                    self._enter("prompt", k, now)
        out = [(who, sc.silence, True) for who in sc.speakers]
        i = k - self._phase_tick
        if self._phase == "prompt":
            if i < self._turn_ticks:
                clip = sc.clips[0]
                out[0] = (sc.speakers[0], clip[self._pos % len(clip)], False)
                self._pos += 1
            else:
                self._enter("listen", k, now)
        elif self._phase == "barge":
            if i < len(sc.barge_in_clip):
                out[0] = (sc.speakers[0], sc.barge_in_clip[i], False)
            else:  # the clip is over: wait for the bot's next reply
                self._enter("listen", k, now)
                self._bot_since = None
        self._note_speech(now, not out[0][2])
        return out

    def _enter(self, phase: str, k: int, now: float) -> None:
        self._phase, self._phase_tick, self._phase_at = phase, k, now

    def dtmf_due(self, elapsed: float) -> list[str]:
        tones = []
        while self._dtmf and self._dtmf[0][0] <= elapsed:
            tones.append(self._dtmf.pop(0)[1])
        return tones

    def bot_audio(self, now: float, seconds: float = 0.02) -> None:
        """The bot sent `seconds` of audio (not an echo of the caller's)."""
        self._bot_until = max(self._bot_until, now) + seconds
        if self._bot_since is None and self._phase != "barge":
            self._bot_since = now

    def stop_audio(self, now: float) -> None:
        self._bot_until = now
        if self._phase != "barge":
            self._bot_since = None

    def _note_speech(self, now: float, speaking: bool) -> None:
        if self.speech is None:
            return
        if speaking and not self._speaking:
            self.speech.append([now, now + 0.02])
        elif speaking:
            self.speech[-1][1] = now + 0.02
        self._speaking = speaking
