"""The realtime processor's user tools: the schema the model is offered (from type hints and
docstrings), loading them at start, and the round trip through the fake model (the call, the
function_call_output, the next response), with tools that raise, time out, or get bad
arguments; in both protocol generations. The tools themselves are the functions below."""

from __future__ import annotations

import enum
import gc
import threading
import time
import weakref
from typing import Annotated, Any, Literal

import attrs
import orjson
import pytest
import trio

from gateway.errors import ConfigError
from gateway.processors import Call, load
from gateway.processors.realtime import tool
from gateway.processors.realtime.tool_schema import ToolArgumentError, describe
from gateway.records.disk import DISK
from gateway.testing import FunctionCall, open_fake_model, open_gateway, simulated_call, speech
from tests.test_realtime_e2e import KEY_ENV, options, silence, spied

HERE = __name__
LOOKUPS: list[tuple[str, str, str | None]] = []
RELEASE = threading.Event()  # lets the stuck synchronous tool's thread go at the test's end


class Speed(enum.Enum):
    STANDARD = "standard"
    EXPRESS = "express"


@attrs.frozen
class Address:
    """Where the parcel goes."""

    street: str
    postcode: str | None = None


async def order_status(
    order_id: str, detail: Literal["short", "full"] = "short", call: Call | None = None
) -> dict[str, Any]:
    """Look up an order's status.

    Args:
        order_id: the order number, as the caller reads it out
    """
    assert call is not None
    LOOKUPS.append((order_id, detail, call.connection_id))
    await trio.sleep(0.3)  # a slow back end
    return {"order_id": order_id, "status": "shipped"}


def ship(
    to: Address,
    items: list[str],
    speed: Speed,
    quantity: int = 1,
    gift: bool = False,
    weight_kg: float | None = None,
    note: Annotated[str, "for the courier"] = "",
) -> str:
    """Ship items somewhere."""
    return f"{quantity} x {items} to {to.street} ({speed.value})"


async def broken(order_id: str) -> str:
    raise LookupError(f"no order {order_id}")


def stuck(order_id: str) -> str:
    # a thread, so its timeout is exact under the autojump clock (a sync tool that returns at
    # once could be overtaken by the clock jumping to the deadline while its thread runs)
    RELEASE.wait(10)
    time.sleep(0)
    return "too late"


@tool(name="weather", description="Today's weather.", parameters={"type": "object"})
async def forecast(**where: Any) -> dict[str, Any]:
    return {"where": where, "sky": "clear"}


not_a_function = 42


def untyped(city):  # type: ignore[no-untyped-def]
    return city


@attrs.define
class Loose:
    where = attrs.field()


def loose(place: Loose) -> None:
    pass


def odd(at: complex) -> None:
    pass


def test_the_schema_comes_from_type_hints_and_the_docstring():
    lookup = describe(order_status, "t").definition()
    assert lookup == {
        "type": "function",
        "name": "order_status",
        "description": "Look up an order's status.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {
                    "type": "string",
                    "description": "the order number, as the caller reads it out",
                },
                "detail": {"type": "string", "enum": ["short", "full"]},
            },  # the Call parameter is the gateway's, not the model's
            "required": ["order_id"],
        },
    }
    shipping = describe(ship, "t").definition()["parameters"]
    assert shipping["properties"] == {
        "to": {
            "type": "object",
            "description": "Where the parcel goes.",
            "properties": {"street": {"type": "string"}, "postcode": {"type": ["string", "null"]}},
            "required": ["street"],
        },
        "items": {"type": "array", "items": {"type": "string"}},
        "speed": {"type": "string", "enum": ["standard", "express"]},
        "quantity": {"type": "integer"},
        "gift": {"type": "boolean"},
        "weight_kg": {"type": ["number", "null"]},
        "note": {"type": "string", "description": "for the courier"},
    }
    assert shipping["required"] == ["to", "items", "speed"]
    explicit = describe(forecast, "t").definition()
    assert (explicit["name"], explicit["description"]) == ("weather", "Today's weather.")
    assert explicit["parameters"] == {"type": "object"}


