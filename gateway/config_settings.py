"""The settings: `Config`, its `[[routes]]` tables (`Route`), and each field's type, default,
validator and documentation, once.

Owns: every setting, its default, what makes a value wrong (each validator's message starts
with the setting's name, which is how `gateway.config` names it in an error), whether SIGHUP
applies it (`hot` fields, `RELOADABLE`), and which ones only the file can give (`FILE_ONLY`).
The per-call settings are declared once, in `gateway.call.settings.CallSettings`, which `Config`
subclasses. Never: reads a file, the environment or the command line (`gateway.config` does);
keys and secrets for upstream services come from their own environment variables, never from
the configuration file.

docs/configuration.md's reference table is generated from these fields' metadata
(`python -m gateway.config_reference --write docs/configuration.md`; tests/test_docs.py keeps
them in step).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any, Final

import attrs

from .call.settings import CallSettings
from .call.settings import doc as _doc
from .call.settings import hot as _hot
from .call.settings import positive as _positive

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")


def _one_of(*choices: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}; got {value!r}")

    return check


def _port(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a TCP port (0-65535), got {value}")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more, got {value}")


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _positive(instance, attribute, value)


def _networks(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(
                f"{attribute.name}: {network!r} is not a network (e.g. 52.112.0.0/14)"
            ) from None


def _key_set_url(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    from urllib.parse import urlsplit

    url = urlsplit(value)
    if url.scheme == "https" and url.hostname:
        return
    if url.scheme == "http" and url.hostname in ("127.0.0.1", "::1", "localhost"):
        return  # a local key-set server (tests, a sidecar): never plain http over a network
    raise ValueError(f"{attribute.name} must be an https:// URL (http:// only on loopback)")


def _name_pattern(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    fields = dict.fromkeys(("started", "connection_id", "correlation_id", "route"), "x")
    try:
        name = value.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{attribute.name}: {value!r} is not a name pattern ({exc!r})") from None
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{attribute.name} must name a file in recording_dir, got {value!r}")


def _public_url(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    from urllib.parse import urlsplit

    if value is None:
        return
    url = urlsplit(value)
    if url.scheme != "https" or not url.hostname or url.query or url.fragment:
        raise ValueError(f"{attribute.name} must be an https:// base URL (no query), got {value!r}")


def _replica_url(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    from urllib.parse import urlsplit

    if value is None:
        return
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
        raise ValueError(
            f"{attribute.name} must be an http(s):// base URL (no path), got {value!r}"
        )
    if url.query or url.fragment:
        raise ValueError(
            f"{attribute.name} must be an http(s):// base URL (no path), got {value!r}"
        )


def _phone_number(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not PHONE_NUMBER.fullmatch(value):
        raise ValueError(f"{attribute.name} must be a phone number in E.164 (+14255550123)")


PHONE_NUMBER: Final = re.compile(r"\+[1-9]\d{3,14}")  # E.164
ROUTE_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # it travels in the media URL's path
AUDIO_FORMATS: Final = ("pcm16KMono", "pcm24KMono")  # ACS's names (docs/protocol.md)
CHANNEL_TYPES: Final = ("mixed", "unmixed")


def _route_name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not ROUTE_NAME.fullmatch(value):
        raise ValueError(f"route name {value!r}: letters, digits, _ and - only (1-64)")


@attrs.frozen(kw_only=True)
class Route:
    """One `[[routes]]` table: which calls it takes, and how they are answered and served."""

    name: str = attrs.field(validator=_route_name)
    processor: str | None = None  # None: the top-level `processor`
    options: dict[str, Any] | None = None  # None: the processor's `[processors.NAME]` table
    # None: the processor's own rate (gateway.control.routes.audio_format)
    audio_format: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_one_of(*AUDIO_FORMATS))
    )
    channel_type: str = attrs.field(default="mixed", validator=_one_of(*CHANNEL_TYPES))
    bidirectional: bool = True
    dtmf: bool = False
    # Matches (all given must hold; none given: a default route). Identifiers are compared
    # with the rawId, the phone number and the ACS user id of the IncomingCall's `to`
    # (callee) and `from` (caller).
    callee: tuple[str, ...] = ()
    caller: tuple[str, ...] = ()
    headers: dict[str, str] = attrs.field(factory=dict)  # customContext SIP/VoIP headers
    # Call records for this route's calls; None: the top-level `recording` / `call_events`.
    recording: bool | None = None
    call_events: bool | None = None

    @property
    def is_default(self) -> bool:
        return not (self.callee or self.caller or self.headers)


# ACS's WebSocket token (docs/protocol.md, "The token").
ACS_TOKEN_ISSUER: Final = "https://acscallautomation.communication.azure.com"
ACS_KEY_SET_URL: Final = "https://acscallautomation.communication.azure.com/calling/keys"


def _call_settings_after(
    setting: str,
) -> Callable[[type, list[attrs.Attribute[Any]]], list[attrs.Attribute[Any]]]:
    """Place the fields inherited from `CallSettings` right after `setting` (attrs puts a base
    class's fields first), so that the keys read in the order of a connection's life."""

    def place(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
        per_call = {f.name for f in attrs.fields(CallSettings)}
        own = [f for f in fields if f.name not in per_call]
        at = next(i for i, f in enumerate(own) if f.name == setting) + 1
        return own[:at] + [f for f in fields if f.name in per_call] + own[at:]

    return place


@attrs.frozen(kw_only=True, field_transformer=_call_settings_after("handshake_timeout"))
class Config(CallSettings):
    """Every setting. The per-call ones (`metadata_timeout` ... `max_call_duration`) are
    declared once, in `CallSettings`: a `Config` is the `CallSettings` of the calls it runs."""

    host: str = attrs.field(default="0.0.0.0", metadata=_doc("Address to listen on."))
    port: int = attrs.field(
        default=8080, validator=_port, metadata=_doc("TCP port to listen on (0: any free port).")
    )
    processor: str = attrs.field(
        default="echo",
        metadata=_doc(
            "Processor for every call: a built-in name, an entry point, or `module:factory`."
        ),
    )
    log_level: str = attrs.field(
        default="info",
        validator=_one_of(*LOG_LEVELS),
        metadata=_hot("debug, info, warning, error."),
    )
    log_format: str = attrs.field(
        default="text",
        validator=_one_of(*LOG_FORMATS),
        metadata=_hot("`text` or `json` (one object a line)."),
    )
    max_calls: int = attrs.field(
        default=1000,
        validator=_positive,
        metadata=_hot(
            "Live calls at most in the whole gateway (shared by every worker); the next "
            "handshake is refused with HTTP 503."
        ),
    )
    max_message_bytes: int = attrs.field(
        default=65536,
        validator=_positive,
        metadata=_hot("Largest inbound WebSocket message; a larger one closes the call (1009)."),
    )
    handshake_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_hot("Seconds a connection may take to complete the WebSocket upgrade."),
    )
    shutdown_grace: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_hot("On SIGTERM/SIGINT, seconds live calls may go on before they are cancelled."),
    )
    drain_delay: float = attrs.field(
        default=0.0,
        validator=_not_negative,
        metadata=_hot(
            "On SIGTERM/SIGINT, seconds between readiness going false and the listener closing "
            "(new calls are still served meanwhile), so load balancers stop sending first; "
            "`shutdown_grace` counts from the close."
        ),
    )
    tls_certfile: str | None = attrs.field(
        default=None,
        metadata=_hot("PEM certificate chain: serve wss:// directly (with tls_keyfile)."),
    )
    tls_keyfile: str | None = attrs.field(
        default=None, metadata=_hot("PEM private key for tls_certfile.")
    )
    # -- Limits and authentication --
    send_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_hot("Seconds one write may wait for ACS to read; then that call is aborted."),
    )
    max_calls_per_source: int | None = attrs.field(
        default=None,
        validator=_positive_or_none,
        metadata=_hot("Live calls from one source address at most (HTTP 429); none: no limit."),
    )
    max_pending_handshakes: int = attrs.field(
        default=1000,
        validator=_positive,
        metadata=_hot(
            "Connections accepted but not yet upgraded, gateway-wide (divided among the "
            "workers); beyond it a new connection is closed at once, before it is read."
        ),
    )
    max_pending_handshakes_per_source: int | None = attrs.field(
        default=100,
        validator=_positive_or_none,
        metadata=_hot(
            "The same from one source address (per worker); none: no limit. Behind a proxy "
            "every connection has the proxy's address: raise it or unset it."
        ),
    )
    allowed_networks: tuple[str, ...] = attrs.field(
        default=(),
        validator=_networks,
        metadata=_doc("Source networks (CIDR) that may connect (others: HTTP 403); empty: any."),
    )
    acs_resource_id: str | None = attrs.field(
        default=None,
        metadata=_doc("The ACS resource's immutable id: turns token validation on (audience)."),
    )
    auth_issuer: str = attrs.field(
        default=ACS_TOKEN_ISSUER, metadata=_doc("The `iss` a token must carry.")
    )
    auth_key_set_url: str = attrs.field(
        default=ACS_KEY_SET_URL,
        validator=_key_set_url,
        metadata=_doc("Where ACS's signing keys (JWKS) are fetched from."),
    )
    auth_leeway: float = attrs.field(
        default=30.0,
        validator=_not_negative,
        metadata=_doc("Seconds of clock skew allowed on a token's `exp` and `nbf`."),
    )
    auth_key_refetch_interval: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_doc("Seconds between key-set fetches caused by tokens with an unknown key id."),
    )
    auth_key_max_age: float = attrs.field(
        default=3600.0,
        validator=_positive,
        metadata=_doc("Seconds after which the cached key set is fetched again."),
    )
    # Health and metrics endpoint (gateway/ops/health.py, gateway/ops/metrics.py).
    health_host: str = attrs.field(
        default="0.0.0.0",
        metadata=_doc("Address of the health endpoint: `/livez`, `/readyz`, `/metrics`."),
    )
    health_port: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_port),
        metadata=_doc("TCP port of the health endpoint (0: any free port); unset: no endpoint."),
    )
    # Many cores (gateway/server/supervisor.py).
    workers: int = attrs.field(
        default=1,
        validator=_positive,
        metadata=_doc(
            "Worker processes sharing the port, supervised (one core each); 1: no supervisor."
        ),
    )
    # Call records (gateway/records/, docs/records.md): decided for each call as it starts.
    recording: bool = attrs.field(
        default=False,
        metadata=_hot(
            "Record each call: a WAV file with the caller and the bot audio as released to ACS."
        ),
    )
    call_events: bool = attrs.field(
        default=False,
        metadata=_hot("Keep each call's event log (JSON lines: turns, barge-ins, transcripts)."),
    )
    recording_dir: str = attrs.field(
        default="recordings",
        metadata=_hot("Directory of recordings and event logs (created if missing)."),
    )
    recording_name: str = attrs.field(
        default="{started}_{connection_id}",
        validator=_name_pattern,
        metadata=_hot(
            "File name (no suffix) of a call's records; fields: `{started}` (UTC), "
            "`{connection_id}`, `{correlation_id}`, `{route}`."
        ),
    )
    recording_unmixed: bool = attrs.field(
        default=False,
        metadata=_hot("One channel per participant heard (up to 4: unmixed audio), then the bot."),
    )
    recording_max_age_days: float = attrs.field(
        default=0.0,
        validator=_not_negative,
        metadata=_hot("Remove record files older than this many days (0: no limit)."),
    )
    recording_max_bytes: int = attrs.field(
        default=0,
        validator=_not_negative,
        metadata=_hot("Remove the oldest record files beyond this many bytes (0: no limit)."),
    )
    recording_buffer_seconds: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_hot(
            "Seconds of a call's audio that may wait for the disk; beyond it audio is dropped."
        ),
    )
    tracing: bool = attrs.field(
        default=False,
        metadata=_doc(
            "OpenTelemetry spans per call, exported over OTLP as the `OTEL_*` variables say "
            "(the `otel` extra)."
        ),
    )
    processors: dict[str, dict[str, Any]] = attrs.field(
        factory=dict,
        metadata=_doc("File only: `[processors.NAME]` tables of options for each processor."),
    )
    # The Call Automation control plane (gateway/control/, docs/answering.md).
    routes: tuple[Route, ...] = attrs.field(
        default=(),
        metadata=_hot(
            "File only: `[[routes]]` tables choosing each call's processor and streaming "
            "options (docs/answering.md); a call matching none runs `processor`."
        ),
    )
    public_url: str | None = attrs.field(
        default=None,
        validator=_public_url,
        metadata=_doc(
            "This gateway's public https:// base URL: turns answering on (Event Grid at "
            "`/eventgrid`, callbacks at `/callbacks`, media at `/ws/ROUTE`)."
        ),
    )
    acs_endpoint: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "ACS endpoint for Microsoft Entra ID (`DefaultAzureCredential`); unset: the "
            "connection string in `$ACS_CONNECTION_STRING`."
        ),
    )
    answer_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_doc(
            "Seconds one request to ACS may take (an answer; a processor's hang-up, transfer, "
            "start or stop of streaming); then it counts as failed."
        ),
    )
    call_token_lifetime: float = attrs.field(
        default=14400.0,
        validator=_positive,
        metadata=_doc("Seconds a call's media and callback URLs stay valid after the answer."),
    )
    dial_caller_id: str | None = attrs.field(
        default=None,
        validator=_phone_number,
        metadata=_doc(
            "The ACS phone number (E.164) a phone called by `acs-media-gateway dial` sees; "
            "dialling a phone number needs one."
        ),
    )
    replica_url: str | None = attrs.field(
        default=None,
        validator=_replica_url,
        metadata=_doc(
            "This replica's own base URL as the other replicas reach it (`http://POD_IP:8080`): "
            "set it on every replica behind one load balancer, so that a call's callbacks and "
            'media reach the replica holding it (docs/answering.md, "Many replicas").'
        ),
    )
    max_webhook_bytes: int = attrs.field(
        default=262144,
        validator=_positive,
        metadata=_doc("Largest webhook (Event Grid, callback) body; a larger one gets HTTP 413."),
    )

    def __attrs_post_init__(self) -> None:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        if self.health_port and self.health_port == self.port:
            raise ValueError(f"health_port must differ from port (both {self.port})")
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"routes: each name once (got {', '.join(names)})")

    @property
    def call_settings(self) -> CallSettings:
        return self

    @property
    def processor_options(self) -> dict[str, Any]:
        return self.processors.get(self.processor, {})


SETTINGS: Final = tuple(a.name for a in attrs.fields(Config))
RELOADABLE: Final = frozenset(
    a.name for a in attrs.fields(Config) if a.metadata.get("reloadable", False)
)
FILE_ONLY: Final = ("processors", "routes")
