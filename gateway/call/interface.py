"""`Call`: everything a processor is given about one call, and nothing about WebSockets."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeAlias

import attrs
import trio

from ..acs.packets import AudioData, AudioMetadata, InboundPacket, TranscriptionMetadata
from .observer import NO_OBSERVER, CallObserver
from .player import Player


@attrs.define(slots=True)
class CallStats:
    """Per-call counters. Inbound counts are frames (packets), outbound are in `player.playout`."""

    packets_in: int = 0
    audio_frames_in: int = 0
    # the processor fell behind: inbound audio queue full, or its audio handler refused them
    audio_frames_dropped: int = 0
    packets_unread: int = 0  # still in the inbound queue when the call ended
    protocol_errors: Counter[str] = attrs.field(factory=Counter)  # by ProtocolError.reason
    messages_out: int = 0
    stop_audio_sent: int = 0
    frames_flood_dropped: int = 0  # inbound messages beyond max_frames_per_second, unread
    # A processor's upstream (e.g. a realtime model) failed, by kind; exported as a metric.
    upstream_errors: Counter[str] = attrs.field(factory=Counter)
    # realtime bridge (gateway.processors.realtime)
    upstream_reconnects: int = 0
    upstream_audio_dropped: int = 0  # caller frames not sent upstream (no connection then)
    upstream_audio_discarded: int = 0  # bytes of model audio dropped after a barge-in
    barge_ins: int = 0
    tool_calls: Counter[str] = attrs.field(factory=Counter)  # the model's, by outcome (ok, ...)
    false_interruptions: int = 0  # paused for a suspected barge-in, then resumed
    mix_waits_expired: int = 0  # unmixed `mix`: frames mixed without a late speaker's audio
    mix_late_frames: int = 0  # unmixed `mix`: frames too late to align: dropped
    session_rollovers: int = 0  # the next model session took over (planned, or at a failure)
    history_turns_dropped: int = 0  # turns forgotten to keep the remembered conversation bounded


class CallControlHandle(Protocol):
    """What a processor may do to the call itself, when this gateway answered it
    (`gateway.control.calls.CallControl`). `caller`/`callee` are raw ids (`4:+1...`,
    `8:acs:...`); `custom_context` has the IncomingCall's `sipHeaders` and `voipHeaders`;
    `media_streaming` is what ACS last said of the call's media stream (`started`, `stopped`,
    `failed`; None before it said anything)."""

    @property
    def caller(self) -> str | None: ...
    @property
    def callee(self) -> str | None: ...
    @property
    def custom_context(self) -> Mapping[str, Mapping[str, str]]: ...
    @property
    def media_streaming(self) -> str | None: ...
    async def hang_up(self) -> None: ...
    async def transfer(self, target: str) -> None: ...
    async def start_media_streaming(self) -> None: ...
    async def stop_media_streaming(self) -> None: ...


@attrs.define(slots=True, eq=False)
class Call:
    """One ACS media stream, as a processor sees it.

    - `connection_id` / `correlation_id`: the `x-ms-call-connection-id` and
      `x-ms-call-correlation-id` handshake headers (None when absent).
    - `path`: the request target ACS connected to (path and query string, as sent).
    - `audio`: the stream's `AudioMetadata` (None on a transcription-only stream).
    - `packets`: inbound packets after the first metadata, in arrival order; iteration ends when
      ACS hangs up. Audio frames are dropped (and counted in `stats`) if the processor falls
      more than `inbound_queue_ms` behind; other packets are never dropped. A processor with
      an inline audio handler (`AudioHandler`) hears the audio frames there instead: they
      are not in `packets`.
    - `player`: the call's `Player` (None on a transcription-only stream).
    - `log`: a logger that tags every line with the call's ids.
    - `observer`: where the call's record is kept; a processor tells it of turns, barge-ins,
      transcripts and tool calls (`CallObserver.note`). A no-op unless records are on.
    - `control`: hang up, transfer, start/stop streaming, and the IncomingCall's caller, callee
      and custom context (None unless this gateway answered the call).
    """

    connection_id: str | None
    correlation_id: str | None
    path: str
    headers: Mapping[str, str]
    audio: AudioMetadata | None
    transcription: TranscriptionMetadata | None
    packets: trio.abc.ReceiveChannel[InboundPacket]
    player: Player | None
    log: logging.LoggerAdapter[logging.Logger]
    stats: CallStats
    observer: CallObserver = NO_OBSERVER
    control: CallControlHandle | None = None

    @property
    def sample_rate(self) -> int | None:
        return None if self.audio is None else self.audio.sample_rate


Processor: TypeAlias = Callable[[Call], Awaitable[None]]
"""A processor: an async function that runs one call and returns when it is done with it."""

AudioHandler: TypeAlias = Callable[[AudioData], bool]
"""A processor's inline audio handler: hears each of the caller's audio frames in the call's
receive task, as the read returns, instead of the processor reading it from `Call.packets`
(one task switch and one channel hop fewer per frame). It must not block, await or take long:
while it runs the call reads nothing. True: the frame was taken. False: the processor cannot
take it now (e.g. `Player.play_nowait` found the queue full); the frame is dropped and counted
in `CallStats.audio_frames_dropped`, as a full inbound queue would. An exception it raises is
the processor's failure: the call ends with 1011.

A processor offers one by having an `audio_handler(call)` method that returns the handler for
that call, or None to read audio from `packets` as usual (see `inline_audio_handler`)."""


def inline_audio_handler(processor: Processor, call: Call) -> AudioHandler | None:
    """The processor's inline audio handler for `call`, if it offers one."""
    make: Callable[[Call], AudioHandler | None] | None = getattr(processor, "audio_handler", None)
    return None if make is None else make(call)
