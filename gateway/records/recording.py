"""`AudioRecording`: one call's audio on the call's own clock, flushed to a WAV file as it goes.

Owns: where each sample goes in time, and how much of the call may wait in memory for the disk.
Channels: the caller (one per participant heard, in the order first heard, when `participants`
is more than 1: ACS's unmixed audio), then the bot last. A caller frame follows the previous
one of its channel, unless it arrives more than `CALLER_GAP` later than that (the caller's side
sent nothing for a while: silence fills the gap), so the caller's audio is kept byte for byte.
A bot frame goes where ACS plays it (`bot_audio`'s playout time), and a cut (stop-audio)
erases what ACS had been sent but had not played: the bot channel holds what the caller heard.

Memory: frames wait as they came (runs of back-to-back frames: one append per frame on the hot
path; a bot frame that starts a little after the previous one ended, as echo's frames do, joins
its run after that much silence, so a second is laid out in a piece or two, not fifty) until
they are `SETTLE` seconds old (no caller frame or cut can still change them); every
`FLUSH_INTERVAL` they are handed, as they are, to the disk thread, which lays them out on the
clock, interleaved, and writes them: laying out a second (a burst of about 130 KB of fresh
memory a call at 16 kHz stereo) is work the calls' own frames need not wait behind.
At most `max_pending` bytes may wait for the disk; a chunk beyond that is dropped and counted
(the file keeps silence there). A failing disk (`failed`) ends the
recording; the call goes on. Never: touches the disk itself or waits for it.
"""

from __future__ import annotations

import logging
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Any, Final

from .disk import DISK, DiskThread
from .wavfile import WavFile

log = logging.getLogger("gateway.records")

FLUSH_INTERVAL: Final = 1.0  # seconds between chunks handed to the disk
SETTLE: Final = 0.25  # seconds; a caller frame lands at most CALLER_GAP back; cuts erase ahead
CALLER_GAP: Final = 0.04  # seconds; a caller frame later than this starts after silence
BOT: Final = -1  # the bot's channel is the last

# [first sample, end sample, frames]: audio placed back to back from `first` (mutable: a frame
# that follows is appended in place, the hot path's only work).
Run = list[Any]


