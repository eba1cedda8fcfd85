"""A fake ACS Call Automation control plane: everything ACS does around a call's media stream,
on loopback, for tests and the simulator.

Owns: an HTTPS server (a throwaway CA) with the part of the Call Automation REST API the gateway
uses (answer, create a call, get, hang up, terminate, transfer, start/stop media streaming),
each request's HMAC signature checked as ACS checks it (401 otherwise); Event Grid delivery of
`IncomingCall` after the subscription validation handshake; callbacks (CloudEvents, one
ACS-style JWT each) to the `callbackUri` given in the answer or createCall; and the media
WebSocket, opened with the simulated ACS peer to the request's `transportUrl` when streaming
starts. Knobs make it misbehave as ACS can: refuse answers or calls placed, fail streaming
(400/8581), drop callbacks, delay its REST replies, and hang up from the caller's side.

Never reaches beyond loopback, never blocks Trio. The REST handlers live in `fake_acs_rest`
(createCall in `fake_acs_dial`), the media WebSocket in `fake_acs_media`.

    async with open_fake_acs() as acs:
        await acs.subscribe(webhook_url)          # Event Grid's validation handshake
        call = await acs.ring(to="+18005550100", caller="+14255550123")
        ... the application answers with `acs.connection_string` (trust `acs.ca_path`) ...
        await call.media_connected.wait()
        await call.media.stream(speech(16000))
        await acs.hang_up(call)                    # the caller hangs up
"""

from __future__ import annotations

import base64
import secrets
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import orjson
import trio

from . import acs_events
from .acs_auth import AcsTokenIssuer, bearer
from .http_server import serve_http
from .peer import SimulatedCall

if TYPE_CHECKING:
    import trustme  # a test dependency: imported only when a fake ACS runs

RESOURCE_ID = "5a0b2a3c-0000-4000-8000-00000000acab"  # the immutable id: tokens' audience
CALLBACK_TOKEN_LIFETIME = 300  # ACS's callback tokens live five minutes
WEBHOOK_TIMEOUT = 30.0  # Event Grid waits this long for the validation answer
TRANSPORT_FAILED = (400, 8581, "Transport url is not valid or web socket server is not operational")


class FakeAcsError(Exception):
    """The application under test did not do what ACS expects (e.g. failed the validation)."""


@attrs.define
class Delivery:
    """One post to the application: `kind` is the event type without its prefix; `status` is the
    application's reply (None: dropped on purpose, or the post failed: see `error`)."""

    kind: str
    body: Any
    status: int | None = None
    error: str | None = None
    reply: bytes = b""


@attrs.define
class RestRequest:
    """One REST request the fake received, and what it answered."""

    method: str
    target: str
    status: int
    refusal: str | None = None  # why the signature was refused


@attrs.define(eq=False)
class FakeCall:
    """One call placed to the application. Its state moves ringing -> connected ->
    disconnected; `answer` is the answer request's body as sent."""

    to: str
    caller: str  # for a call the application placed: the caller id it showed, or its source
    call_connection_id: str
    server_call_id: str
    correlation_id: str
    incoming_call_context: str
    event: dict[str, Any]
    state: str = "ringing"
    answer: dict[str, Any] | None = None  # or the createCall body, for a call placed
    direction: str = "inbound"  # "outbound": the application placed it (`fake_acs_dial`)
    delivery: Delivery | None = None  # the IncomingCall post
    callbacks: list[Delivery] = attrs.Factory(list)
    transfers: list[dict[str, Any]] = attrs.Factory(list)  # transfer request bodies
    media: SimulatedCall | None = None
    media_sessions: int = 0  # media WebSockets opened so far
    answered: trio.Event = attrs.Factory(trio.Event)
    # Trio times: IncomingCall posted, answer request received, media WebSocket open
    rung_at: float | None = None
    answered_at: float | None = None
    media_connected_at: float | None = None
    media_connected: trio.Event = attrs.Factory(trio.Event)
    disconnected: trio.Event = attrs.Factory(trio.Event)
    stop_media: trio.Event = attrs.Factory(trio.Event)
    _posted: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)

    @property
    def callback_uri(self) -> str | None:
        return None if self.answer is None else self.answer.get("callbackUri")

    @property
    def media_options(self) -> dict[str, Any]:
        return {} if self.answer is None else dict(self.answer.get("mediaStreamingOptions") or {})

    def callback_kinds(self) -> list[str]:
        return [d.kind for d in self.callbacks]

    async def wait_for_callback(self, kind: str) -> Delivery:
        """The first callback of `kind` (posted or dropped), once there is one."""
        while True:
            for delivery in self.callbacks:
                if delivery.kind == kind:
                    return delivery
            await self._posted.park()

    def record(self, delivery: Delivery) -> None:
        self.callbacks.append(delivery)
        self._posted.unpark_all()


