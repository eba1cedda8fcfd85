"""The realtime processor's call-control tools: the model hangs up or transfers a call the
gateway answered (the fake ACS, the real SDK, the fake model); no tools on media-only calls."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from gateway.config import Route
from gateway.errors import ConfigError
from gateway.processors import load
from gateway.testing import open_fake_model, open_gateway, simulated_call

pytest.importorskip("azure.communication.callautomation")

from gateway.testing.answering import open_answering_gateway  # noqa: E402

KEY_ENV = "TEST_REALTIME_TOOLS_KEY"
DESK = "+14255550199"


def options(model_url: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint": model_url, "api_key_env": KEY_ENV, **extra}


def bot(model_url: str) -> Route:
    tools = {
        "call_tools": ["end_call", "transfer_call"],
        "transfer_targets": {"desk": DESK},
        "tools": ["tests.test_realtime_user_tools:order_status"],  # the user's, beside them
    }
    return Route(name="bot", processor="realtime", options=options(model_url, **tools))


def outputs(model: Any) -> list[dict[str, Any]]:
    items = [e["item"] for e in model.received("conversation.item.create")]
    return [orjson.loads(i["output"]) for i in items if i.get("type") == "function_call_output"]


async def test_the_model_transfers_to_a_listed_target_and_hangs_up(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    async with open_fake_model() as model, open_answering_gateway([bot(model.url)]) as gw:
        call = await gw.acs.ring()
        with trio.fail_after(10):
            await call.media_connected.wait()
            await model.wait_for(lambda m: m.received("session.update"))
        session = model.received("session.update")[0]["session"]
        assert [t["name"] for t in session["tools"]] == [
            "order_status",
            "end_call",
            "transfer_call",
        ]
        target = session["tools"][2]["parameters"]["properties"]["target"]
        assert target["enum"] == ["desk"]  # the model sees names, never the numbers

        await model.call_tool("transfer_call", {"target": "somewhere else"})
        with trio.fail_after(10):
            await model.wait_for(lambda m: m.received("response.create"))  # go on, model
        assert outputs(model)[0]["ok"] is False and call.transfers == []

        await model.call_tool("transfer_call", {"target": "desk"})
        with trio.fail_after(10):
            await call.disconnected.wait()
        (transfer,) = call.transfers
        assert transfer["targetParticipant"]["rawId"] == f"4:{DESK}"
        assert (await call.wait_for_callback("CallTransferAccepted")).status == 200

        second = await gw.acs.ring()
        with trio.fail_after(10):
            await second.media_connected.wait()
            await model.wait_for(lambda m: len(m.received("session.update")) >= 2)
        await model.call_tool("end_call")
        with trio.fail_after(10):
            await second.disconnected.wait()
        ops = [r.target.split("?")[0].rpartition("/")[2] for r in gw.acs.requests]
        assert f"{second.call_connection_id}:terminate" in ops


async def test_a_media_only_call_offers_no_tools(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    async with open_fake_model() as model:
        opts = options(model.url, call_tools=["end_call"])
        async with open_gateway(load("realtime", opts)) as server:
            async with simulated_call(server.urls[0]) as call:
                with trio.fail_after(10):
                    await model.wait_for(lambda m: m.received("session.update"))
                await call.hang_up()
    assert "tools" not in model.received("session.update")[0]["session"]


def test_tool_options_are_checked(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    with pytest.raises(ConfigError, match="call_tools: unknown"):
        load("realtime", options("ws://127.0.0.1:1", call_tools=["launch_rocket"]))
    with pytest.raises(ConfigError, match="transfer_targets"):
        load("realtime", options("ws://127.0.0.1:1", call_tools=["transfer_call"]))
