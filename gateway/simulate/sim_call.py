"""One simulated call of the load engine (`SimCall`): the frames it sends each tick, what it
reads from the gateway, and its `CallResult`.

Owns: the call's state (where its script is, its frame tags, the frames awaiting their echo),
sending a tick's frames on its `link.Link`, reading what the gateway sends (echo matching and
round trips, stop-audio, pings, the close frame), its recording, and its `CallResult`. Never:
when it ticks, connecting or hanging up (`runner`), what it says (`script`), formatting
(`report`).

Why it is built this way (so that the simulator is never the bottleneck of a load test):
- Sends are non-blocking writes straight from the ticker (TLS: encrypted through a memory BIO
  first). What the kernel does not take waits in the call's backlog for the next tick; a
  gateway that stops reading for `BACKLOG_LIMIT` bytes fails the call (`send_backlog`).
- One reader task per call: one park and one `recv` per wake-up, every frame it completed
  handled at once.

How a call ends is decided once (`CallResult.ended`), by the reader, which sees the server's
close frame even when the ticker's write already failed because the server had hung up: a
close frame before the scenario's end is `closed_early` (or `bot_hung_up` with
`expect_hangup`), an end without one `connection_lost`.
"""

from __future__ import annotations

import os
import random
import uuid
from array import array
from collections.abc import Callable
from typing import Final

import trio

from ..acs import client
from ..acs.packets import BYTES_PER_SAMPLE, FRAME_MS
from ..wire import framing
from .link import Link
from .options import Options
from .recording import Entry, Recording
from .results import CallResult, Histogram, Timeline
from .script import CallScript, Scenario
from .tagging import AudioFrames, b64_pcm_bytes, read_tag

RING: Final = 4096  # frames whose send time is kept for round trips (82 s)
BACKLOG_LIMIT: Final = 1 << 20  # bytes the gateway may leave unread before the call fails


