"""The fake ACS's media WebSocket: what ACS does once a call's streaming starts.

Owns: opening the media WebSocket with the simulated ACS peer to the `transportUrl` the answer
(or createCall) gave, with ACS's headers and a token of the fake's issuer; keeping it until
streaming stops, the call ends or the gateway closes it; and the callbacks that go with it
(MediaStreamingStarted, MediaStreamingStopped, MediaStreamingFailed when it cannot connect or
`acs.fail_streaming` is set). Never: decides when streaming starts (`fake_acs_rest`).
"""

from __future__ import annotations

import trio
from trio_websocket import HandshakeError

from . import acs_events
from .acs_auth import bearer
from .fake_acs import TRANSPORT_FAILED, FakeAcs, FakeCall
from .peer import simulated_call


async def run_media(acs: FakeAcs, call: FakeCall) -> None:
    """Open the media WebSocket as ACS does and keep it until streaming stops, the call
    ends, or the gateway closes it. A connection that fails earns MediaStreamingFailed."""
    options = call.media_options
    url = options.get("transportUrl")
    if call.state != "connected":
        return
    if not url:
        await streaming_failed(acs, call, "streamUrlMissing")
        return
    if acs.fail_streaming:
        await streaming_failed(acs, call, "streamConnectionUnsuccessful")
        return
    rate = 24000 if str(options.get("audioFormat", "")).lower() == "pcm24kmono" else 16000
    token = acs.issuer.token(audience=acs.resource_id)
    call.stop_media = trio.Event()
    connected = False
    try:
        async with simulated_call(
            url,
            sample_rate=rate,
            connection_id=call.call_connection_id,
            correlation_id=call.correlation_id,
            headers=[bearer(token)],
            ssl_context=acs.client_ssl if url.startswith("wss:") else None,
        ) as media:
            connected = True
            call.media = media
            call.media_sessions += 1
            if call.media_connected_at is None:
                call.media_connected_at = trio.current_time()
            call.media_connected.set()
            await acs.callback(
                call,
                "MediaStreamingStarted",
                result=(200, 0, "Action completed successfully."),
                mediaStreamingUpdate=acs_events.streaming_update(
                    "mediaStreamingStarted", "subscriptionStarted"
                ),
            )
            async with trio.open_nursery() as watch:
                watch.start_soon(_cancel_when, media.closed, watch.cancel_scope)
                await call.stop_media.wait()
                watch.cancel_scope.cancel()
    except (OSError, HandshakeError, trio.BrokenResourceError, ExceptionGroup):
        if connected:
            raise
        await streaming_failed(acs, call, "initialWebSocketConnectionFailed")
        return
    if call.state != "disconnected":
        await acs.callback(
            call,
            "MediaStreamingStopped",
            result=(200, 0, "Action completed successfully."),
            mediaStreamingUpdate=acs_events.streaming_update(
                "mediaStreamingStopped", "subscriptionStopped"
            ),
        )


async def streaming_failed(acs: FakeAcs, call: FakeCall, details: str) -> None:
    await acs.callback(
        call,
        "MediaStreamingFailed",
        result=TRANSPORT_FAILED,
        mediaStreamingUpdate=acs_events.streaming_update("mediaStreamingFailed", details),
    )


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
