"""Answering end to end, offline: the fake ACS rings, the gateway answers through the real SDK
(HMAC-signed, over TLS), ACS opens the media WebSocket the answer named, and a processor hangs
up or transfers its own call through `call.control`. Real sockets on 127.0.0.1, real time."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from gateway.acs.packets import DtmfData
from gateway.config import Route
from gateway.processors import Call, load
from gateway.testing import census, speech

pytest.importorskip("azure.communication.callautomation")

from gateway.control.answer import AnswerRequest, media_streaming_options  # noqa: E402
from gateway.testing.answering import open_answering_gateway  # noqa: E402

HALF_SECOND = speech(16000)[:16000]
ECHO = load("echo", {})
TRANSFER_TO = "+14255550199"
OTHER = "+18005550177"  # a number no route names (the fake rings +18005550100 by default)


def recording(name: str, seen: list[tuple[str, Call]]) -> Any:
    async def processor(call: Call) -> None:
        seen.append((name, call))
        await ECHO(call)

    return processor


def on_dtmf(action: str, seen: list[tuple[str, Call]]) -> Any:
    async def processor(call: Call) -> None:
        seen.append((action, call))
        async for packet in call.packets:
            if isinstance(packet, DtmfData):
                assert call.control is not None
                if action == "hang_up":
                    await call.control.hang_up()
                else:
                    await call.control.transfer(TRANSFER_TO)

    return processor


async def test_a_call_is_answered_with_the_routes_options_and_echoes_byte_exact(caplog):
    caplog.set_level(logging.DEBUG)
    seen: list[tuple[str, Call]] = []
    processors = {"sales": recording("sales", seen)}
    routes = [Route(name="sales", callee=("+18005550100",), dtmf=True, processor="sales")]
    async with open_answering_gateway(routes, processors) as gw:
        call = await gw.acs.ring(to="+18005550100", sip_headers={"X-Team": "a"})
        assert call.delivery is not None and call.delivery.status == 200
        with trio.fail_after(10):
            await call.media_connected.wait()
            await call.wait_for_callback("MediaStreamingStarted")
        assert call.answer is not None
        sent = call.answer["mediaStreamingOptions"]
        url = urlsplit(sent["transportUrl"])
        assert (url.scheme, url.netloc, url.path) == ("wss", gw.public_url[8:], "/ws/sales")
        request = AnswerRequest(
            "ctx", call.callback_uri or "", sent["transportUrl"], routes[0], "pcm16KMono"
        )
        expected = media_streaming_options(request)
        assert sent == expected._to_generated().serialize()  # field by field, as the SDK puts it
        assert sent["enableDtmfTones"] is True and sent["audioFormat"] == "pcm16KMono"
        assert call.answer["incomingCallContext"] == call.incoming_call_context
        assert call.answer["operationContext"] == "route:sales"

        assert call.media is not None
        await call.media.stream(HALF_SECOND)
        with trio.fail_after(5):
            await call.media.wait_for_audio(len(HALF_SECOND))
        assert call.media.received_pcm == HALF_SECOND

        ((name, processor_call),) = seen
        control = processor_call.control
        assert name == "sales" and control is not None
        assert (control.caller, control.callee) == ("4:+14255550123", "4:+18005550100")
        assert control.custom_context["sipHeaders"] == {"X-Team": "a"}
        await gw.acs.hang_up(call)
        with trio.fail_after(5):
            await call.media.closed.wait()
        assert [d.status for d in call.callbacks] == [200, 200, 200]  # JWT and token accepted
    stats = gw.control.stats
    assert stats.incoming_calls == 1 and stats.answers == {"answered": 1}
    assert stats.callbacks == dict.fromkeys(
        ("CallConnected", "MediaStreamingStarted", "CallDisconnected"), 1
    )
    assert gw.server.stats.calls_accepted == 1
    media_token = parse_qs(url.query)["token"][0]
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    assert "accepted /ws/sales?token=..." in ours
    assert media_token not in ours and "token=v1." not in ours  # the fake's own logs aside
    metrics = gw.server.metrics.exposition()[0].decode()
    for series in (
        "acs_gateway_incoming_calls_total 1.0",
        'acs_gateway_answers_total{result="answered"} 1.0',
        'acs_gateway_answers_total{result="failed"} 0.0',
        'acs_gateway_callbacks_total{type="MediaStreamingStarted"} 1.0',
        "acs_gateway_answer_latency_seconds_count 1.0",
        "acs_gateway_media_connect_latency_seconds_count 1.0",
    ):
        assert series in metrics


@pytest.mark.parametrize("action", ["hang_up", "transfer"])
async def test_a_processor_hangs_up_or_transfers_its_call_on_a_key_press(action):
    seen: list[tuple[str, Call]] = []
    routes = [Route(name="agent", callee=("+18005550111",), dtmf=True, processor="agent")]
    async with open_answering_gateway(routes, {"agent": on_dtmf(action, seen)}) as gw:
        call = await gw.acs.ring(to="+18005550111")
        with trio.fail_after(10):
            await call.media_connected.wait()
        assert call.media is not None
        await call.media.send_dtmf("5")
        with trio.fail_after(10):
            await call.disconnected.wait()
            await call.media.closed.wait()
            disconnected = await call.wait_for_callback("CallDisconnected")
        assert disconnected.status == 200
        operations = [urlsplit(r.target).path.rpartition("/")[2] for r in gw.acs.requests]
        if action == "hang_up":
            assert operations[-1] == f"{call.call_connection_id}:terminate"
        else:
            assert operations[-1] == f"{call.call_connection_id}:transferToParticipant"
            ((transfer),) = call.transfers
            assert transfer["targetParticipant"]["rawId"] == f"4:{TRANSFER_TO}"
            accepted = await call.wait_for_callback("CallTransferAccepted")
            assert accepted.status == 200
        with trio.fail_after(5):
            while gw.server.live:  # noqa: ASYNC110  (the server has no "a call ended" event)
                await trio.sleep(0.01)
    assert gw.control.stats.callbacks["CallDisconnected"] == 1


async def test_routes_by_callee_caller_and_custom_context_each_run_their_processor():
    seen: list[tuple[str, Call]] = []
    routes = [
        Route(name="sales", callee=("+18005550100",), processor="sales"),
        Route(name="vip", caller=("+14255550999",), processor="vip", audio_format="pcm24KMono"),
        Route(name="queue", headers={"X-Queue": "agents"}, processor="queue"),
        Route(name="bot", callee=("+18005550111",), processor="realtime"),
    ]
    processors = {name: recording(name, seen) for name in ("sales", "vip", "queue", "default")}
    processors["realtime"] = recording("bot", seen)  # by its name: not the bridge itself
    async with open_answering_gateway(routes, processors, processor="default") as gw:
        calls = {
            "sales": await gw.acs.ring(to="+18005550100"),
            "vip": await gw.acs.ring(to=OTHER, caller="+14255550999"),
            "queue": await gw.acs.ring(to=OTHER, voip_headers={"X-Queue": "agents"}),
            "default": await gw.acs.ring(to=OTHER),
            "bot": await gw.acs.ring(to="+18005550111"),
        }
        with trio.fail_after(10):
            for call in calls.values():
                await call.media_connected.wait()
        for route, call in calls.items():
            assert urlsplit(call.media_options["transportUrl"]).path == f"/ws/{route}"
        formats = {route: call.media_options["audioFormat"] for route, call in calls.items()}
        assert formats == {  # as the route says, else the processor's own rate
            "sales": "pcm16KMono",
            "vip": "pcm24KMono",
            "queue": "pcm16KMono",
            "default": "pcm16KMono",
            "bot": "pcm24KMono",  # the realtime bridge's model runs at 24 kHz
        }
        with trio.fail_after(5):
            while len(seen) < 5:  # noqa: ASYNC110  (processors start as their media connects)
                await trio.sleep(0.01)
        by_call = {c.correlation_id: name for name, c in seen}
        assert by_call == {call.correlation_id: route for route, call in calls.items()}
        assert calls["vip"].media is not None and calls["vip"].media.sample_rate == 24000
        for name, processor_call in seen:
            assert processor_call.control is not None, name


async def test_streaming_failure_8581_logs_the_cause_and_the_url_sent(caplog):
    caplog.set_level(logging.INFO, "gateway.control")
    async with open_answering_gateway() as gw:
        gw.acs.fail_streaming = True
        call = await gw.acs.ring()
        with trio.fail_after(10):
            failed = await call.wait_for_callback("MediaStreamingFailed")
        assert failed.status == 200
        assert gw.control.answering is not None  # the call's state is cleaned: it takes no media
        assert gw.control.answering.answered[call.correlation_id].state == "ended"
    assert gw.control.stats.callbacks["MediaStreamingFailed"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "MediaStreamingFailed" in r.getMessage()]
    assert "not reachable over wss:// from the internet" in line
    assert f"wss://{gw.public_url[8:]}/ws/default?token=..." in line
    assert gw.server.stats.calls_accepted == 0


def _tasks_in(nursery: trio.Nursery) -> int:
    count, pending = 0, list(nursery.child_tasks)
    while pending:
        task = pending.pop()
        count += 1
        pending.extend(child for n in task.child_nurseries for child in n.child_tasks)
    return count


@pytest.mark.parametrize("failure", ["refused", "timeout"])
async def test_acs_failing_or_slow_to_answer_leaves_nothing_behind(failure, caplog):
    async with open_answering_gateway(answer_timeout=0.3) as gw:
        if failure == "refused":
            gw.acs.answer_status = 500
        else:
            gw.acs.rest_delay = 60.0  # ACS never replies while the test runs

        def gateway_tasks() -> int:  # the fake's own (its sleeping handlers) aside
            return census.task_count() - _tasks_in(gw.acs.nursery)

        async def ring() -> None:
            call = await gw.acs.ring()  # Event Grid's post returns once the answer is done
            assert call.delivery is not None and call.delivery.status == 200
            assert call.media is None and call.state == "ringing"

        await ring()  # the SDK's connection pool warms up here
        tasks = gateway_tasks()
        for _ in range(3):
            await ring()
        with trio.fail_after(5):
            while gateway_tasks() > tasks:  # noqa: ASYNC110  (a census, polled under fail_after)
                await trio.sleep(0.01)
        assert gateway_tasks() <= tasks  # raises above first if a task stayed behind
        assert not gw.server.stats.live and gw.server.stats.calls_accepted == 0
        result = "failed" if failure == "refused" else "timeout"
        answered = gw.control.answering.answered.values()  # only that each failed: refuses media
        assert [a.state for a in answered] == [result] * 4
        assert all(a.connection_id is None and a.holder is None for a in answered)
    assert gw.control.stats.answers == {result: 4}
    assert gw.control.stats.incoming_calls == 4
    expected = "ACS failed on its side" if failure == "refused" else "did not reply in 0.3 s"
    assert expected in caplog.text
