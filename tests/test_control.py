"""The control plane: webhooks on the media port, Event Grid's handshakes, routes, per-call
tokens, answering (a fake answerer, and the real SDK against an HTTPS stub), callbacks."""

from __future__ import annotations

import base64
import http.server as http_server
import logging
import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import pytest
import trio
import trio_websocket
import trustme

from gateway.config import Config, Route
from gateway.control import AnswerFailed, AnswerRequest, CallTokens, ControlPlane, SdkAnswerer
from gateway.control.events import IncomingCall
from gateway.control.routes import audio_format, choose, media_target
from gateway.control.tokens import TokenRefused
from gateway.processors import load
from gateway.server.serve import Server, serve
from gateway.testing import simulated_call

SECRET = "s3cret-from-the-subscription"
KEY = b"k" * 32
ECHO = load("echo", {})
ROUTES = (
    Route(name="sales", callee=("+18005550100",), audio_format="pcm24KMono"),
    Route(name="vip", caller=("8:acs:vip",), channel_type="unmixed", dtmf=True),
    Route(name="agent", headers={"X-MS-Custom-Queue": "agent"}, bidirectional=False),
)


def ident(raw: str) -> dict[str, Any]:
    if raw.startswith("4:"):
        return {"kind": "phoneNumber", "rawId": raw, "phoneNumber": {"value": raw[2:]}}
    return {"kind": "communicationUser", "rawId": raw, "communicationUser": {"id": raw}}


def incoming(corr: str, to: str = "4:+18005550199", caller: str = "4:+14255550123", **sip: str):
    return {
        "id": f"ev-{corr}",
        "eventType": "Microsoft.Communication.IncomingCall",
        "subject": "/caller/x/recipient/y",
        "dataVersion": "1.0",
        "data": {
            "to": ident(to),
            "from": ident(caller),
            "serverCallId": "srv",
            "callerDisplayName": "",
            "customContext": {"sipHeaders": sip, "voipHeaders": {}},
            "incomingCallContext": f"ctx-{corr}",
            "correlationId": corr,
        },
    }


class FakeAnswerer:
    def __init__(self, fail: AnswerFailed | None = None, hang: bool = False) -> None:
        self.requests: list[AnswerRequest] = []
        self.fail, self.hang = fail, hang

    async def answer(self, request: AnswerRequest) -> str:
        self.requests.append(request)
        if self.hang:
            await trio.sleep_forever()
        if self.fail is not None:
            raise self.fail
        return f"conn-{len(self.requests)}"

    def control(self, call_connection_id: str, incoming: Any) -> Any:
        return FakeControl(call_connection_id, incoming)


class FakeControl:
    def __init__(self, call_connection_id: str, incoming: Any) -> None:
        self.call_connection_id, self.incoming = call_connection_id, incoming


def plane(answerer: Any = None, **settings: Any) -> ControlPlane:
    config = Config(
        **{
            "routes": ROUTES,
            "public_url": "https://gw.example.com",
            "answer_timeout": 2.0,
            **settings,
        }
    )
    tokens = CallTokens(KEY, config.call_token_lifetime)
    processors = {name: ECHO for name in ("default", "sales", "vip", "agent")}
    return ControlPlane(
        config,
        processors,
        answerer=answerer or FakeAnswerer(),
        tokens=tokens,
        eventgrid_secret=SECRET,
    )


@asynccontextmanager
async def served(control: ControlPlane | None) -> AsyncIterator[Server]:
    config = control.config if control else Config()
    config = Config(**{**_settings(config), "host": "127.0.0.1", "port": 0})
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, config, ECHO, control=control))
        try:
            yield server
        finally:
            server.stop_now()


def _settings(config: Config) -> dict[str, Any]:
    import attrs

    return {f.name: getattr(config, f.name) for f in attrs.fields(Config)}


async def http(server: Server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request; the status, headers and body of the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def post(path: str, body: bytes, *extra: str, method: str = "POST") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "host: gw", "content-type: application/json"]
    head += [f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


EG = f"/eventgrid?secret={SECRET}"

# -- webhooks on the media port --


async def test_event_grid_validation_handshake_answers_the_code():
    validation = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6", "validationUrl": "https://x"},
        }
    ]
    async with served(plane()) as server:
        status, headers, body = await http(
            server, post(EG, orjson.dumps(validation), "aeg-event-type: SubscriptionValidation")
        )
    assert status == 200 and orjson.loads(body) == {"validationResponse": "512d38b6"}
    assert headers["content-type"] == "application/json"


