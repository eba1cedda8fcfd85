"""One call's tool calls in flight (`tool_calls.ToolCalls`), without sockets: each call answered
once, and the model asked to go on exactly when the service would accept it."""

from __future__ import annotations

import logging

import orjson
import trio

from gateway.processors import Call, CallStats
from gateway.processors.realtime import protocol
from gateway.processors.realtime.protocol import ToolCall
from gateway.processors.realtime.tool_calls import MAX_RUNNING, ToolCalls, ToolSession
from gateway.processors.realtime.tools import Toolbox

CREATE = protocol.create_response()


async def wait(seconds: float) -> str:
    """Take a while."""
    await trio.sleep(seconds)
    return f"waited {seconds}"


class Session:
    """What one model session was sent; `responding` says a response is in flight on it."""

    def __init__(self, responding: bool = False) -> None:
        self.sent: list[str] = []
        self.responding = responding
        self.tools = ToolSession(self.send, lambda: self.responding)

    async def send(self, events: list[str]) -> bool:
        self.sent += events
        return True

    def kinds(self) -> list[str]:
        return [orjson.loads(e)["type"] for e in self.sent]


def call_for_test() -> Call:
    _, packets = trio.open_memory_channel[object](0)
    return Call(
        connection_id="c",
        correlation_id=None,
        path="/",
        headers={},
        audio=None,
        transcription=None,
        packets=packets,  # type: ignore[arg-type]  # never read here
        player=None,
        log=logging.LoggerAdapter(logging.getLogger("test")),
        stats=CallStats(),
    )


def tool_calls(remembered: list[str] | None = None) -> ToolCalls:
    toolbox = Toolbox.from_options([f"{__name__}:wait"], [], {}, 10_000)
    return ToolCalls(
        call_for_test(), toolbox, (remembered if remembered is not None else []).append
    )


def waiting(seconds: float, call_id: str, response_id: str | None = "r1") -> ToolCall:
    return ToolCall("wait", call_id, orjson.dumps({"seconds": seconds}).decode(), response_id)


async def test_the_model_goes_on_after_its_response_and_every_answer(autojump_clock):
    remembered: list[str] = []
    calls, session = tool_calls(remembered), Session()
    async with trio.open_nursery() as nursery:
        calls.start(nursery, session.tools, waiting(0.2, "a"))
        calls.start(nursery, session.tools, waiting(0.5, "b"))
        calls.start(nursery, session.tools, waiting(0.5, "b"))  # announced twice: run once
        await calls.response_done(session.tools, "r1", "completed")
        await trio.sleep(0.3)
        assert session.kinds() == ["conversation.item.create"]  # a's; b still runs
    assert session.kinds() == ["conversation.item.create"] * 2 + ["response.create"]
    assert calls.call.stats.tool_calls == {"ok": 2}
    assert remembered == [  # for the conversation a next session is given
        "The tool wait was called and returned: waited 0.2",
        "The tool wait was called and returned: waited 0.5",
    ]


async def test_answers_before_the_response_ends_wait_for_it(autojump_clock):
    calls, session = tool_calls(), Session()
    async with trio.open_nursery() as nursery:
        calls.start(nursery, session.tools, waiting(0.1, "a"))
        await trio.sleep(1)
        assert session.kinds() == ["conversation.item.create"]
        await calls.response_done(session.tools, "r1", "completed")
    assert session.sent[-1] == CREATE


async def test_a_response_in_flight_delays_the_request(autojump_clock):
    calls, session = tool_calls(), Session()
    async with trio.open_nursery() as nursery:
        calls.start(nursery, session.tools, waiting(1, "a"))
        await calls.response_done(session.tools, "r1", "completed")
        session.responding = True  # the caller spoke; the model answers them meanwhile
        await trio.sleep(2)
    assert CREATE not in session.sent  # it would be refused now
    session.responding = False
    await calls.response_done(session.tools, "r2", "completed")  # that answer is over: go on
    assert session.sent[-1] == CREATE


async def test_a_request_owed_to_a_lost_session_is_dropped(autojump_clock):
    calls, old, new = tool_calls(), Session(responding=True), Session()
    async with trio.open_nursery() as nursery:
        calls.start(nursery, old.tools, waiting(0.1, "a", None))
    await calls.response_done(new.tools, "r9", "completed")  # the new session never had "a"
    assert new.sent == [] and CREATE not in old.sent


async def test_a_cancelled_response_gets_its_answers_but_no_request(autojump_clock):
    calls, session = tool_calls(), Session()
    async with trio.open_nursery() as nursery:
        calls.start(nursery, session.tools, waiting(0.1, "a"))
        await calls.response_done(session.tools, "r1", "cancelled")
    assert session.kinds() == ["conversation.item.create"]


async def test_too_many_at_once_are_refused(autojump_clock):
    calls, session = tool_calls(), Session()
    async with trio.open_nursery() as nursery:
        for k in range(MAX_RUNNING + 2):
            calls.start(nursery, session.tools, waiting(1, f"c{k}", None))
    outputs = [orjson.loads(e)["item"]["output"] for e in session.sent if "item" in e]
    assert outputs.count('{"error":"too many tool calls at once"}') == 2
    assert outputs.count("waited 1.0") == MAX_RUNNING
    assert calls.call.stats.tool_calls == {"ok": MAX_RUNNING, "error": 2}