class AudioRecording:
    """The event-loop side of one call's recording (the file itself is the disk thread's)."""

    __slots__ = (  # compact: touched by every frame of every call
        "path",
        "rate",
        "start",
        "channels",
        "max_pending",
        "disk",
        "speakers",
        "participants",
        "base",
        "runs",
        "gap",
        "next_flush",
        "submitted",
        "written",
        "dropped_bytes",
        "late_bytes",
        "failed",
        "closed",
        "_file",
    )

    def __init__(
        self,
        path: str,
        sample_rate: int,
        start: float,
        *,
        participants: int = 1,
        max_pending: int,
        disk: DiskThread = DISK,
    ) -> None:
        self.path = path
        self.rate = sample_rate
        self.start = start
        self.channels = participants + 1
        self.max_pending = max_pending
        self.disk = disk
        self.speakers: dict[str | None, int] = {}  # participant -> channel (unmixed)
        self.participants = participants
        self.base = 0  # sample index of the first sample not yet flushed
        # Per channel, the runs of back-to-back frames not yet flushed, in the order they came.
        self.runs: list[list[Run]] = [[] for _ in range(self.channels)]
        self.gap = int(CALLER_GAP * sample_rate)
        self.next_flush = start + FLUSH_INTERVAL
        self.submitted = 0  # bytes handed to the disk thread (event loop)
        self.written = 0  # bytes the disk thread is done with (disk thread)
        self.dropped_bytes = 0  # interleaved bytes dropped: the disk fell behind
        self.late_bytes = 0  # samples that came after their place was flushed
        self.failed: str | None = None  # why the disk thread gave up (disk thread)
        self.closed = False
        self._file: WavFile | None = None
        disk.submit(self._open)

    # -- event loop --

    def caller(self, pcm: bytes, participant: str | None, now: float) -> None:
        channel = 0
        if self.participants > 1:
            found = self.speakers.get(participant)
            if found is None:
                if len(self.speakers) >= self.participants:
                    return  # more speakers than channels: not recorded
                found = self.speakers[participant] = len(self.speakers)
            channel = found
        at = int((now - self.start) * self.rate + 0.5)
        runs = self.runs[channel]
        run = runs[-1] if runs else None
        if run is not None and at - run[1] <= self.gap and run[1] >= self.base:
            run[2].append(pcm)  # the common case: right after the previous frame
            run[1] += len(pcm) >> 1
        else:
            if at < self.base:
                at = self.base
            runs.append([at, at + (len(pcm) >> 1), [pcm]])
        if now >= self.next_flush:
            self.flush(now)

    def bot(self, frames: list[bytes], start: float) -> None:
        at = int((start - self.start) * self.rate + 0.5)
        runs = self.runs[-1]
        run = runs[-1] if runs else None
        for pcm in frames:
            n = len(pcm) >> 1
            if run is not None and 0 <= at - run[1] <= self.gap:
                if at > run[1]:  # a short underrun: its silence goes into the run
                    run[2].append(bytes(2 * (at - run[1])))
                run[2].append(pcm)
                run[1] = at + n
            else:
                run = [at, at + n, [pcm]]
                runs.append(run)
            at += n
        if start >= self.next_flush + FLUSH_INTERVAL:  # a caller who sends nothing (rare)
            self.flush(start - FLUSH_INTERVAL)  # well behind the lead window: no cut reaches it

    def cut(self, now: float) -> None:
        """Stop-audio at `now`: the bot channel ends there."""
        at = int((now - self.start) * self.rate + 0.5)
        runs = self.runs[-1]
        while runs and runs[-1][0] >= at:
            runs.pop()
        if runs and runs[-1][1] > at:
            first, _, parts = runs[-1]
            runs[-1] = [first, at, [b"".join(parts)[: 2 * (at - first)]]]

    def flush(self, now: float, final: bool = False) -> None:
        """Hand the settled samples (all of them when `final`) to the disk thread."""
        self.next_flush = now + FLUSH_INTERVAL
        if self.closed:
            return
        if self.failed is not None:
            self._give_up()
            return
        if final:
            upto = max([self.base] + [runs[-1][1] for runs in self.runs if runs])
        else:
            upto = int((now - SETTLE - self.start) * self.rate)
        n = upto - self.base
        if n <= 0:
            return
        channels = [self._take(c, upto) for c in range(self.channels)]
        first, self.base = self.base, upto
        size = 2 * n * self.channels
        if self.submitted - self.written + size > self.max_pending:
            if not self.dropped_bytes:
                log.warning("recording %s: the disk is behind; dropping audio", self.path)
            self.dropped_bytes += size
            return
        self.submitted += size
        self.disk.submit(lambda: self._write(first, n, channels, size))

    def _take(self, channel: int, upto: int) -> list[Piece]:
        """The channel's audio from `base` to `upto`, as (sample offset from `base`, frames)
        pieces (silence between them); a run that reaches beyond `upto` keeps its rest. The
        pieces are the disk thread's from here on: nothing on the event loop refers to them."""
        base = self.base
        pieces = []
        rest: list[Run] = []
        for run in self.runs[channel]:
            first, last, parts = run
            if first >= upto:
                rest.append(run)
                continue
            if first < base:  # its place was flushed already
                self.late_bytes += min(2 * (last - first), 2 * (base - first))
                parts = split(parts, 2 * (base - first))[1]
                first = base
            if last > upto:
                parts, after = split(parts, 2 * (upto - first))
                rest.append([upto, last, after])
            if parts:
                pieces.append((first - base, parts))
        self.runs[channel] = rest
        return pieces

    def close(self, now: float) -> None:
        """The call is over: flush everything and close the file."""
        if self.closed:
            return
        self.flush(now, final=True)
        self.closed = True
        self.disk.submit(self._close)

    def _give_up(self) -> None:
        log.warning("recording %s stopped: %s (the call goes on)", self.path, self.failed)
        self.closed = True
        self.runs = [[] for _ in range(self.channels)]
        self.disk.submit(self._close)

    # -- disk thread --

    def _open(self) -> None:
        try:
            self._file = WavFile(self.path, self.channels, self.rate)
        except OSError as exc:
            self.failed = f"cannot create the file: {exc}"
            return
        self.disk.open_paths.add(self.path)

    def _write(self, frame_index: int, n: int, channels: list[list[Piece]], size: int) -> None:
        try:
            if self._file is not None and self.failed is None:
                self._file.write(frame_index, interleave(n, channels))
        except OSError as exc:
            self.failed = f"write failed: {exc}"
        finally:
            self.written += size

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self.failed = self.failed or f"close failed: {exc}"
            self.disk.open_paths.discard(self.path)
            self._file = None


Piece = tuple[int, list[bytes]]  # (sample offset, back-to-back frames) of one channel
Pieces = Sequence[Piece]


def split(parts: list[bytes], at: int) -> tuple[list[bytes], list[bytes]]:
    """`parts` (back-to-back frames) cut `at` bytes in: one frame at most is sliced."""
    head: list[bytes] = []
    for i, part in enumerate(parts):
        if at <= 0:
            return head, parts[i:]
        if len(part) <= at:
            head.append(part)
            at -= len(part)
        else:
            head.append(part[:at])
            return head, [part[at:], *parts[i + 1 :]]
    return head, []


def _interleave_array(n: int, channels: Sequence[Pieces]) -> bytes:
    count = len(channels)
    out = array("h", bytes(2 * n * count))
    for c, pieces in enumerate(channels):
        pcm = bytearray(2 * n)
        for at, parts in pieces:
            data = b"".join(parts)
            pcm[2 * at : 2 * at + len(data)] = data
        out[c::count] = array("h", pcm)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def _interleave_numpy(n: int, channels: Sequence[Pieces]) -> memoryview:
    frames = numpy.zeros((n, len(channels)), dtype="<i2")
    for c, pieces in enumerate(channels):
        for at, parts in pieces:
            samples = numpy.frombuffer(parts[0] if len(parts) == 1 else b"".join(parts), "<i2")
            frames[at : at + len(samples), c] = samples
    return frames.data  # the disk thread writes it as it is: no copy to bytes


interleave: Callable[[int, Sequence[Pieces]], bytes | memoryview]
try:  # five times faster than the array module at this (the `realtime` extra brings it)
    import numpy
except ImportError:  # pragma: no cover - exercised where numpy is absent
    interleave = _interleave_array
else:
    interleave = _interleave_numpy