async def test_cloudevents_options_handshake_echoes_the_origin():
    raw = (
        f"OPTIONS {EG} HTTP/1.1\r\nhost: gw\r\nwebhook-request-origin: eventgrid.azure.net\r\n\r\n"
    )
    async with served(plane()) as server:
        status, headers, _ = await http(server, raw.encode())
    assert status == 200 and headers["webhook-allowed-origin"] == "eventgrid.azure.net"


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (post("/eventgrid?secret=wrong", b"[]"), 401, "eventgrid_secret"),
        (post("/eventgrid", b"[]"), 401, "eventgrid_secret"),
        (post(EG, b"{not json"), 400, "bad_body"),
        (post(EG, b"[]"), 400, "bad_body"),
        (post(EG, b'[{"eventType": 3, "data": {}}]'), 400, "bad_body"),
        (post(EG, orjson.dumps([{**incoming("c"), "data": {"to": {}}}])), 400, "bad_body"),
        (post("/nowhere", b"[]"), 404, "not_found"),
        (post(EG, b"[]", method="PUT"), 405, "method"),
        (post(EG, b"[]").replace(b"application/json", b"text/plain"), 415, "content_type"),
    ],
    ids=["secret", "no-secret", "json", "empty", "type", "ids", "path", "method", "type"],
)
async def test_bad_webhooks_get_a_clear_4xx_and_change_nothing(raw, status, reason):
    control = plane()
    async with served(control) as server:
        got, _, _ = await http(server, raw)
        assert got == status
        assert control.stats.refused == {reason: 1}
        assert control.stats.incoming_calls == 0 and server.stats.calls_accepted == 0


