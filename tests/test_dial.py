"""Outbound calls, offline: the gateway's dialer places a call through the real SDK, the fake
ACS rings and connects it, and the running gateway gets its callbacks and media as for a call
it answered (echo byte-exact, `call.control` acting on it). Real sockets on 127.0.0.1."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import trio
from trio_websocket import HandshakeError

from gateway import cli
from gateway.config import Config, Route
from gateway.processors import Call, Processor, load
from gateway.testing import acs_events, simulated_call, speech

pytest.importorskip("azure.communication.callautomation")

from gateway.control import Dialer, DialFailed, dial  # noqa: E402
from gateway.control.answer import DialRequest, media_streaming_options  # noqa: E402
from gateway.control.tokens import CallTokens  # noqa: E402
from gateway.errors import ConfigError  # noqa: E402
from gateway.testing.answering import CALL_TOKEN_KEY, open_answering_gateway  # noqa: E402

HALF_SECOND = speech(16000)[:16000]
ECHO = load("echo", {})
CALLEE = "+14255550123"
OURS = "+18005550100"


def hanging_up(seen: list[Call]) -> Processor:
    async def processor(call: Call) -> None:
        seen.append(call)
        assert call.control is not None
        await call.control.hang_up()

    return processor


async def test_a_dialled_call_streams_to_the_gateway_and_echoes_byte_exact():
    routes = [Route(name="sales", callee=("+18005550199",), audio_format="pcm24KMono")]
    async with open_answering_gateway(routes) as gw:
        placed = await gw.dialer().dial(CALLEE, "sales", caller_id=OURS)
        call = gw.acs.calls[placed.call_connection_id]
        assert (call.direction, call.to, call.caller) == ("outbound", "4:" + CALLEE, OURS)
        assert placed.correlation_id == call.correlation_id and placed.route == "sales"
        body = call.answer
        assert body is not None
        assert body["targets"][0]["rawId"] == "4:" + CALLEE
        assert body["sourceCallerIdNumber"] == {"value": OURS}
        sent = body["mediaStreamingOptions"]
        url = urlsplit(sent["transportUrl"])
        assert (url.scheme, url.netloc, url.path) == ("wss", gw.public_url[8:], "/ws/sales")
        grant = CallTokens(CALL_TOKEN_KEY.encode()).check(parse_qs(url.query)["token"][0], "media")
        assert grant.dialled and grant.correlation_id == placed.dial_id
        expected = media_streaming_options(placed_request(sent["transportUrl"], routes[0]))
        assert sent == expected._to_generated().serialize()  # as the SDK puts it
        with trio.fail_after(10):
            await call.media_connected.wait()
            await call.wait_for_callback("MediaStreamingStarted")
        assert call.callback_kinds()[0] == "CallConnected"
        assert all(d.status == 200 for d in call.callbacks)  # the gateway took them
        assert call.media is not None
        await call.media.stream(speech(24000)[:24000])
        with trio.fail_after(5):
            await call.media.wait_for_audio(24000)
        assert call.media.received_pcm == speech(24000)[:24000]
        await gw.acs.hang_up(call)
    assert gw.control.stats.callbacks["CallConnected"] == 1
    assert not gw.control.stats.refused


def placed_request(transport_url: str, route: Route) -> DialRequest:
    return DialRequest(None, "", transport_url, route, "pcm24KMono")


async def test_a_processor_hangs_up_a_call_it_dialled():
    seen: list[Call] = []
    routes = [Route(name="bye", processor="bye")]
    async with open_answering_gateway(routes, {"bye": hanging_up(seen)}) as gw:
        placed = await gw.dialer().dial("8:acs:someone", "bye")
        call = gw.acs.calls[placed.call_connection_id]
        assert "sourceCallerIdNumber" not in (call.answer or {})  # an ACS user needs none
        with trio.fail_after(10):
            await call.disconnected.wait()
        assert seen and seen[0].control is not None
        assert seen[0].control.call_connection_id == placed.call_connection_id
        assert seen[0].control.caller is None  # no IncomingCall for a call we placed
    hang_up = f"/calling/callConnections/{placed.call_connection_id}:terminate"
    assert [r.status for r in gw.acs.requests if r.target.startswith(hang_up)] == [204]


async def test_clear_errors_and_nothing_sent():
    async with open_answering_gateway() as gw:
        dialer = gw.dialer()
        with pytest.raises(ValueError, match="no route 'nope'; the routes are default"):
            await dialer.dial(CALLEE, "nope", caller_id=OURS)
        with pytest.raises(ValueError, match="not a phone number"):
            await dialer.dial("12345", caller_id=OURS)
        with pytest.raises(ValueError, match="needs a caller id"):
            await dialer.dial(CALLEE)
        assert not gw.acs.requests  # nothing reached ACS
        gw.acs.dial_status = 403
        with pytest.raises(DialFailed, match=r"ACS refused the call \(403\).*caller id") as e:
            await dialer.dial(CALLEE, caller_id=OURS)
        assert e.value.status == 403
        assert not gw.acs.calls
    with pytest.raises(ConfigError, match="dialling needs the control plane: set public_url"):
        await dial(Config(), CALLEE, environ={})


async def test_a_create_call_signed_with_another_key_is_refused():
    async with open_answering_gateway() as gw:
        wrong = base64.b64encode(b"w" * 32).decode()
        environ = {
            **gw.environ,
            "ACS_CONNECTION_STRING": f"endpoint={gw.acs.endpoint}/;accesskey={wrong}",
        }
        dialer = Dialer.from_config(gw.control.config, environ, **gw.acs.sdk_options)
        with pytest.raises(DialFailed, match=r"\(401\).*check \$ACS_CONNECTION_STRING"):
            await dialer.dial("8:acs:x")
        (request,) = gw.acs.requests
        assert (request.target.split("?")[0], request.status) == ("/calling/callConnections", 401)
        assert request.refusal is not None and not gw.acs.calls


async def test_a_dialled_calls_tokens_admit_only_its_route_and_one_call_a_post():
    routes = [Route(name="a", callee=("+1800",)), Route(name="b", callee=("+1801",))]
    async with open_answering_gateway(routes) as gw:
        gw.acs.ring_seconds = 60  # it rings: no media or callbacks of its own meanwhile
        placed = await gw.dialer().dial("8:acs:x", "a")
        call = gw.acs.calls[placed.call_connection_id]
        other_route = call.media_options["transportUrl"].replace("/ws/a?", "/ws/b?")
        with pytest.raises(HandshakeError):
            async with simulated_call(other_route, ssl_context=gw.acs.client_ssl):
                pass
        assert gw.control.stats.refused == {"media_other_call": 1}
        events = [
            acs_events.callback_event(
                "CallConnected", call_connection_id=str(i), server_call_id="s", correlation_id=c
            )
            for i, c in enumerate(("c1", "c2"))
        ]
        uri = call.callback_uri or ""
        reply = await gw.acs.http.post(uri, content=orjson.dumps(events), headers=JSON)
        assert reply.status_code == 403  # two calls in one post: not one call's callbacks
        assert gw.control.stats.refused["callback_other_call"] == 1
        assert not gw.control.stats.callbacks


JSON = {"content-type": "application/json"}


async def test_the_dial_command_places_a_call(monkeypatch, tmp_path, capsys):
    async with open_answering_gateway() as gw:
        config = gw.control.config
        conf = tmp_path / "gateway.toml"
        conf.write_text(
            f'public_url = "{config.public_url}"\ndial_caller_id = "{OURS}"\n'
            'log_level = "warning"\n'
        )
        for name, value in {**gw.environ, "REQUESTS_CA_BUNDLE": gw.acs.ca_path}.items():
            monkeypatch.setenv(name, value)
        argv = ["dial", CALLEE, "--config", str(conf), "--json"]
        assert await trio.to_thread.run_sync(cli.main, argv) == 0
        placed = orjson.loads(capsys.readouterr().out)
        call = gw.acs.calls[placed["call_connection_id"]]
        assert placed["target"] == "4:" + CALLEE and placed["route"] == "default"
        with trio.fail_after(10):
            await call.media_connected.wait()
        gw.acs.dial_status = 500
        assert await trio.to_thread.run_sync(cli.main, argv) == 1
        assert "ACS refused the call (500)" in capsys.readouterr().err
        await gw.acs.hang_up(call)


def test_dial_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`acs-media-gateway dial` with bad input: exit 2 and a line saying what is wrong."""
    conf = tmp_path / "gateway.toml"
    conf.write_text("port = 0\n")
    assert cli.main(["dial", CALLEE, "--config", str(conf)]) == 2
    assert "dialling needs the control plane" in capsys.readouterr().err
    conf.write_text('public_url = "https://gw.example.com"\n')
    env = {
        "ACS_CONNECTION_STRING": "endpoint=https://x.example/;accesskey=eA==",
        "ACS_GATEWAY_CALL_TOKEN_KEY": "k" * 32,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert cli.main(["dial", CALLEE, "--route", "nope", "--config", str(conf)]) == 2
        assert "no route 'nope'" in capsys.readouterr().err
        assert cli.main(["dial", "12", "--config", str(conf)]) == 2
        assert "not a phone number" in capsys.readouterr().err


def test_an_incoming_call_cannot_pose_as_a_call_we_placed():
    from gateway.control.events import BadBody, IncomingCall

    event = acs_events.incoming_call_event(
        to=OURS,
        caller=CALLEE,
        incoming_call_context="ctx",
        server_call_id="s",
        correlation_id="dial:0f6c",
    )
    with pytest.raises(BadBody, match="correlationId is not ACS's"):
        IncomingCall.parse(event["data"])


async def test_callbacks_act_on_a_dialled_calls_live_media():
    seen: list[Call] = []

    async def keep(call: Call) -> None:
        seen.append(call)
        await ECHO(call)

    async with open_answering_gateway(processors={"keep": keep}, processor="keep") as gw:
        placed = await gw.dialer().dial("8:acs:x")
        call = gw.acs.calls[placed.call_connection_id]
        with trio.fail_after(10):
            await call.media_connected.wait()
            await call.wait_for_callback("MediaStreamingStarted")
        assert call.media is not None and seen[0].control is not None
        assert seen[0].control.media_streaming == "started"
        await gw.acs.callback(call, "CallDisconnected")  # before ACS closes the socket
        with trio.fail_after(5):
            await call.media.closed.wait()
        assert call.media.close_code == 1000
        with trio.fail_after(5):
            while gw.server.live:  # noqa: ASYNC110  (the server has no "a call ended" event)
                await trio.sleep(0.01)
        assert gw.server.stats.ended_by == {"hangup": 1}
        assert not gw.control.live.calls
