"""The gateway's error vocabulary, split by blame (after h11's Remote/LocalProtocolError).

Rules:
- `PeerError`: the remote peer (ACS, or whatever connected) did something wrong. Each kind
  says what it earns: `close_code`, the WebSocket close code to end the call with (None: the
  call's policy decides, e.g. skip the packet), or `http_status`, the refusal to send instead
  of the upgrade. Raised by sans-IO code (framing, codec, intake); the call or the server is
  the one place that turns it into a close or a refusal.
- `LocalError`: our side got something wrong: the operator's configuration, or gateway code
  that used a sans-IO object in a state that forbids it. Never the peer's doing.
- `ConnectionClosed` is neither: it reports that the WebSocket is over (its `code` says how).
  `SendTimeout` is also the peer's fault (it stopped reading).

None of these may escape the call or the server that met them. `AuthFailure` stays with the
token checks (`gateway.server.auth`): its blame depends on its reason (a bad token is the
peer's, keys we could not fetch are ours).
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


# -- the peer's fault --


class PeerError(GatewayError):
    """The remote peer did something wrong; the class says what that earns it."""

    close_code: int | None = None  # the WebSocket close code; None: the call's policy decides
    http_status: int | None = None  # the refusal, for a fault found before the upgrade


class FramingError(PeerError):
    """The peer broke RFC 6455 (1002), sent text that is not UTF-8 (1007), or a message over
    the size cap (1009): the connection is closed with `close_code`."""

    close_code: int

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(f"{close_code}: {reason}")
        self.close_code = close_code
        self.reason = reason
        # What the same read completed before the violation: whole messages the peer sent
        # before it broke the protocol still count (set by the frame reader).
        self.events: list[object] = []


class BadUpgrade(PeerError):
    """The request cannot become a WebSocket: it is refused with `http_status`, and `reason`
    as the body."""

    http_status: int

    def __init__(self, http_status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.http_status = http_status
        self.reason = reason


class ProtocolError(PeerError):
    """The peer sent a packet we cannot use. The call skips it (see `ErrorPolicy`).

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


class TooManyErrors(PeerError):
    """`max_consecutive_errors` malformed packets in a row: the call is closed."""

    close_code = CLOSE_INVALID_PAYLOAD


class Flooded(PeerError):
    """Inbound messages beyond the rate limit for longer than `flood_grace`: the call is closed."""

    close_code = CLOSE_POLICY_VIOLATION


# -- the end of a connection --


class ConnectionClosed(GatewayError):
    """The WebSocket is closed: by the peer (its code), by us, or abnormally (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason

    def fresh(self) -> ConnectionClosed:
        """A new exception saying the same. A connection keeps its `closed` value and raises
        copies: raising the kept one would give it a traceback whose frames hold the
        connection, a reference cycle that keeps an ended call's buffers alive until a full GC."""
        return ConnectionClosed(self.code, self.reason)


class SendTimeout(ConnectionClosed, PeerError):
    """A write waited `send_timeout` seconds for a peer that does not read: the connection is
    given up (code 1006: no close frame could be sent)."""

    close_code = CLOSE_ABNORMAL

    def __init__(self, seconds: float) -> None:
        super().__init__(CLOSE_ABNORMAL, f"the peer took no data for {seconds:g} s")
        self.seconds = seconds

    def fresh(self) -> SendTimeout:
        return SendTimeout(self.seconds)


# -- our fault --


class LocalError(GatewayError):
    """Our side got something wrong; never the peer's doing."""


class LocalProtocolError(LocalError):
    """Gateway code asked a sans-IO protocol object for something its state forbids (e.g. a
    message after our close frame). A bug in the caller, not in the peer."""


class ConfigError(LocalError):
    """A configuration setting is missing or invalid; the message names the setting."""


class ProcessorNotFound(ConfigError):
    """The configured processor name does not resolve to a processor factory."""


def first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    """The first failure in a (nested) group of them: a port that could not be bound comes out
    of Trio's nurseries wrapped in groups, and its message is what to report."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, OSError)
    return leaf
