"""Call control for processors: hang up, transfer, and start or stop media streaming on a call
this gateway answered, through the Call Automation SDK (the `control` extra).

Owns: `IncomingCall` (who called whom, and the custom context, from the call's Event Grid
event) and `CallControl`, the handle a processor finds on `Call.control`. Each operation runs
the SDK's sync `CallConnectionClient` in a worker thread (azure-core's Trio transport runs
`requests` in threads as well, so a thread costs nothing more) and is bounded by `timeout`: the
SDK's own connect/read timeouts end the thread, and Trio abandons it at the same deadline, so a
slow or failing ACS leaves no task waiting. Every failure is a `CallControlError`.

Never logs credentials; never acts on a call it was not given.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import trio
from azure.communication.callautomation import (
    CallConnectionClient,
    CommunicationIdentifier,
    CommunicationUserIdentifier,
    PhoneNumberIdentifier,
)
from azure.core.exceptions import AzureError, HttpResponseError

from ..errors import GatewayError

DEFAULT_TIMEOUT = 10.0  # seconds for one REST operation; ACS answers in well under one
PHONE_NUMBER = re.compile(r"^\+[1-9]\d{3,14}$")  # E.164
T = TypeVar("T")

log = logging.getLogger("gateway.control")


class CallControlError(GatewayError):
    """A call-control operation failed: ACS refused it (`status`, `code` from its error
    response), could not be reached, or did not answer within the timeout (`status` None)."""

    def __init__(self, operation: str, message: str, status: int | None = None, code: str = ""):
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.status = status
        self.code = code


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _raw_id(value: Any) -> str | None:
    return str(value["rawId"]) if isinstance(value, Mapping) and "rawId" in value else None


@attrs.frozen
class IncomingCall:
    """What the `IncomingCall` event says about a call: `caller` and `callee` as raw ids
    (`4:+14255550123`, `8:acs:...`), and the custom context's SIP and VoIP headers."""

    caller: str | None
    callee: str | None
    caller_display_name: str = ""
    sip_headers: Mapping[str, str] = attrs.Factory(dict)
    voip_headers: Mapping[str, str] = attrs.Factory(dict)
    server_call_id: str = ""
    correlation_id: str = ""
    incoming_call_context: str = attrs.field(default="", repr=False)  # a credential of sorts

    @classmethod
    def from_event_data(cls, data: Mapping[str, Any]) -> IncomingCall:
        """From an IncomingCall event's `data`; ValueError if it cannot be answered."""
        context = data.get("incomingCallContext")
        if not isinstance(context, str) or not context:
            raise ValueError("IncomingCall without incomingCallContext")
        custom = data.get("customContext")
        custom = custom if isinstance(custom, Mapping) else {}
        return cls(
            caller=_raw_id(data.get("from")),
            callee=_raw_id(data.get("to")),
            caller_display_name=str(data.get("callerDisplayName") or ""),
            sip_headers=_headers(custom.get("sipHeaders")),
            voip_headers=_headers(custom.get("voipHeaders")),
            server_call_id=str(data.get("serverCallId") or ""),
            correlation_id=str(data.get("correlationId") or ""),
            incoming_call_context=context,
        )

    @property
    def custom_context(self) -> Mapping[str, Mapping[str, str]]:
        return {"sipHeaders": self.sip_headers, "voipHeaders": self.voip_headers}


def transfer_target(target: str) -> CommunicationIdentifier:
    """A phone number (`+14255550123` or `4:+14255550123`) or an ACS user id (`8:acs:...`)."""
    number = target.removeprefix("4:")
    if PHONE_NUMBER.match(number):
        return PhoneNumberIdentifier(number)
    if target.startswith("8:acs:") and len(target) > len("8:acs:"):
        return CommunicationUserIdentifier(target)
    raise ValueError(f"not a phone number (E.164) or an ACS user id: {target!r}")


class CallControl:
    """Control of one answered call (`Call.control`). `incoming` is the call's IncomingCall
    data (None for a call this gateway placed). `media_streaming` follows the call's
    MediaStreamingStarted/Stopped/Failed callbacks (`started`, `stopped`, `failed`), wherever
    they arrived (`gateway.control.live`)."""

    def __init__(
        self,
        connection: CallConnectionClient,
        call_connection_id: str,
        incoming: IncomingCall | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._connection = connection
        self.call_connection_id = call_connection_id
        self.incoming = incoming
        self.timeout = timeout
        self.media_streaming: str | None = None

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        call_connection_id: str,
        incoming: IncomingCall | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **sdk_options: Any,
    ) -> CallControl:
        """`sdk_options` go to the SDK client (e.g. `connection_verify`)."""
        connection = CallConnectionClient.from_connection_string(
            connection_string, call_connection_id, **sdk_options
        )
        return cls(connection, call_connection_id, incoming, timeout=timeout)

    @property
    def caller(self) -> str | None:
        return None if self.incoming is None else self.incoming.caller

    @property
    def callee(self) -> str | None:
        return None if self.incoming is None else self.incoming.callee

    @property
    def custom_context(self) -> Mapping[str, Mapping[str, str]]:
        return {} if self.incoming is None else self.incoming.custom_context

    async def hang_up(self, *, for_everyone: bool = True) -> None:
        """End the call (for everyone: terminate), or only leave it (`for_everyone=False`)."""
        wait = self.timeout
        await self._run(
            "hang_up",
            lambda: self._connection.hang_up(
                for_everyone, connection_timeout=wait, read_timeout=wait
            ),
        )

    async def transfer(self, target: str, *, operation_context: str | None = None) -> None:
        """Hand the caller over to `target` (a phone number or an ACS user id); ACS then drops
        this gateway's leg (CallTransferAccepted, CallDisconnected). ValueError for a target
        that is neither, before anything is sent."""
        identifier, wait = transfer_target(target), self.timeout
        await self._run(
            "transfer",
            lambda: self._connection.transfer_call_to_participant(
                identifier,
                operation_context=operation_context,
                connection_timeout=wait,
                read_timeout=wait,
            ),
        )

    async def start_media_streaming(self, *, operation_context: str | None = None) -> None:
        """Ask ACS to open (or reopen) the media WebSocket given when the call was answered."""
        wait = self.timeout
        await self._run(
            "start_media_streaming",
            lambda: self._connection.start_media_streaming(
                operation_context=operation_context, connection_timeout=wait, read_timeout=wait
            ),
        )

    async def stop_media_streaming(self, *, operation_context: str | None = None) -> None:
        """Ask ACS to close the media WebSocket; the call itself goes on."""
        wait = self.timeout
        await self._run(
            "stop_media_streaming",
            lambda: self._connection.stop_media_streaming(
                operation_context=operation_context, connection_timeout=wait, read_timeout=wait
            ),
        )

    async def _run(self, operation: str, request: Callable[[], T]) -> T:
        log.info("%s on call %s", operation, self.call_connection_id)
        try:
            with trio.fail_after(self.timeout):
                return await trio.to_thread.run_sync(request, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise CallControlError(operation, f"no answer within {self.timeout:g} s") from None
        except HttpResponseError as exc:
            code = getattr(exc.error, "code", None) or ""
            message = getattr(exc.error, "message", None) or exc.reason or str(exc)
            raise CallControlError(operation, message, exc.status_code, code) from None
        except AzureError as exc:
            raise CallControlError(operation, f"{type(exc).__name__}: {exc.message}") from None