@attrs.define(eq=False)
class FakeAcs:
    """A running fake ACS. Set the knobs at any time; they apply to what happens next."""

    endpoint: str
    access_key: str
    ca: trustme.CA
    ca_path: str  # PEM of the throwaway CA: an SDK client's `connection_verify`
    issuer: AcsTokenIssuer
    resource_id: str
    client_ssl: ssl.SSLContext | None  # trusted for webhooks, callbacks and wss:// media
    nursery: trio.Nursery
    http: httpx.AsyncClient
    calls: dict[str, FakeCall] = attrs.Factory(dict)  # by call connection id
    subscriptions: list[str] = attrs.Factory(list)
    requests: list[RestRequest] = attrs.Factory(list)
    # knobs
    answer_status: int = 200  # anything else refuses answers with that status
    fail_streaming: bool = False  # MediaStreamingFailed 400/8581 instead of connecting
    drop_callbacks: bool = False
    rest_delay: float = 0.0  # seconds before each REST reply
    dial_status: int = 201  # anything else refuses createCall with that status
    ring_seconds: float = 0.0  # a placed call rings this long before the callee picks up

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    @property
    def sdk_options(self) -> dict[str, Any]:
        """Keyword arguments for an SDK client so it trusts the fake's certificate."""
        return {"connection_verify": self.ca_path}

    # -- Event Grid --

    async def subscribe(self, url: str, name: str = "gateway") -> None:
        """Validate `url` as Event Grid does before it delivers events there; raises
        FakeAcsError unless the application echoes the code back with 200."""
        code = secrets.token_hex(16)
        body = acs_events.validation_event(code, f"{self.endpoint}/validate/{code}")
        headers = {"aeg-event-type": "SubscriptionValidation", "aeg-subscription-name": name}
        delivery = await self._post(url, "SubscriptionValidationEvent", body, headers)
        if delivery.status != 200:
            raise FakeAcsError(f"validation of {url} answered {delivery.status} {delivery.error}")
        try:
            answer = orjson.loads(delivery.reply)
        except orjson.JSONDecodeError as exc:
            raise FakeAcsError(f"validation answer is not JSON: {exc}") from None
        if not isinstance(answer, dict) or answer.get("validationResponse") != code:
            raise FakeAcsError(f"validation answer does not echo the code: {answer!r}")
        self.subscriptions.append(url)

    async def ring(
        self,
        to: str = "+18005550100",
        caller: str = "+14255550123",
        *,
        display_name: str = "",
        sip_headers: Mapping[str, str] | None = None,
        voip_headers: Mapping[str, str] | None = None,
    ) -> FakeCall:
        """Place a call: post its IncomingCall event to every subscribed webhook."""
        call = FakeCall(
            to=to,
            caller=caller,
            call_connection_id=str(uuid.uuid4()),
            server_call_id=base64.urlsafe_b64encode(secrets.token_bytes(24)).decode(),
            correlation_id=str(uuid.uuid4()),
            incoming_call_context=secrets.token_urlsafe(48),
            event={},
        )
        call.event = acs_events.incoming_call_event(
            to=to,
            caller=caller,
            incoming_call_context=call.incoming_call_context,
            server_call_id=call.server_call_id,
            correlation_id=call.correlation_id,
            caller_display_name=display_name,
            sip_headers=sip_headers,
            voip_headers=voip_headers,
        )
        self.calls[call.call_connection_id] = call
        call.rung_at = trio.current_time()
        headers = {"aeg-event-type": "Notification", "aeg-subscription-name": "gateway"}
        for url in self.subscriptions:
            call.delivery = await self._post(url, "IncomingCall", [call.event], headers)
        return call

    # -- the call's life --

    async def hang_up(self, call: FakeCall) -> None:
        """The caller hangs up: the media socket closes, then CallDisconnected."""
        await self.disconnect(call)

    async def disconnect(self, call: FakeCall, operation_context: str | None = None) -> None:
        if call.state == "disconnected":
            return
        call.state = "disconnected"
        call.stop_media.set()
        await self.callback(call, "CallDisconnected", operation_context=operation_context)
        call.disconnected.set()

    async def callback(self, call: FakeCall, kind: str, **data: Any) -> None:
        """Post one callback event to the call's callbackUri (unless callbacks are dropped)."""
        event = acs_events.callback_event(
            kind,
            call_connection_id=call.call_connection_id,
            server_call_id=call.server_call_id,
            correlation_id=call.correlation_id,
            **data,
        )
        uri = call.callback_uri
        if uri is None or self.drop_callbacks:
            call.record(Delivery(kind, [event], None, "dropped"))
            return
        token = self.issuer.token(audience=self.resource_id, lifetime=CALLBACK_TOKEN_LIFETIME)
        call.record(await self._post(uri, kind, [event], dict([bearer(token)])))

    async def run_media(self, call: FakeCall) -> None:
        """Open the media WebSocket as ACS does and keep it until streaming stops, the call
        ends, or the gateway closes it (`fake_acs_media`)."""
        from .fake_acs_media import run_media

        await run_media(self, call)

    async def _post(self, url: str, kind: str, body: Any, headers: Mapping[str, str]) -> Delivery:
        delivery = Delivery(kind, body)
        try:
            response = await self.http.post(
                url,
                content=orjson.dumps(body),
                headers={"content-type": "application/json", **headers},
            )
        except httpx.HTTPError as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
            return delivery
        delivery.status = response.status_code
        delivery.reply = response.content
        return delivery