def test_arguments_are_converted_and_bad_ones_refused():
    shipping = describe(ship, "t")
    kwargs = shipping.arguments(
        '{"to": {"street": "1 Main St"}, "items": ["tea"], "speed": "express", "quantity": 2}', None
    )  # type: ignore[arg-type]  # no call parameter
    assert kwargs["to"] == Address("1 Main St") and kwargs["speed"] is Speed.EXPRESS
    assert ship(**kwargs) == "2 x ['tea'] to 1 Main St (express)"
    for bad, why in [
        ('{"items": []}', "missing argument"),
        ('{"to": {"street": "x"}, "items": [], "speed": "teleport"}', "speed"),
        ('{"to": {"street": "x", "floor": 3}, "items": [], "speed": "express"}', "floor"),
        ('{"to": {"street": "x"}, "items": [], "speed": "express", "colour": 1}', "colour"),
        ("[1, 2]", "JSON object"),
        ("{nope", "not JSON"),
    ]:
        with pytest.raises(ToolArgumentError, match=why):
            shipping.arguments(bad, None)  # type: ignore[arg-type]  # no call parameter


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
        (f"{HERE}:missing", "has no 'missing'"),
        (f"{HERE}:not_a_function", "is not a function"),
        (f"{HERE}:Address", "is not a function"),
        (f"{HERE}", "is not 'module:function'"),
        (f"{HERE}:untyped", "parameter 'city' needs a type hint"),
        (f"{HERE}:loose", "parameter 'place': Loose.where needs a type hint"),
        (f"{HERE}:odd", "parameter 'at': cannot describe <class 'complex'> to the model"),
    ],
)
def test_a_bad_tool_stops_the_gateway_at_start(monkeypatch, path, message):
    monkeypatch.setenv(KEY_ENV, "k")
    with pytest.raises(ConfigError, match=message):
        load("realtime", options("ws://127.0.0.1:1", tools=[path]))


