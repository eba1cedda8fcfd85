"""`[processors.realtime]` options: validation, provider URL forms, keys from the environment."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.processors import load
from gateway.processors.realtime.options import parse_options

ENV = {"OPENAI_API_KEY": "sk-o", "AZURE_OPENAI_API_KEY": "az-k", "AZURE_VOICELIVE_API_KEY": "vl"}


@pytest.mark.parametrize(
    "opts, url, headers",
    [
        (
            {},
            "wss://api.openai.com/v1/realtime?model=gpt-realtime",
            [("Authorization", "Bearer sk-o")],
        ),
        (
            {"protocol": "beta", "model": "gpt-4o-realtime-preview"},
            "wss://api.openai.com/v1/realtime?model=gpt-4o-realtime-preview",
            [("Authorization", "Bearer sk-o"), ("OpenAI-Beta", "realtime=v1")],
        ),
        (
            {"provider": "azure", "endpoint": "https://res.openai.azure.com", "model": "my-rt"},
            "wss://res.openai.azure.com/openai/v1/realtime?model=my-rt",
            [("api-key", "az-k")],
        ),
        (
            {
                "provider": "azure-preview",
                "endpoint": "https://res.openai.azure.com/",
                "model": "gpt-4o-rt",
            },
            "wss://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview"
            "&deployment=gpt-4o-rt",
            [("api-key", "az-k")],
        ),
        (
            {
                "provider": "voice-live",
                "endpoint": "https://res.services.ai.azure.com",
                "api_version": "2025-05-01-preview",
            },
            "wss://res.services.ai.azure.com/voice-live/realtime?api-version=2025-05-01-preview"
            "&model=gpt-realtime",
            [("api-key", "vl")],
        ),
    ],
)
def test_provider_url_forms_and_auth_headers(opts, url, headers):
    parsed = parse_options(opts, ENV)
    assert parsed.url == url
    assert parsed.headers(ENV) == headers


def test_dialect_defaults_per_provider():
    assert parse_options({}, ENV).dialect == "ga"
    azure = {"endpoint": "https://r.openai.azure.com"}
    assert parse_options({"provider": "azure-preview", **azure}, ENV).dialect == "beta"
    assert parse_options({"provider": "azure", **azure}, ENV).dialect == "ga"
    assert parse_options({"provider": "azure", "protocol": "beta", **azure}, ENV).dialect == "beta"


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"voise": "alloy"}, "unknown option(s) ['voise']"),
        ({"provider": "bedrock"}, "provider must be one of"),
        ({"provider": "azure"}, "needs 'endpoint'"),
        ({"protocol": "v2"}, "protocol must be one of"),
        ({"on_upstream_failure": "retry"}, "on_upstream_failure must be one of"),
        ({"max_reconnects": "3"}, "max_reconnects: wrong type"),
        ({"local_vad": 1}, "local_vad: wrong type"),
        ({"turn_detection": "server_vad"}, "turn_detection must be a table"),
        ({"keepalive_timeout": 0}, "keepalive_timeout must be greater than 0"),
        ({"endpoint": "ftp://x"}, "endpoint must be an https://"),
        ({"api_key_env": "NOPE_KEY"}, "environment variable NOPE_KEY, which is not set"),
        ({"interruption": "ignore"}, "interruption must be one of cancel, pause"),
        ({"interruption_confirm_ms": 0}, "interruption_confirm_ms must be greater than 0"),
        ({"interruption_min_ms": "500"}, "interruption_min_ms: wrong type"),
        ({"speakers": "all"}, "speakers must be one of first, mix, follow"),
        ({"uplink_batch_ms": 30}, "uplink_batch_ms must be a multiple of 20 (ACS's frame) from"),
        ({"uplink_batch_ms": 0}, "uplink_batch_ms must be a multiple of 20"),
        ({"uplink_batch_ms": 220}, "from 20 to 200; got 220"),
        (
            {"model_rate": 16000},
            'model_rate must be "auto" or one of the rates openai takes (24000)',
        ),
        ({"model_rate": "fast"}, "got 'fast'"),
        (
            {"session": {"output_audio_format": "g711_ulaw"}},
            "session.output_audio_format: the gateway sets the audio formats itself",
        ),
        (
            {"session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
            "session.audio.input.format: the gateway sets",
        ),
        ({"session": {"input_audio_sampling_rate": 16000}}, "session.input_audio_sampling_rate"),
        ({"model_rate": 16000.0}, "model_rate: wrong type"),
    ],
)
def test_bad_options_are_refused_with_a_message_naming_them(opts, message):
    with pytest.raises(ValueError) as refused:
        parse_options(opts, ENV)
    assert message in str(refused.value)


def test_load_reports_bad_options_as_config_errors(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    with pytest.raises(ConfigError, match=r"processors\.realtime: unknown option"):
        load("realtime", {"api_key": "sk-in-the-file"})
    assert callable(load("realtime", {}))


def test_the_key_is_never_in_the_options_or_their_repr(monkeypatch):
    parsed = parse_options({}, {"OPENAI_API_KEY": "sk-secret-value"})
    assert "sk-secret-value" not in repr(parsed)
    assert "sk-secret-value" not in parsed.url


def test_pause_keeps_the_model_from_cancelling_its_reply_unless_told():
    assert parse_options({}, ENV).session_settings.turn_detection == {"type": "server_vad"}
    paused = parse_options({"interruption": "pause"}, ENV).session_settings
    assert paused.turn_detection == {
        "type": "server_vad",
        "interrupt_response": False,
        "create_response": False,
    }
    assert parse_options({"interruption": "pause"}, ENV).gateway_responds
    assert not parse_options({}, ENV).gateway_responds
    told = {"type": "semantic_vad", "interrupt_response": True}
    kept = parse_options({"interruption": "pause", "turn_detection": told}, ENV)
    assert kept.session_settings.turn_detection == {**told, "create_response": False}
    answering = {"type": "server_vad", "create_response": True}
    model_answers = parse_options({"interruption": "pause", "turn_detection": answering}, ENV)
    assert not model_answers.gateway_responds


def test_session_limits_per_provider_and_rollover_options():
    assert parse_options({}, ENV).session_limit_s == 3600  # OpenAI: 60 minutes
    azure = {"endpoint": "https://r.openai.azure.com"}
    for provider in ("azure", "azure-preview", "voice-live"):
        assert parse_options({"provider": provider, **azure}, ENV).session_limit_s == 1800
    assert parse_options({"session_max_s": 600}, ENV).session_limit_s == 600
    assert parse_options({"session_max_s": 0}, ENV).session_limit_s == 0  # no planned rollover
    for bad, message in [
        ({"session_max_s": -1}, "session_max_s must be 0 or more"),
        ({"rollover_gap_ms": 0}, "rollover_gap_ms must be greater than 0"),
        ({"rollover_before_s": "60"}, "rollover_before_s: wrong type"),
        ({"history_max_items": -5}, "history_max_items must be 0 or more"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_options(bad, ENV)


def test_model_rate_is_the_calls_own_where_the_provider_takes_it():
    """Voice Live takes 16 and 24 kHz PCM16: a call's audio goes as it is, either way. The
    OpenAI and Azure OpenAI APIs take 24 kHz only: a 16 kHz call is resampled to it."""
    voice_live = {"provider": "voice-live", "endpoint": "https://res.services.ai.azure.com"}
    assert parse_options(voice_live, ENV).model_rate_for(16000) == 16000
    assert parse_options(voice_live, ENV).model_rate_for(24000) == 24000
    forced = parse_options({**voice_live, "model_rate": 24000}, ENV)
    assert forced.model_rate_for(16000) == 24000  # resampled, as to the other providers
    azure = {"endpoint": "https://r.openai.azure.com"}
    for opts in ({}, {"provider": "azure", **azure}, {"provider": "azure-preview", **azure}):
        assert parse_options(opts, ENV).model_rate_for(16000) == 24000
        assert parse_options(opts, ENV).model_rate_for(24000) == 24000