@asynccontextmanager
async def open_fake_acs(
    *,
    issuer: AcsTokenIssuer | None = None,
    resource_id: str = RESOURCE_ID,
    client_ssl: ssl.SSLContext | None = None,
    port: int = 0,
    access_key: str | None = None,
) -> AsyncIterator[FakeAcs]:
    """Run a fake ACS on 127.0.0.1 (`port`, 0: any free one) over HTTPS with a throwaway CA.
    `issuer` signs the callback and media tokens (audience `resource_id`); `client_ssl` is
    what the fake trusts when it calls the application over TLS (webhooks, callbacks, wss://);
    `access_key` (base64; default a random one) is the key of its connection string."""
    import trustme  # the `test` extra: `import gateway.testing` must work without it

    from .fake_acs_rest import handler  # the REST handlers need FakeAcs defined

    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ssl)
    access_key = access_key or base64.b64encode(secrets.token_bytes(32)).decode()
    with tempfile.TemporaryDirectory(prefix="fake-acs-") as folder:
        ca_path = str(Path(folder) / "ca.pem")
        ca.cert_pem.write_to_path(ca_path)
        verify: ssl.SSLContext | bool = client_ssl if client_ssl is not None else True
        async with httpx.AsyncClient(verify=verify, timeout=WEBHOOK_TIMEOUT) as http:
            async with trio.open_nursery() as nursery:
                acs = FakeAcs(
                    endpoint="",
                    access_key=access_key,
                    ca=ca,
                    ca_path=ca_path,
                    issuer=issuer or AcsTokenIssuer(),
                    resource_id=resource_id,
                    client_ssl=client_ssl,
                    nursery=nursery,
                    http=http,
                )
                server = await nursery.start(
                    lambda task_status: serve_http(
                        handler(acs), ssl_context=server_ssl, port=port, task_status=task_status
                    )
                )
                acs.endpoint = server.url
                try:
                    yield acs
                finally:
                    nursery.cancel_scope.cancel()
