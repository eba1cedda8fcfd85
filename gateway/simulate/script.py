"""What a simulated caller says, frame by frame: the scenario of a load test and each call's
script (speech, silence, scripted barge-in, DTMF, an abrupt hang-up).

Owns: deciding what each call sends at each 20 ms tick, given the time and what the gateway
has sent so far. Never: I/O or clocks (the runner passes the time in), so it is tested without
sockets.

Barge-in, as a caller does it: the caller is quiet (ACS keeps sending frames, flagged silent)
until the bot's audio has been arriving for `barge_in_after` seconds, then speaks the barge-in
clip once while the bot is still talking; the gateway's processor should answer with stop-audio.
After the clip, the caller is quiet again until the bot starts its next reply.
"""

from __future__ import annotations

import random
from pathlib import Path

import attrs

from ..acs.packets import frame_bytes
from ..audio.samples import frames, read_wav, speech


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
) -> Scenario:
    """A Scenario from command-line terms. Raises ValueError with a readable message."""
    if sample_rate not in (16000, 24000):
        raise ValueError(f"sample rate must be 16000 or 24000, not {sample_rate}")
    if speakers < 1 or (speakers > 1 and not unmixed):
        raise ValueError("several speakers need --unmixed (a mixed stream has one track)")
    if not 0.0 <= hangup_fraction <= 1.0:
        raise ValueError("--hangup-fraction must be between 0 and 1")
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
    )


def _load(path: str | Path, sample_rate: int) -> bytes:
    pcm, rate = read_wav(path)
    if rate != sample_rate:
        raise ValueError(f"{path}: {rate} Hz, but the calls stream {sample_rate} Hz")
    return pcm


class CallScript:
    """One call's script. The runner calls `tick(k, now)` every 20 ms (k counts ticks from the
    call's start) and reports what the gateway sent with `bot_audio` / `stop_audio`."""

    def __init__(self, scenario: Scenario, rng: random.Random, *, keep_timeline: bool) -> None:
        self.scenario = scenario
        self.ticks = round(scenario.duration * 50)
        self.hangup_tick: int | None = None
        if scenario.hangup_fraction and rng.random() < scenario.hangup_fraction:
            self.hangup_tick = rng.randrange(1, max(2, self.ticks))
        self._dtmf = list(scenario.dtmf)
        self._bot_since: float | None = None  # the bot has been talking since (None: quiet)
        self._barge_tick: int | None = None  # tick at which the current barge-in clip began
        self.barge_ins: list[float] = []  # when each barge-in began
        self.speech: list[list[float]] | None = [] if keep_timeline else None
        self._speaking = False

    @property
    def barging(self) -> bool:
        return self.scenario.barge_in_after is not None

    def tick(self, k: int, now: float) -> list[tuple[str | None, bytes, bool]]:
        """(participant, 20 ms of PCM, silent) for every track at tick `k`."""
        sc = self.scenario
        if not self.barging:
            out = [
                (who, clip[k % len(clip)], False)
                for who, clip in zip(sc.speakers, sc.clips, strict=True)
            ]
            self._note_speech(now, True)
            return out
        if self._barge_tick is None and self._bot_since is not None:
            assert sc.barge_in_after is not None
            if now - self._bot_since >= sc.barge_in_after:
                self._barge_tick = k
                self.barge_ins.append(now)
        out = [(who, sc.silence, True) for who in sc.speakers]
        if self._barge_tick is not None:
            i = k - self._barge_tick
            if i < len(sc.barge_in_clip):
                out[0] = (sc.speakers[0], sc.barge_in_clip[i], False)
            else:  # the clip is over: wait for the bot's next reply
                self._barge_tick = None
                self._bot_since = None
        self._note_speech(now, not out[0][2])
        return out

    def dtmf_due(self, elapsed: float) -> list[str]:
        tones = []
        while self._dtmf and self._dtmf[0][0] <= elapsed:
            tones.append(self._dtmf.pop(0)[1])
        return tones

    def bot_audio(self, now: float) -> None:
        if self._bot_since is None and self._barge_tick is None:
            self._bot_since = now

    def stop_audio(self, now: float) -> None:
        if self._barge_tick is None:
            self._bot_since = None

    def _note_speech(self, now: float, speaking: bool) -> None:
        if self.speech is None:
            return
        if speaking and not self._speaking:
            self.speech.append([now, now + 0.02])
        elif speaking:
            self.speech[-1][1] = now + 0.02
        self._speaking = speaking