async def test_bodies_over_the_cap_are_refused_however_they_arrive():
    control = plane(max_webhook_bytes=1000)
    big = b"[" + b" " * 2000 + b"]"
    chunked = (
        f"POST {EG} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    ).encode() + b"".join(b"%x\r\n%s\r\n" % (100, b" " * 100) for _ in range(15))
    async with served(control) as server:
        assert (await http(server, post(EG, big)))[0] == 413
        assert (await http(server, chunked))[0] == 413
        # a slow body costs its own connection only: other requests are answered meanwhile
        slow = await trio.open_tcp_stream("127.0.0.1", server.port)
        await slow.send_all(post(EG, b"[" + b" " * 500)[:-10])
        assert (await http(server, post(EG, b"{x")))[0] == 400
        await slow.aclose()
    assert server.stats.calls_accepted == 0


async def test_without_a_control_plane_plain_http_still_gets_426():
    async with served(None) as server:
        status, headers, _ = await http(server, post(EG, b"[]"))
    assert status == 405  # POST cannot upgrade
    async with served(None) as server:
        status, headers, _ = await http(server, b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert status == 426 and headers["upgrade"] == "websocket"


# -- routes --


@pytest.mark.parametrize(
    ("event", "route"),
    [
        (incoming("a", to="4:+18005550100"), "sales"),
        (incoming("b", caller="8:acs:vip"), "vip"),
        (incoming("c", **{"X-MS-Custom-Queue": "agent"}), "agent"),
        (incoming("d", **{"X-MS-Custom-Queue": "other"}), "default"),
        (incoming("e"), "default"),
    ],
)
def test_routes_match_callee_caller_and_custom_headers(event, route):
    assert choose(ROUTES, IncomingCall.parse(event["data"])).name == route


def test_a_route_without_criteria_is_the_default():
    routes = (*ROUTES, Route(name="fallback", processor="echo"))
    assert choose(routes, IncomingCall.parse(incoming("x")["data"])).name == "fallback"


def test_media_target_reads_route_and_token():
    assert media_target("/ws/sales?token=abc") == ("sales", "abc")
    assert media_target("/ws/bad%20name") == (None, None)
    assert media_target("/") == (None, None)


async def test_media_only_routes_by_path_and_refuses_unknown_routes():
    seen: list[str] = []

    def tagged(name: str):
        async def run(call):
            seen.append(name)
            await ECHO(call)

        return run

    config = Config(routes=ROUTES)
    control = ControlPlane(config, {n: tagged(n) for n in ("default", "sales", "vip", "agent")})
    async with served(control) as server:
        async with simulated_call(server.urls[0], resource="/ws/sales") as call:
            await call.stream(b"\x01\x00" * 320)
            with trio.fail_after(5):
                await call.wait_for_audio(640)
        async with simulated_call(server.urls[0], resource="/anything") as call:
            await call.stream(b"\x01\x00" * 320)
            with trio.fail_after(5):
                await call.wait_for_audio(640)
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with simulated_call(server.urls[0], resource="/ws/nope"):
                pass
        assert refused.value.status_code == 404
    assert seen == ["sales", "default"]
    assert server.stats.auth_failed == {"route": 1}


# -- tokens --


def test_tokens_refuse_missing_expired_foreign_tampered_and_misused():
    now = [1000.0]
    tokens = CallTokens(KEY, lifetime=60, now=lambda: now[0])
    token = tokens.issue("sales", "corr-1", "media")
    grant = tokens.check(token, "media")
    assert (grant.route, grant.correlation_id) == ("sales", "corr-1")
    reasons = []
    for bad, purpose in [
        (None, "media"),
        ("x.y", "media"),
        (CallTokens(b"o" * 32).issue("sales", "corr-1", "media"), "media"),
        (token[:-2] + "AA", "media"),
        (token, "callback"),
    ]:
        with pytest.raises(TokenRefused) as exc:
            tokens.check(bad, purpose)
        reasons.append(exc.value.reason)
    now[0] += 61
    with pytest.raises(TokenRefused) as exc:
        tokens.check(token, "media")
    assert reasons + [exc.value.reason] == [
        "missing",
        "malformed",
        "foreign",
        "foreign",
        "purpose",
        "expired",
    ]
    with pytest.raises(ValueError):
        CallTokens(b"short")


# -- answering --


async def test_incoming_calls_are_answered_on_their_route_with_signed_urls():
    answerer = FakeAnswerer()
    control = plane(answerer)
    batch = [incoming("c1", to="4:+18005550100"), incoming("c2", caller="8:acs:vip")]
    async with served(control) as server:
        status, _, _ = await http(server, post(EG, orjson.dumps(batch)))
        assert status == 200
        # Event Grid delivers at least once: the same call again is not answered twice
        assert (await http(server, post(EG, orjson.dumps(batch[:1]))))[0] == 200
    assert control.stats.incoming_calls == 3
    assert control.stats.answers == {"answered": 2, "duplicate": 1}
    assert len(control.stats.answer_seconds) == 2
    by_route = {r.route.name: r for r in answerer.requests}
    assert set(by_route) == {"sales", "vip"}
    sales = by_route["sales"]
    assert sales.incoming_call_context == "ctx-c1"
    media, callback = urlsplit(sales.transport_url), urlsplit(sales.callback_url)
    assert (media.scheme, media.netloc, media.path) == ("wss", "gw.example.com", "/ws/sales")
    assert (callback.scheme, callback.path) == ("https", "/callbacks")
    tokens = CallTokens(KEY)
    grant = tokens.check(unquote(parse_qs(media.query)["token"][0]), "media")
    assert (grant.route, grant.correlation_id) == ("sales", "c1")
    assert tokens.check(parse_qs(callback.query)["token"][0], "callback").correlation_id == "c1"


@pytest.mark.parametrize(
    ("answerer", "result"),
    [(FakeAnswerer(AnswerFailed("gone", 404)), "failed"), (FakeAnswerer(hang=True), "timeout")],
)
async def test_answer_failures_are_counted_and_leave_nothing_behind(answerer, result, caplog):
    control = plane(answerer, answer_timeout=0.2)
    async with served(control) as server:
        assert (await http(server, post(EG, orjson.dumps([incoming("f1")]))))[0] == 200
    assert control.stats.answers == {result: 1}
    if result == "failed":
        assert "incomingCallContext expired or it was already answered" in caplog.text


async def test_media_connections_need_a_token_for_their_route_and_call():
    control = plane()
    tokens = CallTokens(KEY)
    good = tokens.issue("sales", "corr-9", "media")
    async with served(control) as server:
        url = server.urls[0]
        async with simulated_call(
            url, resource=f"/ws/sales?token={good}", correlation_id="corr-9"
        ) as call:
            await call.stream(b"\x02\x00" * 320)
            with trio.fail_after(5):
                await call.wait_for_audio(640)
        statuses = []
        for resource, corr in [
            ("/ws/sales", "corr-9"),  # missing
            (f"/ws/vip?token={good}", "corr-9"),  # another route
            (f"/ws/sales?token={good}", "corr-other"),  # another call
            (f"/ws/sales?token={tokens.issue('sales', 'corr-9', 'callback')}", "corr-9"),
            (f"/?token={good}", "corr-9"),
        ]:
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with simulated_call(url, resource=resource, correlation_id=corr):
                    pass
            statuses.append(refused.value.status_code)
    assert statuses == [401, 403, 403, 403, 404]
    assert server.stats.calls_accepted == 1


async def test_media_of_an_answered_call_gets_its_control_handle_and_media_only_none():
    from gateway.control.plane import MediaRoute
    from gateway.wire.handshake import Handshake, Reject

    answerer = FakeAnswerer()
    control = plane(answerer)
    async with served(control) as server:
        body = orjson.dumps([incoming("c7", to="4:+18005550100", X_Team="a")])
        assert (await http(server, post(EG, body)))[0] == 200
    (request,) = answerer.requests
    target = urlsplit(request.transport_url)
    path = f"{target.path}?{target.query}"

    async def media(connection_id: str | None) -> MediaRoute | Reject:
        headers = {"x-ms-call-correlation-id": "c7"}
        if connection_id is not None:
            headers["x-ms-call-connection-id"] = connection_id
        return await control.media(Handshake(unquote(path), headers))

    chosen = await media("conn-1")
    assert isinstance(chosen, MediaRoute) and chosen.name == "sales"
    assert isinstance(chosen.control, FakeControl)
    assert chosen.control.call_connection_id == "conn-1"
    assert chosen.control.incoming.callee == "4:+18005550100"
    assert chosen.control.incoming.custom_context["sipHeaders"] == {"X_Team": "a"}
    assert isinstance(await media(None), MediaRoute)  # the connection id ACS answered with
    refused = await media("conn-of-another-call")
    assert isinstance(refused, Reject) and refused.status == 403
    assert control.stats.refused["media_other_call"] == 1

    media_only = ControlPlane(Config(routes=ROUTES), control.processors)
    chosen = await media_only.media(Handshake("/ws/sales", {"x-ms-call-connection-id": "conn-1"}))
    assert isinstance(chosen, MediaRoute) and chosen.control is None


# -- callbacks --


def callback(kind: str, corr: str, **data: Any) -> dict[str, Any]:
    return {
        "id": "cb",
        "source": "calling/callConnections/conn-1",
        "type": f"Microsoft.Communication.{kind}",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "data": {"callConnectionId": "conn-1", "correlationId": corr, **data},
    }


async def test_callbacks_are_counted_and_streaming_failures_explained(caplog):
    caplog.set_level(logging.INFO, "gateway.control")
    control = plane()
    token = CallTokens(KEY).issue("sales", "corr-5", "callback")
    failed = callback(
        "MediaStreamingFailed",
        "corr-5",
        resultInformation={"code": 400, "subCode": 8581, "message": "Transport url is not valid"},
        mediaStreamingUpdate={"mediaStreamingStatusDetails": "initialWebSocketConnectionFailed"},
    )
    events = [callback("CallConnected", "corr-5"), failed, callback("CallDisconnected", "corr-5")]
    async with served(control) as server:
        status, _, _ = await http(server, post(f"/callbacks?token={token}", orjson.dumps(events)))
    assert status == 200
    assert control.stats.callbacks == {
        "CallConnected": 1,
        "MediaStreamingFailed": 1,
        "CallDisconnected": 1,
    }
    assert "not reachable over wss:// from the internet" in caplog.text
    assert "wss://gw.example.com/ws/sales" in caplog.text


async def test_callbacks_without_the_right_token_are_refused_and_change_nothing():
    control = plane()
    tokens = CallTokens(KEY)
    body = orjson.dumps([callback("CallConnected", "corr-5")])
    cases = [
        ("/callbacks", 401),
        (f"/callbacks?token={tokens.issue('sales', 'corr-6', 'callback')}", 403),
        (f"/callbacks?token={tokens.issue('sales', 'corr-5', 'media')}", 403),
        (f"/callbacks?token={CallTokens(b'z' * 32).issue('sales', 'corr-5', 'callback')}", 403),
    ]
    async with served(control) as server:
        got = [(await http(server, post(path, body)))[0] for path, _ in cases]
        metrics = server.metrics.exposition()[0].decode()
    assert got == [status for _, status in cases]
    assert control.stats.callbacks == {}
    assert sum(control.stats.refused.values()) == 4
    assert 'acs_gateway_control_refused_total{reason="callback_missing"} 1.0' in metrics
    assert 'acs_gateway_control_refused_total{reason="callback_foreign"} 1.0' in metrics


# -- the real SDK against an HTTPS stub --


class _Stub(http_server.BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802  # http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        self.requests.append((self.path, dict(self.headers), body))
        reply = orjson.dumps({"callConnectionId": "conn-sdk", "serverCallId": "srv"})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def acs_stub(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    _Stub.requests = []
    server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield f"https://127.0.0.1:{server.server_address[1]}/", str(ca_file)
    server.shutdown()
    server.server_close()


async def test_the_sdk_answer_carries_the_routes_media_streaming_options(acs_stub):
    endpoint, ca_file = acs_stub
    key = base64.b64encode(b"a" * 32).decode()
    environ = {"ACS_CONNECTION_STRING": f"endpoint={endpoint};accesskey={key}"}
    config = Config(public_url="https://gw.example.com", answer_timeout=5.0, routes=ROUTES)
    answerer = SdkAnswerer.from_config(config, environ, connection_verify=ca_file)
    request = AnswerRequest(
        "ctx-1", "https://gw/cb?token=t1", "wss://gw/ws/vip?token=t2", ROUTES[1], "pcm16KMono"
    )
    assert await answerer.answer(request) == "conn-sdk"
    ((path, headers, body),) = _Stub.requests
    assert path.startswith("/calling/callConnections:answer?api-version=")
    assert headers["Authorization"].startswith("HMAC-SHA256 SignedHeaders=x-ms-date;host;")
    sent = orjson.loads(body)
    assert sent["incomingCallContext"] == "ctx-1"
    assert sent["callbackUri"] == "https://gw/cb?token=t1"
    assert sent["mediaStreamingOptions"] == {
        "transportType": "websocket",
        "transportUrl": "wss://gw/ws/vip?token=t2",
        "contentType": "audio",
        "audioChannelType": "unmixed",
        "startMediaStreaming": True,
        "enableBidirectional": True,
        "audioFormat": "pcm16KMono",
        "enableDtmfTones": True,
    }
    assert "accesskey" not in repr(answerer.__dict__).lower()


def test_answering_without_credentials_is_a_config_error():
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="ACS_CONNECTION_STRING"):
        SdkAnswerer.from_config(Config(public_url="https://gw.example.com"), {})


def test_a_media_only_install_imports_without_the_azure_packages():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['azure'] = None\n"
        "import gateway.cli, gateway.control\n"
        "from gateway.config import Config\n"
        "from gateway.control import plane\n"
        "from gateway.processors import load\n"
        "assert plane.from_config(Config(), {}, load) is None\n"
        "try:\n"
        "    plane.from_config(Config(public_url='https://g.example'), "
        "{'ACS_GATEWAY_CALL_TOKEN_KEY': 'k' * 32}, load)\n"
        "except Exception as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'acs-media-gateway[control]'" in out.stdout


def test_a_route_asks_acs_for_its_processors_own_rate_unless_it_names_one():
    assert audio_format(Route(name="a"), "echo") == "pcm16KMono"  # ACS's default
    assert audio_format(Route(name="a"), "realtime") == "pcm24KMono"  # the top-level processor
    assert audio_format(Route(name="a", processor="realtime"), "echo") == "pcm24KMono"
    assert audio_format(Route(name="a", processor="echo"), "realtime") == "pcm16KMono"
    named = Route(name="a", processor="realtime", audio_format="pcm16KMono")
    assert audio_format(named, "echo") == "pcm16KMono"  # the route's own word wins
