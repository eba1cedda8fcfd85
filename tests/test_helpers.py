"""The test helpers fail loudly: every wait of the simulated peer has a timeout and says what it
waited for and what it saw; a call that closes first fails the wait at once; a processor's
crash comes out as one `ProcessorFailed` carrying the processor's own traceback."""

from __future__ import annotations

import traceback

import pytest
import trio

from gateway.processors import Call
from gateway.testing import (
    ProcessorFailed,
    WaitFailed,
    open_fake_model,
    open_gateway,
    simulated_call,
)

FRAME = bytes(640)  # 20 ms at 16 kHz


async def one_frame_then_silence(call: Call) -> None:
    assert call.player is not None
    await call.player.play(FRAME)
    await trio.sleep_forever()


async def hangs_up(call: Call) -> None:
    return


async def crashes_on_audio(call: Call) -> None:
    async for _ in call.packets:
        raise ValueError("the processor's own bug")


async def test_a_wait_times_out_saying_what_it_waited_for_and_what_it_got():
    async with open_gateway(one_frame_then_silence) as server:
        async with simulated_call(server.urls[0], timeout=0.3) as call:
            await call.wait_for_audio(640, timeout=10)  # all that will come
            with pytest.raises(WaitFailed) as failed:
                await call.wait_for_audio(16000)
            assert str(failed.value) == (
                "waited 0.3 s for 16000 bytes of audio; got 640; the call is still open"
            )
            with pytest.raises(WaitFailed) as failed:  # a wait's own timeout wins
                await call.wait_for(lambda c: c.stop_times, timeout=0.1)
            message = str(failed.value)
            assert message.startswith("waited 0.1 s for lambda c: c.stop_times; ")
            assert "got 640 bytes of audio in 1 message(s), 0 stop-audio" in message


async def test_a_wait_raises_at_once_when_the_call_closes_with_its_condition_unmet():
    async with open_gateway(hangs_up) as server:
        async with simulated_call(server.urls[0], timeout=60) as call:
            with trio.fail_after(10):  # not the wait's 60 s: at once
                with pytest.raises(WaitFailed) as failed:
                    await call.wait_for(lambda c: c.stop_times)
            assert str(failed.value) == (
                "waited for lambda c: c.stop_times; got 0 bytes of audio in 0 message(s), "
                "0 stop-audio, 0 other; the gateway closed the call with 1000 ''"
            )
            await call.wait_closed()  # met: returns
            assert call.close_code == 1000


async def test_a_processor_crash_is_one_exception_with_the_processors_traceback():
    async with open_gateway(crashes_on_audio) as server:
        with pytest.raises(ProcessorFailed) as failed:  # not wrapped in an exception group
            async with simulated_call(server.urls[0]) as call:
                await call.send_audio(FRAME)
                await call.wait_for_audio(640)
    assert isinstance(failed.value.__cause__, ValueError)
    assert failed.value.connection_id == call.connection_id
    assert call.processor_error is failed.value.__cause__
    assert 'the processor raised ValueError("the processor\'s own bug")' in str(failed.value)
    assert "closed the call with 1011 'processor error'" in str(failed.value)
    where = traceback.extract_tb(failed.value.__cause__.__traceback__)
    assert where[-1].name == "crashes_on_audio"


async def test_a_send_after_the_processor_crashed_raises_processor_failed():
    async with open_gateway(crashes_on_audio) as server:
        async with simulated_call(server.urls[0]) as call:
            await call.send_audio(FRAME)
            await call.wait_closed()
            assert call.close_code == 1011  # waiting for the close itself is not a failure
            with pytest.raises(ProcessorFailed):
                await call.send_audio(FRAME)


async def test_a_failure_in_the_test_body_comes_out_as_itself():
    async with open_gateway() as server:
        with pytest.raises(KeyError):
            async with simulated_call(server.urls[0]):
                raise KeyError("the test's own")


async def test_the_fake_models_wait_times_out_too():
    async with open_fake_model([]) as model:
        with pytest.raises(AssertionError, match="waited 0.2 s for a reply"):
            await model.wait_for(
                lambda m: m.sent_of("response.created"), timeout=0.2, what="a reply"
            )


async def test_the_fake_model_calls_a_tool_after_the_response_under_way_as_the_service_would(
    autojump_clock,
):
    import orjson
    import trio_websocket

    reply = bytes(48000)  # 1 s at 24 kHz, streamed in a quarter of that
    async with open_fake_model([reply]) as model, trio.open_nursery() as nursery:
        async with trio_websocket.open_websocket_url(model.url) as ws:
            await ws.send_message(orjson.dumps({"type": "response.create"}).decode())
            await model.wait_for(lambda m: m.sent_of("response.created"))
            nursery.start_soon(model.call_tool, "lookup")
            await model.wait_for(lambda m: len(m.sent_of("response.done")) == 2)
    order = [r.type for r in model.sent if r.type in ("response.created", "response.done")]
    assert order == ["response.created", "response.done"] * 2  # one response at a time
    call = next(r for r in model.sent if r.type == "response.output_item.done")
    assert call.event["item"]["name"] == "lookup"
