"""Answering and placing calls through the official SDK, `azure-communication-callautomation`.

Owns: the answer request (`AnswerRequest`: the `MediaStreamingOptions` of a route), the
createCall request of an outbound call (`DialRequest`), the SDK client and its credentials,
which the control handles of the calls it answered share (`SdkAnswerer.control`). Never:
routing or tokens (`gateway.control.answering` makes the URLs).

The SDK's sync client runs in `trio.to_thread.run_sync`: its async client needs an asyncio
transport (aiohttp), and azure-core's Trio transport is itself requests in a worker thread, so
the thread is the same cost with one dependency less. Each request gets `timeout` seconds per
connect and read and no retry (the plane's deadline is the caller's); the thread is abandoned
if the plane gives up first, and ends by its own timeouts.

The SDK and azure-identity are imported here only, when answering is configured: a media-only
install has neither (`pip install 'acs-media-gateway[control]'` brings them).

Credentials: the connection string in `$ACS_CONNECTION_STRING` (never logged), or, with
`acs_endpoint` set, Microsoft Entra ID through `DefaultAzureCredential` (managed identity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from ..call.interface import CallControlHandle
from ..config import Config, Route
from ..errors import ConfigError

if TYPE_CHECKING:
    from .calls import IncomingCall

CONNECTION_STRING_ENV: Final = "ACS_CONNECTION_STRING"


@attrs.frozen
class AnswerRequest:
    incoming_call_context: str = attrs.field(repr=False)
    callback_url: str = attrs.field(repr=False)  # carries the call's token
    transport_url: str = attrs.field(repr=False)  # likewise
    route: Route
    audio_format: str  # the route's, or its processor's own (`routes.audio_format`)


@attrs.frozen
class DialRequest:
    """An outbound call: `target` and `caller_id` are SDK identifiers (`gateway.control.dial`)."""

    target: Any
    callback_url: str = attrs.field(repr=False)  # carries the call's token
    transport_url: str = attrs.field(repr=False)  # likewise
    route: Route
    audio_format: str  # the route's, or its processor's own (`routes.audio_format`)
    caller_id: Any = None  # a PhoneNumberIdentifier: what a phone shows (PSTN needs one)
    display_name: str | None = None


class StreamingTarget(Protocol):
    """What media streaming needs of a request: where to stream, and the route's options."""

    @property
    def transport_url(self) -> str: ...

    @property
    def route(self) -> Route: ...

    @property
    def audio_format(self) -> str: ...


class AnswerFailed(Exception):
    """ACS refused the answer, or could not be reached; `code` is the HTTP status if any."""

    def __init__(self, message: str, code: int | None = None, sub_code: int | None = None):
        super().__init__(message)
        self.code = code
        self.sub_code = sub_code


class Answerer(Protocol):
    async def answer(self, request: AnswerRequest) -> str:
        """Answer; the call connection id. Raises `AnswerFailed`."""
        ...

    def control(self, call_connection_id: str, incoming: IncomingCall | None) -> CallControlHandle:
        """The control handle of an answered call, with the same credentials."""
        ...


def media_streaming_options(request: StreamingTarget) -> Any:
    """The SDK's `MediaStreamingOptions` for a route (docs/protocol.md lists the wire keys)."""
    from azure.communication.callautomation import MediaStreamingOptions

    route = request.route
    return MediaStreamingOptions(
        transport_url=request.transport_url,
        transport_type="websocket",
        content_type="audio",
        audio_channel_type=route.channel_type,
        start_media_streaming=True,
        enable_bidirectional=route.bidirectional,
        audio_format=request.audio_format,
        enable_dtmf_tones=route.dtmf,
    )


class SdkAnswerer:
    """Answers with a `CallAutomationClient`; `client_options` go to its pipeline (tests pass
    `connection_verify` with their CA)."""

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    @classmethod
    def from_config(
        cls, config: Config, environ: Mapping[str, str], **client_options: Any
    ) -> SdkAnswerer:
        try:
            from azure.communication.callautomation import CallAutomationClient
        except ImportError:
            raise ConfigError(
                "answering or placing calls needs the control extra: "
                "pip install 'acs-media-gateway[control]'"
            ) from None
        if config.acs_endpoint is not None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
            return cls(
                CallAutomationClient(config.acs_endpoint, credential, **client_options),
                config.answer_timeout,
            )
        secret = environ.get(CONNECTION_STRING_ENV)
        if not secret:
            raise ConfigError(
                f"public_url is set: answering needs ${CONNECTION_STRING_ENV} "
                "(or acs_endpoint for Microsoft Entra ID)"
            )
        try:
            client = CallAutomationClient.from_connection_string(secret, **client_options)
        except ValueError:  # its message may quote the string: never shown
            raise ConfigError(f"${CONNECTION_STRING_ENV} is not an ACS connection string") from None
        return cls(client, config.answer_timeout)

    async def answer(self, request: AnswerRequest) -> str:
        return await trio.to_thread.run_sync(self._answer, request, abandon_on_cancel=True)

    def control(self, call_connection_id: str, incoming: IncomingCall | None) -> CallControlHandle:
        from .calls import CallControl  # the SDK is here: answering needs it

        connection = self._client.get_call_connection(call_connection_id)
        return CallControl(connection, call_connection_id, incoming, timeout=self._timeout)

    async def dial(self, request: DialRequest) -> tuple[str, str]:
        """Place a call; its call connection id and correlation id. Raises `AnswerFailed`."""
        return await trio.to_thread.run_sync(self._dial, request, abandon_on_cancel=True)

    def _dial(self, request: DialRequest) -> tuple[str, str]:
        result = self._call(
            self._client.create_call,
            request.target,
            request.callback_url,
            source_caller_id_number=request.caller_id,
            source_display_name=request.display_name,
            media_streaming=media_streaming_options(request),
            operation_context=f"route:{request.route.name}",
        )
        return str(result.call_connection_id), str(result.correlation_id or "")

    def _answer(self, request: AnswerRequest) -> str:
        result = self._call(
            self._client.answer_call,
            request.incoming_call_context,
            request.callback_url,
            media_streaming=media_streaming_options(request),
            operation_context=f"route:{request.route.name}",
        )
        return str(result.call_connection_id)

    def _call(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One SDK request with our timeouts and no retry (the plane's deadline is the
        caller's); its failure as `AnswerFailed`."""
        from azure.core.exceptions import AzureError, HttpResponseError

        try:
            return operation(
                *args,
                **kwargs,
                connection_timeout=self._timeout,
                read_timeout=self._timeout,
                retry_total=0,
            )
        except HttpResponseError as exc:
            raise AnswerFailed(_first_line(exc), exc.status_code) from None
        except AzureError as exc:
            raise AnswerFailed(_first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
