"""Outbound calls: a call placed through the official SDK with media streaming to this
gateway, so that the running daemon gets its callbacks and media as for a call it answered.

Owns: reading the target (a phone number in E.164, or an ACS user id), the caller id a phone
sees (`dial_caller_id`, or the caller's own), and the createCall request: the route's
`MediaStreamingOptions` and the callback and transport URLs on `public_url`, each with a signed
token (`gateway.control.answering.call_urls`, as an answer makes them). Never: serves anything
or keeps state. It runs wherever the dialling happens (`acs-media-gateway dial`, an
application's process) and shares with the daemon only the configuration and the replicas'
call-token key: the tokens say the rest.

A placed call's tokens name a dial id (`dial:<uuid>`) where an answered call's name its
correlation id, which ACS assigns only when it creates the call (`CallGrant.dialled`).

    dialer = Dialer.from_config(config, os.environ)
    call = await dialer.dial("+14255550123", route="agent")
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from ..config import Config
from ..config_settings import PHONE_NUMBER
from ..errors import ConfigError, GatewayError
from . import routes as routing
from .answer import AnswerFailed, DialRequest, SdkAnswerer
from .answering import call_urls
from .diagnostics import explain
from .tokens import DIAL_PREFIX, CallTokens

log = logging.getLogger("gateway.control")


class DialFailed(GatewayError):
    """ACS refused to place the call, or could not be reached (`status` None); the message
    says the likely cause and the fix."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class DialedCall:
    """A call ACS accepted to place: it rings now; its callbacks and media go to the gateway."""

    call_connection_id: str
    correlation_id: str
    dial_id: str  # what the call's tokens name
    target: str
    route: str


class Dialer:
    """Places calls with one SDK client (`from_config`: the daemon's credentials)."""

    def __init__(self, config: Config, client: SdkAnswerer, tokens: CallTokens) -> None:
        self.config, self.client, self.tokens = config, client, tokens

    @classmethod
    def from_config(
        cls, config: Config, environ: Mapping[str, str] | None = None, **client_options: Any
    ) -> Dialer:
        """ConfigError without the control plane (`public_url`, the credentials, the
        call-token key); `client_options` go to the SDK client (`connection_verify`)."""
        if config.public_url is None:
            raise ConfigError(
                "dialling needs the control plane: set public_url (the gateway's public https:// "
                "URL, where ACS sends the call's callbacks and media); see docs/answering.md"
            )
        from . import plane  # the plane's key rules; imported late: it loads the server

        environ = os.environ if environ is None else environ
        tokens = plane.call_tokens(config, environ)
        return cls(config, SdkAnswerer.from_config(config, environ, **client_options), tokens)

    async def dial(
        self,
        target: str,
        route: str = routing.DEFAULT_ROUTE,
        *,
        caller_id: str | None = None,
        display_name: str | None = None,
    ) -> DialedCall:
        """Place a call to `target` whose media runs `route`. ValueError for an unknown route,
        a target that is neither a phone number nor an ACS user id, or a phone target without
        a caller id; DialFailed when ACS refuses. Returns once ACS accepted the request (the
        call rings; CallConnected comes to the gateway)."""
        from azure.communication.callautomation import PhoneNumberIdentifier

        from .calls import transfer_target

        routes = routing.all_routes(self.config.routes)
        if route not in routes:
            raise ValueError(f"no route {route!r}; the routes are {', '.join(sorted(routes))}")
        identifier = transfer_target(target)
        caller = caller_id or self.config.dial_caller_id
        if isinstance(identifier, PhoneNumberIdentifier) and caller is None:
            raise ValueError(
                f"dialling the phone number {target} needs a caller id: one of the ACS "
                "resource's numbers, as dial_caller_id or --caller-id"
            )
        if caller is not None and not PHONE_NUMBER.fullmatch(caller):
            raise ValueError(f"the caller id must be a phone number in E.164, not {caller!r}")
        dial_id = f"{DIAL_PREFIX}{uuid.uuid4()}"
        callback, media = call_urls(self.config, self.tokens, route, dial_id)
        request = DialRequest(
            identifier,
            callback,
            media,
            routes[route],
            routing.audio_format(routes[route], self.config.processor),
            caller_id=None if caller is None else PhoneNumberIdentifier(caller),
            display_name=display_name,
        )
        log.info("dialling %s on route %s (%s)", identifier.raw_id, route, dial_id)
        try:
            connection_id, correlation_id = await self.client.dial(request)
        except AnswerFailed as exc:
            why = _explain(exc)
            log.warning("dialling %s failed (%s): %s. %s", identifier.raw_id, exc.code, exc, why)
            raise DialFailed(f"ACS refused the call ({exc.code}): {exc}. {why}", exc.code) from None
        log.info(
            "dialled %s: connection %s, correlation %s (%s)",
            identifier.raw_id,
            connection_id,
            correlation_id,
            dial_id,
        )
        return DialedCall(connection_id, correlation_id, dial_id, identifier.raw_id, route)


def _explain(exc: AnswerFailed) -> str:
    if exc.code == 400:
        return (
            "ACS refused the request: check the target, and that the caller id is one of the "
            "ACS resource's phone numbers"
        )
    if exc.code == 403:
        return (
            "ACS forbade the call: the caller id is not a number of this ACS resource, or the "
            "identity lacks a role on it"
        )
    return explain(exc.code, exc.sub_code)


async def dial(
    config: Config,
    target: str,
    route: str = routing.DEFAULT_ROUTE,
    *,
    environ: Mapping[str, str] | None = None,
    caller_id: str | None = None,
    display_name: str | None = None,
    **client_options: Any,
) -> DialedCall:
    """Place one call (see `Dialer.dial`) with the credentials `config` and `environ` name."""
    dialer = Dialer.from_config(config, environ, **client_options)
    return await dialer.dial(target, route, caller_id=caller_id, display_name=display_name)