def test_two_tools_with_one_name_are_refused(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    with pytest.raises(ConfigError, match="two tools are called 'order_status'"):
        load("realtime", options("ws://127.0.0.1:1", tools=[f"{HERE}:order_status"] * 2))
    with pytest.raises(ConfigError, match="tool_timeout_ms"):
        load("realtime", options("ws://127.0.0.1:1", tool_timeout_ms=0))


async def test_a_tool_round_trip(autojump_clock, monkeypatch, tmp_path):
    """The caller asks; the model calls order_status; the gateway runs it, returns the output
    and asks for the next response; the model speaks it and the caller hears it."""
    monkeypatch.setenv(KEY_ENV, "k")
    LOOKUPS.clear()
    answer = speech(24000)[: 24000 * 2]  # 1 s
    script = [FunctionCall("order_status", {"order_id": "A17", "detail": "full"}), answer]
    calls: list[Call] = []
    async with open_fake_model(script) as model:
        opts = options(model.url, tools=[f"{HERE}:order_status", f"{HERE}:ship"])
        async with open_gateway(
            spied(opts, calls), call_events=True, recording_dir=str(tmp_path)
        ) as server:
            async with simulated_call(server.urls[0], connection_id="conn-1") as acs:
                await acs.stream(speech(16000)[: 16000 * 2 * 2] + silence(16000, 1.0))
                await acs.wait_for_audio(16000 * 2 // 2)  # the answer after the tool
    offered = model.tools_offered()
    assert [t["name"] for t in offered] == ["order_status", "ship"]
    assert offered[0] == describe(order_status, "t").definition()
    assert model.received("session.update")[0]["session"]["tool_choice"] == "auto"
    assert LOOKUPS == [("A17", "full", "conn-1")]
    [called] = model.sent_of("response.function_call_arguments.done")
    [output] = model.tool_outputs()
    assert output["call_id"] == called.event["call_id"]
    assert orjson.loads(output["output"]) == {"order_id": "A17", "status": "shipped"}
    # the output, then one request for the next response, after the calling response ended
    kinds = [r.type for r in model.events]
    create = kinds.index("response.create")
    assert kinds[create - 1] == "conversation.item.create"
    [done] = [r for r in model.sent_of("response.done") if r.event["response"].get("output")]
    assert model.events[create].time >= done.time
    assert model.events[create].time - called.time >= 0.3 - 1e-9  # the tool's own time
    assert len(model.received("response.create")) == 1
    [call] = calls
    assert call.stats.tool_calls == {"ok": 1}
    # the call's record has the call and its result
    await trio.to_thread.run_sync(DISK.wait_idle, 10.0)
    [path] = tmp_path.glob("*.jsonl")
    log = [orjson.loads(line) for line in path.read_text().splitlines()]
    [noted] = [e for e in log if e["event"] == "tool_call"]
    assert (noted["name"], noted["call_id"]) == ("order_status", output["call_id"])
    [result] = [e for e in log if e["event"] == "tool_result"]
    assert (result["outcome"], result["ms"]) == ("ok", 300.0)


@pytest.mark.parametrize("provider", ["openai", "azure-preview"])  # GA, then beta shapes
async def test_a_tool_that_fails_or_times_out_is_an_error_for_the_model(
    autojump_clock, monkeypatch, provider
):
    monkeypatch.setenv(KEY_ENV, "k")
    RELEASE.clear()
    calls: list[Call] = []
    async with open_fake_model() as model:
        opts = options(
            model.url,
            provider=provider,
            model="deployment",
            tools=[f"{HERE}:broken", f"{HERE}:stuck", f"{HERE}:order_status"],
            tool_timeout_ms=500,
        )
        async with open_gateway(spied(opts, calls)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await model.wait_for(lambda m: m.received("session.update"))
                ids = []
                # One at a time: each answered, and the next response asked for, before the
                # model calls the next (a request crossing the model's next response would be
                # refused as overlapping it: another matter than what this test is about).
                for k, (name, arguments) in enumerate(
                    [
                        ("broken", {"order_id": "B2"}),
                        ("stuck", {"order_id": "C3"}),
                        ("order_status", {"order": "A17"}),
                        ("launch_rocket", None),
                    ]
                ):
                    ids.append(await model.call_tool(name, arguments))
                    await model.wait_for(lambda m, n=k + 1: len(m.tool_outputs()) == n)
                    await model.wait_for(lambda m, n=k + 1: len(m.received("response.create")) == n)
                broken_id, stuck_id, bad_id, nobody_id = ids
                await acs.send_audio(bytes(640))  # the call goes on
            RELEASE.set()
            server.metrics.flush()
            sample = server.metrics.registry.get_sample_value
            tools_total = {
                o: sample("acs_gateway_tool_calls_total", {"outcome": o})
                for o in ("error", "timeout")
            }
    outputs = {o["call_id"]: orjson.loads(o["output"]) for o in model.tool_outputs()}
    assert outputs[broken_id] == {"error": "LookupError: no order B2"}
    assert outputs[stuck_id] == {"error": "no result within 0.5 s"}
    assert outputs[bad_id]["error"].startswith("bad arguments: unknown argument(s) ['order']")
    assert outputs[nobody_id] == {"error": "there is no tool 'launch_rocket' on this call"}
    [call] = calls
    assert call.stats.tool_calls == {"error": 3, "timeout": 1}
    assert tools_total == {"error": 3, "timeout": 1}  # the metric, from the call's counts
    assert model.received("session.update")[0]["session"].get("type") == (
        "realtime" if provider == "openai" else None
    )


async def test_two_calls_in_one_response_get_one_request_to_go_on(autojump_clock, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    LOOKUPS.clear()
    both = (
        FunctionCall("order_status", {"order_id": "A17"}),
        FunctionCall("ship", {"to": {"street": "1 Main St"}, "items": ["tea"], "speed": "express"}),
    )
    async with open_fake_model([both, speech(24000)[:24000]]) as model:
        opts = options(model.url, tools=[f"{HERE}:order_status", f"{HERE}:ship"])
        async with open_gateway(load("realtime", opts)) as server:
            async with simulated_call(server.urls[0]) as acs:
                await acs.stream(speech(16000)[: 16000 * 2 * 2] + silence(16000, 1.0))
                await acs.wait_for_audio(8000)  # the reply after both
    outputs = sorted(o["output"] for o in model.tool_outputs())  # in the order they finish
    assert outputs == [
        "1 x ['tea'] to 1 Main St (express)",
        '{"order_id":"A17","status":"shipped"}',
    ]
    [create] = [r for r in model.events if r.type == "response.create"]
    assert create.time >= max(r.time for r in model.events if r.type == "conversation.item.create")
    assert model.sent_of("error") == []


async def test_a_bridge_with_tools_is_freed_when_its_call_ends(autojump_clock, monkeypatch):
    """No reference cycle keeps an ended call's bridge (and its resamplers) alive until the
    cyclic GC runs: the tool bookkeeping refers to the model session, never to the bridge."""
    from gateway.processors.realtime import bridge

    monkeypatch.setenv(KEY_ENV, "k")
    bridges: list[weakref.ref[bridge.Bridge]] = []
    init = bridge.Bridge.__init__

    def remembered(self: bridge.Bridge, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bridges.append(weakref.ref(self))

    monkeypatch.setattr(bridge.Bridge, "__init__", remembered)
    script = [speech(24000)[:4800], FunctionCall("order_status", {"order_id": "A1"}), b""]
    async with open_fake_model(script) as model:
        opts = options(model.url, tools=[f"{HERE}:order_status"], greeting="Hello.")
        async with open_gateway(load("realtime", opts)) as server:
            gc.collect()
            gc.disable()
            try:
                async with simulated_call(server.urls[0]) as acs:
                    await acs.wait_for_audio(3200)  # the greeting
                    await acs.stream(speech(16000)[: 16000 * 2 * 2] + silence(16000, 0.8))
                    await model.wait_for(lambda m: len(m.received("response.create")) == 2)
                for _ in range(200):
                    if not server.live:
                        break
                    await trio.sleep(0.01)
                await trio.sleep(0.1)
                alive = [ref() for ref in bridges if ref() is not None]
            finally:
                gc.enable()
    assert len(bridges) == 1 and alive == []