class SimCall:
    """One simulated call in the load engine."""

    def __init__(
        self,
        index: int,
        scenario: Scenario,
        options: Options,
        rng: random.Random,
        audio: AudioFrames,
    ) -> None:
        self.index = index
        self.options = options
        self.result = CallResult(index, str(uuid.uuid4()))
        keep = index < options.timeline_calls
        if keep:
            self.result.timeline = Timeline()
        self.script = CallScript(scenario, rng, keep_timeline=keep)
        self.mask = os.urandom(4)
        self.frames = client.ServerFrames()
        self.link: Link | None = None
        self.started = 0.0  # trio time of the call's start (AudioMetadata sent)
        self.k = 0  # next tick of the script
        self.seq = 0  # next audio frame's tag
        self.first_sent: float | None = None
        # When each recent frame left, by tag (-1: none, or already matched). Flat arrays, not
        # tuples: hundreds of calls' rings would otherwise make every full garbage collection
        # walk a million objects while the ticker waits.
        self.sent_seq = array("l", [-1]) * RING
        self.sent_at = array("d", [0.0]) * RING
        self.sent_pcm: list[bytes] = [b""] * RING  # references to the clips' frames
        self.audio = audio
        self.tracks = len(scenario.speakers)
        self.max_echoed = -1  # the highest frame number echoed so far
        self.script_over = False  # the script ran to its end (no hang-up)
        self.answered_barge_ins = 0
        self.scope = trio.CancelScope()
        self.hang_up = False
        self.bytes_per_second = scenario.sample_rate * BYTES_PER_SAMPLE
        path = options.record_path(index)
        self.recording = (
            Recording(scenario.sample_rate, self.result.connection_id) if path else None
        )

    # -- the ticker's side --

    def tick(self, now: float, due: float, lateness: Histogram, audio: AudioFrames) -> bool:
        """Send this tick's frames; False when the call's script is over (or it hung up)."""
        result = self.result
        k = self.k
        self.k += 1
        if k == self.script.hangup_tick:
            self.hang_up = True
            result.hung_up = True
            self.scope.cancel()
            return False
        if k >= self.script.ticks:
            self.script_over = True
            self.scope.cancel()
            return False
        frames = []
        recording = self.recording
        for participant, pcm, silent in self.script.tick(k, now):
            seq = self.seq
            self.seq += 1
            self.sent_seq[seq % RING] = seq
            self.sent_at[seq % RING] = now
            self.sent_pcm[seq % RING] = pcm
            frames.append(audio.frame(pcm, seq, participant, silent))
            if recording is not None:
                text = audio.text(pcm, seq, participant, silent)
                recording.entries.append(Entry(now - self.started, "sent", text))
            lateness.add(now - due)
        result.frames_sent += len(frames)
        for tone in self.script.dtmf_due(k * FRAME_MS / 1000):
            frames.append(client.masked_text(client.dtmf_text(tone), self.mask))
            result.dtmf_sent += 1
            if recording is not None:
                recording.entries.append(Entry(now - self.started, "sent", client.dtmf_text(tone)))
            if result.timeline is not None:
                result.timeline.dtmf.append((now - self.started, tone))
        if self.first_sent is None:
            self.first_sent = now
        assert self.link is not None
        try:
            self.link.send_nowait(b"".join(frames))
        except OSError:
            # The server is gone; the reader decides how (a close frame may be waiting).
            return False
        if len(self.link.backlog) > BACKLOG_LIMIT:
            result.ended("send_backlog")
            self.scope.cancel()
            return False
        return True

    # -- the reader's side --

    async def read(self, link: Link, data: bytes, until: Callable[[], bool] | None = None) -> None:
        """Handle what the gateway sends until the call ends (`result.end` is set), `until()`
        holds, or the caller is cancelled."""
        result = self.result
        while True:
            now = trio.current_time()
            try:
                events = self.frames.receive(data) if data else []
            except framing.FramingError:
                result.ended("protocol_error")
                return
            for event in events:
                if type(event) is bytes:
                    self.on_message(event, now)
                elif isinstance(event, framing.Ping):
                    link.send_nowait(client.pong(bytes(event), self.mask))
                elif isinstance(event, framing.Close):
                    self._closed(event, now)
                    try:
                        link.send_nowait(client.masked_close(1000, self.mask))
                    except OSError:
                        pass
                    return
            if until is not None and until():
                return
            try:
                data = await link.recv()
            except OSError:
                data = b""
            if not data:
                result.ended("connection_lost")
                return

    def _closed(self, close: framing.Close, now: float) -> None:
        """The server's close frame: the reply to ours, the bot's hang-up, or an early end."""
        result = self.result
        result.close_code, result.close_reason = close.code, close.reason
        if self.script_over or self.hang_up:
            result.ended("completed")
            return
        result.closed_at = round(now - self.started, 3)
        if close.code == 1000 and self.options.expect_hangup:
            result.ended("bot_hung_up")
        else:
            result.ended("closed_early")

    def on_message(self, message: bytes, now: float) -> None:
        result = self.result
        if self.recording is not None:
            self.recording.entries.append(Entry(now - self.started, "received", message.decode()))
        kind, data, form = client.classify_form(message)
        forms = result.forms
        forms[form] = forms.get(form, 0) + 1
        timeline = result.timeline
        if kind == client.AUDIO:
            result.frames_received += 1
            seconds = b64_pcm_bytes(data) / self.bytes_per_second
            result.audio_ms_received += seconds * 1000
            if result.first_audio_ms is None and self.first_sent is not None:
                result.first_audio_ms = round((now - self.first_sent) * 1000, 2)
            if not self._echo(data, now):
                result.unmatched += 1
                self.script.bot_audio(now, seconds)
            if timeline is not None:
                timeline.add_bot_audio(now - self.started, seconds)
        elif kind == client.STOP:
            result.stop_audio += 1
            self.script.stop_audio(now)
            barge_ins = self.script.barge_ins
            if self.answered_barge_ins < len(barge_ins):
                latency = now - barge_ins[self.answered_barge_ins]
                result.stop_latencies_ms.append(round(latency * 1000, 2))
                self.answered_barge_ins = len(barge_ins)
            if timeline is not None:
                timeline.stop_audio(now - self.started)
        else:
            result.other_received += 1

    def _echo(self, data: str, now: float) -> bool:
        """Match audio to the frame it echoes (False: it echoes no frame awaiting its echo)."""
        seq = read_tag(data)
        if seq is None:
            return False
        slot = seq % RING
        full = self.sent_seq[slot]
        if full < 0 or full & 0xFFFF != seq:
            return False
        self.sent_seq[slot] = -1  # an echo is matched once
        result = self.result
        if not self.audio.is_echo(data, self.sent_pcm[slot], full):
            result.mismatched += 1
            return True
        result.echoed += 1
        if full < self.max_echoed:
            result.reordered += 1
        else:
            self.max_echoed = full
        rtt = now - self.sent_at[slot]
        result.rtt.add(rtt)
        if result.timeline is not None:
            result.timeline.rtt.append((now - self.started, rtt * 1000))
        return True

    def drained(self) -> bool:
        """Every frame of the echoed track has come back (or none ever does)."""
        return self.max_echoed < 0 or self.max_echoed + self.tracks >= self.seq

    def finish(self, now: float) -> None:
        result = self.result
        # The frames that should have come back from an echo: all of the echoed track's when
        # the call ran to its end, up to the last one echoed when the server ended it.
        last = self.seq - 1 if result.end == "completed" or self.max_echoed < 0 else self.max_echoed
        result.echo_expected = (last // self.tracks + 1) if last >= 0 else 0
        if self.script.no_reply and not self.script.barge_ins:
            result.error("no_reply_to_barge_in")
        if self.options.expect_hangup and result.end == "completed":
            result.error("no_hangup")
        result.barge_ins = len(self.script.barge_ins)
        if result.timeline is not None:
            tl = result.timeline
            tl.speech = [[a - self.started, b - self.started] for a, b in self.script.speech or []]
            tl.barge_ins = [t - self.started for t in self.script.barge_ins]
            tl.end = now - self.started
        path = self.options.record_path(self.index)
        if self.recording is not None and path is not None:
            if result.close_code is not None:
                self.recording.entries.append(
                    Entry(now - self.started, "closed", code=result.close_code)
                )
            self.recording.write(path)
