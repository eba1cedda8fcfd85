"""The realtime processor's options (`[processors.realtime]`) and where they lead: URL, headers.

Owns: validating the options once, at start-up, with messages that name the option; the
endpoint forms of each provider; reading the API key from its environment variable. Never:
the key in a message, a log line or a repr (it lives only in the request headers).

Providers and the URL each one gets (`endpoint` is the resource's base URL; https -> wss):
- `openai`:        wss://api.openai.com/v1/realtime?model=MODEL      (Authorization: Bearer)
- `azure`:         ENDPOINT/openai/v1/realtime?model=DEPLOYMENT      (api-key; GA)
- `azure-preview`: ENDPOINT/openai/realtime?api-version=V&deployment=DEPLOYMENT  (api-key; beta)
- `voice-live`:    ENDPOINT/voice-live/realtime?api-version=V&model=MODEL        (api-key)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, urlsplit

import attrs

from ...acs.packets import FRAME_MS
from . import tools
from .interruption import PAUSE, POLICIES
from .protocol import BETA, DIALECTS, GA, MODEL_RATE, SessionSettings
from .speakers import SPEAKER_POLICIES
from .uplink import BATCH_FRAMES


@attrs.frozen
class _Provider:
    path: str  # with {model} and {version}
    key_env: str
    auth: str  # "bearer" or "api-key"
    dialect: str
    api_version: str | None = None
    endpoint: str | None = None
    session_max_s: float = 1800.0  # the service ends a session this long after it opened
    rates: tuple[int, ...] = (MODEL_RATE,)  # the PCM16 sample rates its sessions take and give


PROVIDERS: Final = {
    "openai": _Provider(
        "/v1/realtime?model={model}",
        "OPENAI_API_KEY",
        "bearer",
        GA,
        endpoint="wss://api.openai.com",
        session_max_s=3600.0,
    ),
    "azure": _Provider("/openai/v1/realtime?model={model}", "AZURE_OPENAI_API_KEY", "api-key", GA),
    "azure-preview": _Provider(
        "/openai/realtime?api-version={version}&deployment={model}",
        "AZURE_OPENAI_API_KEY",
        "api-key",
        BETA,
        api_version="2025-04-01-preview",
    ),
    "voice-live": _Provider(
        "/voice-live/realtime?api-version={version}&model={model}",
        "AZURE_VOICELIVE_API_KEY",
        "api-key",
        BETA,
        api_version="2025-10-01",
        rates=(16000, MODEL_RATE),  # `input_audio_sampling_rate`, `output_audio_format`
    ),
}
FAILURE_POLICIES: Final = ("reconnect", "hangup")
# The model hears the end of every caller turn up to a batch later (less a frame): past this,
# that delay is a reply's worth of latency for little CPU (bench/bridge_cpu.py --uplink-batch-ms).
UPLINK_BATCH_MAX_MS: Final = 200


def _table(value: Any, name: str) -> dict[str, Any] | None:
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a table, got {value!r}")
    return dict(value)


@attrs.frozen(kw_only=True)
class RealtimeOptions:
    provider: str = "openai"
    endpoint: str | None = None
    model: str = "gpt-realtime"  # the model, or the Azure deployment name
    api_version: str | None = None
    api_key_env: str | None = None
    protocol: str | None = None  # "ga" or "beta"; default: the provider's
    instructions: str | None = None
    voice: str | dict[str, Any] | None = None
    turn_detection: dict[str, Any] | None = attrs.field(factory=lambda: {"type": "server_vad"})
    transcription: dict[str, Any] | None = None
    session: dict[str, Any] = attrs.field(factory=dict)
    on_upstream_failure: str = "reconnect"
    max_reconnects: int = 5
    backoff_initial_ms: int = 250
    backoff_max_ms: int = 8000
    connect_timeout: float = 10.0
    keepalive_interval: float = 10.0
    keepalive_timeout: float = 10.0
    local_vad: bool = False
    local_vad_aggressiveness: int = 3
    local_vad_min_speech_ms: int = 60
    call_tools: list[str] = attrs.field(factory=list)  # end_call, transfer_call: see tools
    transfer_targets: dict[str, str] = attrs.field(factory=dict)  # name -> number or ACS user
    tools: list[str] = attrs.field(factory=list)  # the user's tools, "module:function"
    tool_timeout_ms: int = 10000
    greeting: str | dict[str, str] | None = None  # instructions, or {text = ...} / {instructions}
    dtmf_to_model: bool = False
    dtmf_wait_ms: int = 1000  # key presses this close together go to the model as one
    interruption: str = "cancel"  # or "pause": see .interruption
    interruption_confirm_ms: int = 1500
    interruption_min_ms: int = 500
    speakers: str = "first"  # unmixed streams: "first", "mix" or "follow" (see .speakers)
    session_max_s: float | None = None  # the provider's session limit; 0: no planned rollover
    rollover_before_s: float = 120.0  # open the next session this long before the limit
    rollover_gap_ms: int = 200  # the switch must take no longer (else the next session is dropped)
    history_max_items: int = 200  # turns remembered for the next session (oldest forgotten)
    history_max_bytes: int = 32768  # and their text, UTF-8
    uplink_batch_ms: int = BATCH_FRAMES * FRAME_MS  # caller audio per append event: CPU vs delay
    model_rate: str | int = "auto"  # the session's audio rate; "auto": the call's, if taken

    @property
    def uplink_batch_frames(self) -> int:
        return self.uplink_batch_ms // FRAME_MS

    def model_rate_for(self, call_rate: int) -> int:
        """The sample rate of the audio exchanged with the model on a call at `call_rate`: the
        call's own where the provider takes it (no resampling either way), else 24 kHz."""
        if self.model_rate != "auto":
            return int(self.model_rate)
        return call_rate if call_rate in PROVIDERS[self.provider].rates else MODEL_RATE

    @property
    def dialect(self) -> str:
        return self.protocol or PROVIDERS[self.provider].dialect

    @property
    def session_limit_s(self) -> float:
        if self.session_max_s is not None:
            return self.session_max_s
        return PROVIDERS[self.provider].session_max_s

    @property
    def key_env(self) -> str:
        return self.api_key_env or PROVIDERS[self.provider].key_env

    @property
    def url(self) -> str:
        provider = PROVIDERS[self.provider]
        base = (self.endpoint or provider.endpoint or "").rstrip("/")
        scheme, _, rest = base.partition("://")
        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
        path = provider.path.format(
            model=quote(self.model, safe=""),
            version=quote(self.api_version or provider.api_version or "", safe=""),
        )
        return f"{scheme}://{rest}{path}"

    def headers(self, environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """The handshake headers, with the key read from its environment variable now."""
        key = (os.environ if environ is None else environ).get(self.key_env, "")
        if PROVIDERS[self.provider].auth == "bearer":
            headers = [("Authorization", f"Bearer {key}")]
        else:
            headers = [("api-key", key)]
        if self.dialect == BETA and self.provider == "openai":
            headers.append(("OpenAI-Beta", "realtime=v1"))
        return headers

    @property
    def greeting_instructions(self) -> str | None:
        """The instructions of the bot's first response, or None: the caller speaks first."""
        greeting = self.greeting
        if greeting is None or isinstance(greeting, str):
            return greeting
        if "text" in greeting:
            return f'Say exactly this to the caller, and nothing else: "{greeting["text"]}"'
        return greeting["instructions"]

    @property
    def gateway_responds(self) -> bool:
        """The gateway, not the model's VAD, requests a response at the end of each caller
        turn (`interruption = "pause"`, unless `turn_detection` says otherwise)."""
        vad = self.session_settings.turn_detection
        return (
            self.interruption == PAUSE and vad is not None and vad.get("create_response") is False
        )

    @property
    def session_settings(self) -> SessionSettings:
        turn_detection = self.turn_detection
        if (
            self.interruption == PAUSE
            and turn_detection is not None
            and turn_detection.get("type") in _INTERRUPTIBLE_VAD
        ):
            # The gateway decides whether the reply was really interrupted: the model must
            # not cancel it on its own at every sound, nor answer every sound (the gateway
            # asks for a response when a turn ends that was no false alarm).
            turn_detection = {
                "interrupt_response": False,
                "create_response": False,
                **turn_detection,
            }
        return SessionSettings(
            instructions=self.instructions,
            voice=self.voice,
            turn_detection=turn_detection,
            transcription=self.transcription,
            extra=self.session,
        )


_INTERRUPTIBLE_VAD: Final = ("server_vad", "semantic_vad")

_TYPES: Final[dict[str, Any]] = {
    "provider": str,
    "endpoint": str,
    "model": str,
    "api_version": str,
    "api_key_env": str,
    "protocol": str,
    "instructions": str,
    "voice": (str, dict),
    "session": dict,
    "on_upstream_failure": str,
    "max_reconnects": int,
    "backoff_initial_ms": int,
    "backoff_max_ms": int,
    "connect_timeout": (int, float),
    "keepalive_interval": (int, float),
    "keepalive_timeout": (int, float),
    "local_vad": bool,
    "local_vad_aggressiveness": int,
    "local_vad_min_speech_ms": int,
    "call_tools": list,
    "transfer_targets": dict,
    "tools": list,
    "tool_timeout_ms": int,
    "greeting": (str, dict),
    "dtmf_to_model": bool,
    "dtmf_wait_ms": int,
    "interruption": str,
    "interruption_confirm_ms": int,
    "interruption_min_ms": int,
    "speakers": str,
    "session_max_s": (int, float),
    "rollover_before_s": (int, float),
    "rollover_gap_ms": int,
    "history_max_items": int,
    "history_max_bytes": int,
    "uplink_batch_ms": int,
    "model_rate": (str, int),
}
_TABLES: Final = ("turn_detection", "transcription")
KNOWN: Final = tuple(a.name for a in attrs.fields(RealtimeOptions))


def parse_options(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> RealtimeOptions:
    """Validate `[processors.realtime]`; raises ValueError naming the bad option."""
    unknown = sorted(set(options) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; realtime takes {', '.join(KNOWN)}")
    values: dict[str, Any] = {}
    for name, value in options.items():
        if name in _TABLES:
            values[name] = _table(value, name)
            continue
        expected = _TYPES[name]
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            raise ValueError(f"{name}: wrong type {type(value).__name__} ({value!r})")
        values[name] = dict(value) if isinstance(value, Mapping) else value
    opts = RealtimeOptions(**values)
    tools.check(opts.call_tools, opts.transfer_targets)
    if opts.provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}; got {opts.provider!r}")
    if opts.protocol is not None and opts.protocol not in DIALECTS:
        raise ValueError(f"protocol must be one of {', '.join(DIALECTS)}; got {opts.protocol!r}")
    if opts.on_upstream_failure not in FAILURE_POLICIES:
        raise ValueError(
            f"on_upstream_failure must be one of {', '.join(FAILURE_POLICIES)}; "
            f"got {opts.on_upstream_failure!r}"
        )
    for name, allowed in (("interruption", POLICIES), ("speakers", SPEAKER_POLICIES)):
        if getattr(opts, name) not in allowed:
            raise ValueError(
                f"{name} must be one of {', '.join(allowed)}; got {getattr(opts, name)!r}"
            )
    if opts.endpoint is None and PROVIDERS[opts.provider].endpoint is None:
        raise ValueError(f"provider {opts.provider!r} needs 'endpoint' (your resource's URL)")
    if urlsplit(opts.url).scheme not in ("ws", "wss"):
        raise ValueError(
            f"endpoint must be an https://, wss://, http:// or ws:// URL, got {opts.endpoint!r}"
        )
    _check_greeting(opts.greeting)
    for name in (
        "max_reconnects",
        "session_max_s",
        "history_max_items",
        "history_max_bytes",
        "dtmf_wait_ms",
    ):
        if (getattr(opts, name) or 0) < 0:
            raise ValueError(f"{name} must be 0 or more")
    for name in (
        "backoff_initial_ms",
        "backoff_max_ms",
        "connect_timeout",
        "keepalive_interval",
        "keepalive_timeout",
        "local_vad_min_speech_ms",
        "tool_timeout_ms",
        "interruption_confirm_ms",
        "interruption_min_ms",
        "rollover_before_s",
        "rollover_gap_ms",
    ):
        if getattr(opts, name) <= 0:
            raise ValueError(f"{name} must be greater than 0")
    batch = opts.uplink_batch_ms
    if batch % FRAME_MS or not FRAME_MS <= batch <= UPLINK_BATCH_MAX_MS:
        raise ValueError(
            f"uplink_batch_ms must be a multiple of {FRAME_MS} (ACS's frame) from {FRAME_MS} to "
            f"{UPLINK_BATCH_MAX_MS}; got {batch}"
        )
    _check_no_audio_format(opts.session)
    rates = PROVIDERS[opts.provider].rates
    if opts.model_rate != "auto" and opts.model_rate not in rates:
        raise ValueError(
            f'model_rate must be "auto" or one of the rates {opts.provider} takes '
            f"({', '.join(map(str, rates))}); got {opts.model_rate!r}"
        )
    if not 0 <= opts.local_vad_aggressiveness <= 3:
        raise ValueError("local_vad_aggressiveness must be 0-3")
    env = os.environ if environ is None else environ
    if not env.get(opts.key_env):
        raise ValueError(
            f"the API key is read from the environment variable {opts.key_env}, which is not set "
            "(set it, or name another one with api_key_env)"
        )
    return opts


# What the gateway sends and expects (PCM16 at `model_rate`): set in `session`, the audio would
# be taken for PCM16 at the wrong rate, or not PCM16 at all.
_AUDIO_FORMAT_FIELDS: Final = (
    "input_audio_format",
    "output_audio_format",
    "input_audio_sampling_rate",
)


def _check_no_audio_format(session: Mapping[str, Any]) -> None:
    audio = session.get("audio")
    sides = audio if isinstance(audio, Mapping) else {}
    given = [f"session.{name}" for name in _AUDIO_FORMAT_FIELDS if name in session] + [
        f"session.audio.{side}.format"
        for side in ("input", "output")
        if isinstance(sides.get(side), Mapping) and "format" in sides[side]
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)}: the gateway sets the audio formats itself (PCM16 at the "
            "call's rate or 24 kHz: see model_rate); leave them out of session"
        )


def _check_greeting(greeting: str | Mapping[str, Any] | None) -> None:
    if isinstance(greeting, str) and not greeting.strip():
        raise ValueError("greeting must not be empty (leave it out: the caller speaks first)")
    if isinstance(greeting, Mapping):
        if len(greeting) != 1 or next(iter(greeting)) not in ("text", "instructions"):
            raise ValueError(
                "greeting: a string (instructions), or a table with one key, "
                f"text or instructions; got {dict(greeting)!r}"
            )
        value = next(iter(greeting.values()))
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"greeting: {next(iter(greeting))} must be a non-empty string")
