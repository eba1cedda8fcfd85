"""The bridge against a model that sends whatever it likes: known events with odd fields, in any
order, audio of any size (half samples included), unknown items, broken JSON. Whatever it sends,
the call is never ended by a processor error, and it ends as the caller ends it."""

from __future__ import annotations

import logging

import orjson
import pybase64
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.call.outcome import EndReason
from gateway.processors import load
from gateway.processors.realtime import upstream
from gateway.testing import speech
from tests.conftest import memory_call

KEY_ENV = "TEST_HOSTILE_MODEL_KEY"

ids = st.sampled_from(["r1", "r2", "i1", "i2", "", "x" * 300])
small = st.integers(-(2**40), 2**40)
maybe_id = st.one_of(st.none(), ids, small, st.lists(small, max_size=2))
audio = st.one_of(
    st.binary(max_size=9000).map(pybase64.b64encode_as_string),  # odd sizes included
    st.text(max_size=40),  # not base64
    small,
)


def event(kind: str, **fields: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    return st.fixed_dictionaries({"type": st.just(kind)}, optional=fields).map(orjson.dumps)


EVENTS = st.one_of(
    event("session.created"),
    event("session.updated"),
    event("response.created", response=st.fixed_dictionaries({}, optional={"id": maybe_id})),
    event(
        "response.output_audio.delta",
        response_id=maybe_id,
        item_id=maybe_id,
        content_index=st.one_of(st.integers(-2, 3), st.text(max_size=3)),
        delta=audio,
    ),
    event("response.audio.delta", item_id=ids, delta=audio),
    event("response.output_audio.done", item_id=maybe_id),
    event(
        "response.done",
        response=st.fixed_dictionaries(
            {}, optional={"id": maybe_id, "status": st.sampled_from(["completed", "cancelled"])}
        ),
    ),
    event("input_audio_buffer.speech_started", item_id=maybe_id, audio_start_ms=small),
    event("input_audio_buffer.speech_stopped", item_id=maybe_id),
    event(
        "conversation.item.input_audio_transcription.completed",
        item_id=maybe_id,
        transcript=st.one_of(st.text(max_size=20), small),
    ),
    event(
        "response.function_call_arguments.done",
        call_id=maybe_id,
        name=st.one_of(st.text(max_size=10), small),
        arguments=st.one_of(st.text(max_size=20), st.just("{}")),
        response_id=maybe_id,
    ),
    event(
        "error",
        error=st.fixed_dictionaries(
            {}, optional={"type": st.sampled_from(["invalid_request_error", "x"]), "code": ids}
        ),
    ),
    event("rate_limits.updated"),
    st.binary(max_size=30),  # not JSON, or not an object
    st.just(b'{"type":"response.output_audio.delta","item_id":"i1","delta":"AAE'),  # cut short
)


class ScriptedModel:
    """A model session that sends `messages`, then nothing; takes whatever it is sent."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages

    async def send_message(self, message: str) -> None:
        await trio.lowlevel.checkpoint()

    def send_message_nowait(self, message: str) -> bool:
        return True

    def owes(self) -> bool:
        return False

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def get_message(self) -> bytes:
        if not self.messages:
            await trio.sleep_forever()
        await trio.sleep(0.005)  # a few ms apart, so the caller's audio interleaves with them
        return self.messages.pop(0)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    async def abort(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("rate", [16000, 24000])
@settings(
    max_examples=40,
    derandomize=True,  # the same inputs every run: the suite stays deterministic
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=st.lists(EVENTS, max_size=40))
async def test_whatever_the_model_sends_the_call_ends_as_the_caller_ends_it(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    rate: int,
    script: list[bytes],
) -> None:
    monkeypatch.setenv(KEY_ENV, "k")
    sessions = [list(script)]  # the first session sends the script; any later one, nothing

    async def scripted(options: object, ssl_context: object = None) -> ScriptedModel:
        return ScriptedModel(sessions.pop(0) if sessions else [])

    monkeypatch.setattr(upstream, "open_upstream", scripted)
    processor = load("realtime", {"endpoint": "ws://127.0.0.1:9/", "api_key_env": KEY_ENV})
    async with memory_call(processor, sample_rate=rate) as mc:
        await mc.peer.stream(speech(rate)[: rate * 2 // 2])  # half a second of the caller
    [outcome] = mc.outcome
    assert outcome.error is None, outcome.error
    assert outcome.ended_by is EndReason.HANGUP, outcome


async def test_a_model_sending_garbage_is_counted_every_time_and_logged_once_as_a_warning(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, "k")
    delta = b'{"type":"response.output_audio.delta","item_id":"i1","delta":"AAE"}'  # not base64
    script = [b"not json", delta, b"[]", delta]

    async def scripted(options: object, ssl_context: object = None) -> ScriptedModel:
        return ScriptedModel(script)

    monkeypatch.setattr(upstream, "open_upstream", scripted)
    processor = load("realtime", {"endpoint": "ws://127.0.0.1:9/", "api_key_env": KEY_ENV})
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        async with memory_call(processor, sample_rate=24000) as mc:
            await mc.peer.stream(speech(24000)[:24000])
    [outcome] = mc.outcome
    assert outcome.ended_by is EndReason.HANGUP
    assert outcome.stats.upstream_errors["malformed_event"] == 4
    levels = [r.levelno for r in caplog.records if r.getMessage().startswith("the model sent")]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.DEBUG]
