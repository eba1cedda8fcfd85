"""A minimal Call Automation application for the fake-ACS tests: an Event Grid webhook that
passes the validation handshake and answers each IncomingCall through the real SDK (sync client
in a thread), and a callback endpoint that records what ACS posts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from gateway.testing import FakeAcs
from gateway.testing.http_server import HttpRequest, HttpResponse, serve_http

callautomation: Any
try:
    from azure.communication import callautomation
except ImportError:  # pragma: no cover  (the tests importorskip it)
    callautomation = None


def media_options(url: str, start: bool = True, rate: int = 16000) -> Any:
    audio_format = callautomation.AudioFormat.PCM24_K_MONO if rate == 24000 else None
    return callautomation.MediaStreamingOptions(
        transport_url=url,
        transport_type=callautomation.StreamingTransportType.WEBSOCKET,
        content_type=callautomation.MediaStreamingContentType.AUDIO,
        audio_channel_type=callautomation.MediaStreamingAudioChannelType.MIXED,
        start_media_streaming=start,
        enable_bidirectional=True,
        audio_format=audio_format or callautomation.AudioFormat.PCM16_K_MONO,
    )


@attrs.define
class App:
    url: str = ""
    validations: int = 0
    incoming: list[dict[str, Any]] = attrs.Factory(list)
    callbacks: list[tuple[str | None, dict[str, Any]]] = attrs.Factory(list)  # (auth, event)
    answer_errors: list[BaseException] = attrs.Factory(list)
    answered: list[Any] = attrs.Factory(list)  # CallConnectionProperties

    def callback_types(self) -> list[str]:
        return [event["type"].rsplit(".", 1)[-1] for _, event in self.callbacks]


@asynccontextmanager
async def open_app(
    acs: FakeAcs, transport_url: str | None, *, start: bool = True, rate: int = 16000
) -> AsyncIterator[App]:
    """Serve the app on 127.0.0.1 and subscribe it to `acs`; it answers each call with media
    streaming to `transport_url` (None: answers without media streaming)."""
    app = App()
    client = callautomation.CallAutomationClient.from_connection_string(
        acs.connection_string, **acs.sdk_options
    )

    def answer(event: dict[str, Any]) -> None:
        media = None if transport_url is None else media_options(transport_url, start, rate)
        try:
            props = client.answer_call(
                event["data"]["incomingCallContext"],
                f"{app.url}/callbacks",
                media_streaming=media,
            )
        except Exception as exc:  # noqa: BLE001  (recorded for the test to assert on)
            app.answer_errors.append(exc)
        else:
            app.answered.append(props)

    async def handle(request: HttpRequest) -> HttpResponse:
        events = orjson.loads(request.body)
        if request.target == "/events":
            if request.headers.get("aeg-event-type") == "SubscriptionValidation":
                app.validations += 1
                code = events[0]["data"]["validationCode"]
                return HttpResponse(200, orjson.dumps({"validationResponse": code}))
            for event in events:
                if event["eventType"] == "Microsoft.Communication.IncomingCall":
                    app.incoming.append(event)
                    nursery.start_soon(trio.to_thread.run_sync, answer, event)
            return HttpResponse(200)
        for event in events:
            app.callbacks.append((request.headers.get("authorization"), event))
        return HttpResponse(200)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, handle)
        app.url = server.url
        await acs.subscribe(f"{app.url}/events")
        yield app
        nursery.cancel_scope.cancel()
