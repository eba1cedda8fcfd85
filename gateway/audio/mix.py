"""`Mixer`: the participants of an unmixed stream, summed into one stream, time-aligned.

Owns: placing each participant's 20 ms frames on a common timeline (slots of one frame, from
the packets' ISO-8601 `timestamp`s), summing what falls in the same slot (int16 -> int32 sum ->
clipped back to int16, so loud voices saturate rather than wrap), and releasing slots in order.
Never: sockets, tasks, or reading the clock (it is given `now`).

Release: a slot goes out once time has moved on since its first frame came (a later packet
arrived, or half a frame passed: every frame ACS sent for that instant had its chance, a
speaker not heard before included) and every active participant (heard within the last frame
plus `wait`) has a frame at or beyond it; so mixing costs at most about a frame of delay when
speakers arrive together. One whose frame is missing holds a slot at most `wait` after the
slot's first frame came, or came near the front of the mix (`waits_expired`), so a speaker who
trails for good delays the others by `wait`, no more; one silent for longer (who left, or whom
ACS stopped sending) holds nothing. `due_at()` says when to call `release()` if no frame comes.

A frame that arrives after its slot went out (a participant whose first packets trail the
others' same-instant packets, or who falls more than `wait` behind) is dropped and counted
(`late_frames`): mixing it later would put that speaker out of step for good. A packet without
a usable timestamp follows its participant's previous frame (a new participant's first one
goes into the next open slot); one stamped more than `MAX_AHEAD` slots ahead of the others is
held at most that far ahead.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Final

import attrs

from ..acs.packets import FRAME_MS

DEFAULT_WAIT_MS: Final = 60  # three frames: WebSocket jitter between speakers' packets
MAX_AHEAD: Final = 50  # slots (1 s): a stamp further ahead of the mix is a clock that disagrees


@attrs.define(slots=True)
class MixStats:
    frames_in: int = 0
    slots_out: int = 0
    waits_expired: int = 0  # slots released while an active speaker's frame was still missing
    late_frames: int = 0  # frames that came after their slot went out: dropped


class Mixer:
    """Time-aligned sum of several PCM16 mono streams of one sample rate."""

    def __init__(self, *, wait_ms: float = DEFAULT_WAIT_MS) -> None:
        import numpy  # the `realtime` extra

        self._np = numpy
        self.wait = wait_ms / 1000
        self._near = math.ceil(wait_ms / FRAME_MS) + 1  # slots: a frame this close is on time
        self.stats = MixStats()
        self._slots: dict[int, dict[str, bytes]] = {}
        self._first_arrival: dict[int, float] = {}  # slot -> when its first frame came
        self._last: dict[str, int] = {}  # participant -> its latest slot
        self._heard: dict[str, float] = {}  # participant -> when its latest frame came
        self._next: int | None = None  # the next slot to release
        self._base_ms: float | None = None  # the first timestamp: slot 0
        self._stamp: tuple[str, float | None] = ("", None)  # the last timestamp parsed

    @property
    def pending_frames(self) -> int:
        return sum(len(frames) for frames in self._slots.values())

    def push(self, participant: str, timestamp: str | None, pcm: bytes, now: float) -> list[bytes]:
        """Add one frame; the mixed frames now due, in order."""
        self.stats.frames_in += 1
        slot = self._slot(participant, timestamp)
        self._last[participant] = slot
        self._heard[participant] = now
        if self._next is not None and slot < self._next:
            self.stats.late_frames += 1
            return self.release(now)
        self._slots.setdefault(slot, {})[participant] = pcm
        if self._next is None:
            self._next = slot
        near = slot <= self._next + self._near
        opened = self._first_arrival.get(slot)
        if opened is None or (near and opened == math.inf):
            # a slot far ahead of the mix waits from when it comes near, not from now
            self._first_arrival[slot] = now if near else math.inf
        return self.release(now)

    def release(self, now: float) -> list[bytes]:
        """The mixed frames due at `now` (call it when time passes without a frame)."""
        out: list[bytes] = []
        slots = self._slots
        while slots:
            s = self._next
            assert s is not None
            if s not in slots:  # nobody spoke in this slot yet: skip it when nobody can any more
                if self._waiting_for(s, now):
                    first = self._first_arrival[min(slots)]  # the wait runs from the next frame
                    if first == math.inf or now < first + self.wait:
                        break  # (counted below, if the next slot is still short of them)
                self._next = min(slots)
                continue
            opened = self._first_arrival[s]
            if opened == math.inf:
                opened = self._first_arrival[s] = now
            if self._waiting_for(s, now):
                if now < opened + self.wait:
                    break
                self.stats.waits_expired += 1
            elif now <= opened:
                break  # more frames of this instant may be on their way
            frames = slots.pop(s)
            del self._first_arrival[s]
            self._next = s + 1
            self.stats.slots_out += 1
            out.append(self._sum(list(frames.values())))
        return out

    def due_at(self, now: float) -> float | None:
        """When `release()` next has something to give if no frame comes before (None:
        nothing is held)."""
        if not self._slots:
            return None
        s = min(self._slots)  # the next slot, or the first after an empty one
        opened = self._first_arrival[s]
        if opened == math.inf:
            return now  # release() starts its wait
        if self._waiting_for(self._next if self._next is not None else s, now):
            return opened + self.wait
        return max(now, opened + FRAME_MS / 1000 / 2)  # "time moved on": half a frame will do

    def flush(self) -> list[bytes]:
        """Everything still held, in order (the stream ended)."""
        out = []
        for s in sorted(self._slots):
            out.append(self._sum(list(self._slots[s].values())))
        self.stats.slots_out += len(out)
        self._slots.clear()
        self._first_arrival.clear()
        return out

    def _waiting_for(self, slot: int, now: float) -> bool:
        """True if an active speaker (one whose packets came no further apart than a frame
        plus `wait`) has not yet sent a frame for `slot`."""
        active = self.wait + FRAME_MS / 1000
        heard = self._heard
        return any(last < slot and now - heard[p] < active for p, last in self._last.items())

    def _slot(self, participant: str, timestamp: str | None) -> int:
        ms = self._ms(timestamp)
        last = self._last.get(participant)
        if ms is not None:
            if self._base_ms is None:
                self._base_ms = ms
            slot = round((ms - self._base_ms) / FRAME_MS)
            if last is not None and slot <= last:  # a stale or repeated stamp: follow on
                slot = last + 1
        elif last is not None:
            slot = last + 1
        else:
            slot = self._next if self._next is not None else 0
        if self._next is not None and slot > self._next + MAX_AHEAD and self._slots:
            slot = max(self._next + MAX_AHEAD, last + 1 if last is not None else 0)  # bounded
        return slot

    def _ms(self, timestamp: str | None) -> float | None:
        if timestamp is None:
            return None
        if timestamp == self._stamp[0]:
            return self._stamp[1]
        try:
            ms: float | None = datetime.fromisoformat(timestamp).timestamp() * 1000
        except ValueError:
            ms = None
        self._stamp = (timestamp, ms)
        return ms

    def _sum(self, frames: list[bytes]) -> bytes:
        if len(frames) == 1:
            return frames[0]
        np = self._np
        int16 = np.int16
        longest = max(frames, key=len)
        acc = np.frombuffer(longest, dtype=int16).astype(np.int32)
        n = len(acc)
        skipped = False
        for f in frames:
            if f is longest and not skipped:
                skipped = True
                continue
            samples = np.frombuffer(f, dtype=int16, count=len(f) // 2)
            if len(samples) == n:
                np.add(acc, samples, out=acc)
            else:
                acc[: len(samples)] += samples
        # ufuncs, not np.clip: its Python wrapper costs more than the sum itself
        np.minimum(acc, 32767, out=acc)
        np.maximum(acc, -32768, out=acc)
        return bytes(acc.astype(int16).tobytes())
