"""The caller's audio to the model keeps its order whichever way each append goes: written at
once from the call's receive task, queued in the outbox for the sender task while the model's
socket is full, or taken in part with the rest owed to the next write."""

from __future__ import annotations

import orjson
import pybase64
import pytest
import trio

from gateway.processors import load
from gateway.processors.realtime import upstream
from gateway.testing import speech
from tests.conftest import memory_call
from tests.test_realtime_hostile_model import ScriptedModel

KEY_ENV = "TEST_UPLINK_ORDER_KEY"


class CongestedModel(ScriptedModel):
    """A model session whose socket fills up now and then. `received` is what the model reads,
    in order. Every `every`-th direct write is taken in part (the rest owed, as the kernel
    leaves it) and the socket then stays full for `full_s`: writes wait, direct writes are
    declined. Each write through the sender takes 5 ms once there is room, so frames arrive
    while it works through the outbox. Unlike `ClientWebSocket`, it takes a direct write while
    another write waits: the bridge itself must not let an append overtake those queued."""

    def __init__(self, every: int, full_s: float) -> None:
        super().__init__([])  # it sends nothing
        self.every = every
        self.full_s = full_s
        self.received: list[str] = []
        self.direct = self.queued = self.flushes = 0
        self._owed: str | None = None
        self._full_until = 0.0

    def send_message_nowait(self, message: str) -> bool:
        if self._owed is not None or trio.current_time() < self._full_until:
            return False
        self.direct += 1
        if self.direct % self.every == 0:
            self._owed = message
            self._full_until = trio.current_time() + self.full_s
        else:
            self.received.append(message)
        return True

    def owes(self) -> bool:
        return self._owed is not None

    async def flush(self) -> None:
        await self._room()
        self.flushes += 1

    async def send_message(self, message: str) -> None:
        await self._room()
        self.received.append(message)
        self.queued += 1

    async def _room(self) -> None:
        await trio.sleep_until(max(self._full_until, trio.current_time()) + 0.005)
        if self._owed is not None:
            self.received.append(self._owed)
            self._owed = None


@pytest.mark.parametrize("full_s", [0.0, 0.1, 0.3])
async def test_the_callers_audio_reaches_the_model_whole_and_in_order(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, full_s: float
) -> None:
    """24 kHz, so the appends carry ACS's audio as it came: what the model reads, joined, is
    exactly what the caller sent, and nothing was dropped."""
    monkeypatch.setenv(KEY_ENV, "k")
    model = CongestedModel(every=7, full_s=full_s)

    async def congested(options: object, ssl_context: object = None) -> CongestedModel:
        return model

    monkeypatch.setattr(upstream, "open_upstream", congested)
    processor = load("realtime", {"endpoint": "ws://127.0.0.1:9/", "api_key_env": KEY_ENV})
    caller = speech(24000)[: 24000 * 2 * 3]  # 3 s, whole frames
    async with memory_call(processor, sample_rate=24000) as mc:
        await mc.peer.stream(caller)
    [outcome] = mc.outcome
    assert outcome.stats.upstream_audio_dropped == 0
    events = [orjson.loads(m) for m in model.received]
    appends = [e["audio"] for e in events if e["type"] == "input_audio_buffer.append"]
    assert b"".join(pybase64.b64decode(a) for a in appends) == caller
    assert model.direct > 0 and model.flushes > 0
    if full_s:  # appends that came while the socket was full went by the sender, after it
        assert model.queued > len(appends) // 10
