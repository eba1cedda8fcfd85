"""The model's audio on its way to the player: played by the reader itself when nothing is
ahead of it and the player has room, handed to the feeder otherwise, always in order."""

from __future__ import annotations

import pybase64
import pytest
import trio
import trio.testing

from gateway.call.interface import CallStats
from gateway.processors.realtime import downlink
from gateway.processors.realtime.downlink import Downlink

DELTA = 4800  # bytes: 100 ms of 24 kHz PCM16


class Playout:
    def __init__(self, space_bytes: int) -> None:
        self.space_bytes = space_bytes


class RecordingPlayer:
    """Records what is played; its room is set by the test."""

    def __init__(self, space_bytes: int) -> None:
        self.playout = Playout(space_bytes)
        self.played: list[tuple[object, bytes | None]] = []

    async def play(self, pcm: bytes, utterance: object = None) -> None:
        self.played.append((utterance, pcm))

    def flush(self) -> None:
        self.played.append(("flush", None))


def delta(fill: int) -> str:
    return pybase64.b64encode_as_string(bytes([fill]) * DELTA)


def make(
    space_bytes: int, reported: list[str] | None = None
) -> tuple[Downlink, RecordingPlayer, CallStats]:
    """A downlink into a recording player; what it reports as not audio goes to `reported`."""
    player, stats = RecordingPlayer(space_bytes), CallStats()
    report = (reported if reported is not None else []).append
    return Downlink(player, 24000, stats, report), player, stats  # type: ignore[arg-type]


async def test_with_room_the_reader_plays_a_delta_itself_before_queue_returns():
    link, player, _ = make(space_bytes=10 * DELTA)
    await link.queue("item", delta(1))  # no feeder task runs in this test
    await link.queue("item", None)
    assert player.played == [("item", bytes([1]) * DELTA), ("flush", None)]


async def test_without_room_a_delta_waits_for_the_feeder_and_later_ones_stay_behind_it():
    link, player, _ = make(space_bytes=DELTA)  # no room for a delta and what may be held back
    await link.queue("a", delta(1))
    assert player.played == []  # the feeder's to play
    player.playout.space_bytes = 10 * DELTA
    await link.queue("b", delta(2))  # room now, but "a" is ahead of it
    await link.queue("b", None)
    assert player.played == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.feed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [u for u, _ in player.played] == ["a", "b", "flush"]
    assert player.played[0][1] == bytes([1]) * DELTA and player.played[1][1] == bytes([2]) * DELTA
    await link.queue("c", delta(3))  # the queue is empty again: the reader plays
    assert player.played[-1] == ("c", bytes([3]) * DELTA)


async def test_a_barge_in_discards_what_the_feeder_holds_and_the_next_reply_plays_at_once():
    link, player, stats = make(space_bytes=0)
    await link.queue("old", delta(1))
    link.discard()  # the caller barged in
    player.playout.space_bytes = 10 * DELTA
    await link.queue("new", delta(2))  # queued behind the stale one, which goes first
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.feed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert player.played == [("new", bytes([2]) * DELTA)]
    assert stats.upstream_audio_discarded == DELTA


async def test_a_reader_cancelled_while_waiting_at_the_cap_leaves_the_queue_as_it_was(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
):
    """A rollover cancels the reader; the delta it was queueing is not counted as waiting, so
    once the feeder has played what was queued, the reader plays by itself again."""
    monkeypatch.setattr(downlink, "PENDING_AUDIO_BYTES", DELTA)
    link, player, _ = make(space_bytes=0)
    await link.queue("a", delta(1))  # at the cap now
    with trio.move_on_after(1) as waiting:
        await link.queue("a", delta(2))
    assert waiting.cancelled_caught
    player.playout.space_bytes = 10 * DELTA
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.feed)
        await trio.testing.wait_all_tasks_blocked()
        await link.queue("b", delta(3))
        assert player.played == [("a", bytes([1]) * DELTA), ("b", bytes([3]) * DELTA)]
        nursery.cancel_scope.cancel()


async def test_a_delta_that_ends_on_half_a_sample_completes_it_with_the_next():
    link, player, stats = make(space_bytes=10 * DELTA)
    await link.queue("item", pybase64.b64encode_as_string(b"\x01\x02\x03"))
    await link.queue("item", pybase64.b64encode_as_string(b"\x04\x05\x06"))
    await link.queue("item", None)
    assert player.played == [("item", b"\x01\x02"), ("item", b"\x03\x04\x05\x06"), ("flush", None)]
    assert stats.upstream_audio_discarded == 0


async def test_a_stray_byte_at_the_end_of_an_item_is_dropped_and_counted():
    link, player, stats = make(space_bytes=10 * DELTA)
    await link.queue("a", pybase64.b64encode_as_string(b"\x01\x02\x03"))
    await link.queue("b", pybase64.b64encode_as_string(b"\x04\x05"))  # another item: not glued
    await link.queue("b", None)
    assert player.played == [("a", b"\x01\x02"), ("b", b"\x04\x05"), ("flush", None)]
    assert stats.upstream_audio_discarded == 1


async def test_audio_that_is_not_base64_is_reported_and_the_next_delta_plays():
    reported: list[str] = []
    link, player, _ = make(space_bytes=10 * DELTA, reported=reported)
    await link.queue("item", "AAE")  # three characters: not base64, even read leniently
    await link.queue("item", pybase64.b64encode_as_string(b"\x01\x02"))
    assert player.played == [("item", b"\x01\x02")]
    assert len(reported) == 1 and "not base64" in reported[0]
