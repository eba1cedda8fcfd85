"""The gateway's small error vocabulary, split by whose fault it is (after h11).

- `ProtocolError`: the peer (ACS, or whatever connected) sent something we cannot use. It says
  what was wrong in `reason` (a stable, metric-friendly token) and in its message. Raised by the
  sans-IO codec; caught at exactly one place per call (`gateway.call`), which applies the
  documented policy: count, log, skip the packet, or close the call with `close_code`.
- `ConfigError`: the operator's configuration is wrong; the message names the setting.
- `ProcessorNotFound`: `--processor` names nothing we can load.

None of these may escape the call or the server that met them.
"""

from __future__ import annotations

# WebSocket close codes (RFC 6455 section 7.4.1) the gateway uses.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server draining
CLOSE_PROTOCOL_ERROR = 1002  # the peer broke RFC 6455 framing
CLOSE_NO_STATUS = 1005  # received only: a close frame without a code
CLOSE_ABNORMAL = 1006  # never sent: the connection ended without a close frame
CLOSE_INVALID_PAYLOAD = 1007  # text that is not UTF-8; too many malformed packets in a row
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011  # the processor failed


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ProtocolError(GatewayError):
    """The remote peer sent a packet we cannot use.

    `reason` is one of the tokens in `REASONS`; tests and metrics key on it.
    """

    REASONS = frozenset(
        {
            "not_utf8",
            "not_json",
            "not_object",
            "unknown_kind",
            "missing_payload",
            "wrong_type",
            "bad_value",
            "bad_base64",
            "odd_length",
            "audio_before_metadata",
            "metadata_changed",
        }
    )

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConfigError(GatewayError):
    """A configuration setting is missing or invalid; the message names the setting."""


class ProcessorNotFound(ConfigError):
    """The configured processor name does not resolve to a processor factory."""
