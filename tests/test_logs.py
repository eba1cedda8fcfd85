"""Log hygiene: what a peer chose (its call ids, paths, close reasons, error text) reaches a
log line capped and escaped, in the text and the JSON format, so that no peer can forge a
field or a line, or make a line longer than a few hundred bytes."""

from __future__ import annotations

import logging

import orjson
import pytest
import trio_websocket

from gateway.logs import JsonFormatter, TextFormatter, call_logger, peer_text
from gateway.testing import open_gateway, simulated_call

FORGED_FIELD = "abc correlation=x peer=52.112.0.1:443] [call=abc"
FORGED_LINE = "abc\n2026-01-01 00:00:00,000 INFO    gateway.call accepted /"
HUGE = "x" * 60_000
LINE_BYTES = 700  # timestamp, level, logger, a capped message and three capped fields


def record(message: str, *args: object, connection_id: str = "abc") -> logging.LogRecord:
    """The record a call's logger makes for `message % args`."""
    adapter = call_logger(connection_id, "corr-1", "10.0.0.1:5000")
    made: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = made.append  # type: ignore[method-assign] - collect instead of writing
    adapter.logger.addHandler(handler)
    try:
        adapter.warning(message, *args)
    finally:
        adapter.logger.removeHandler(handler)
    return made[0]


def text_fields(line: str) -> str:
    return line[line.rindex(" [call=") :]


def test_text_format_a_forged_field_stays_inside_its_own():
    line = TextFormatter().format(record("refusing the call", connection_id=FORGED_FIELD))
    assert line.count(" peer=") == 1 and line.count("[call=") == 1
    assert line.endswith(" peer=10.0.0.1:5000]")
    assert text_fields(line).split()[1:] == ["correlation=corr-1", "peer=10.0.0.1:5000]"]


@pytest.mark.parametrize(
    "value", [FORGED_LINE, HUGE, "\u2028é\x00\x1b[31m"], ids=["line", "60KB", "controls"]
)
def test_text_format_one_short_line_whatever_the_ids_and_messages(value):
    for made in (record("accepted %s", value), record("ok", connection_id=value)):
        line = TextFormatter().format(made)
        assert "\n" not in line and "\u2028" not in line and "\x1b" not in line
        assert len(line.encode()) < LINE_BYTES
        assert line.count("[call=") == 1


def test_text_format_a_message_cannot_open_a_second_field_block():
    line = TextFormatter().format(record("ACS hung up (1000: %s)", "x] [call=evil peer=1.1.1.1"))
    assert line.count("[call=") == 1 and line.endswith(" peer=10.0.0.1:5000]")


@pytest.mark.parametrize("value", [FORGED_FIELD, FORGED_LINE, HUGE], ids=["field", "line", "60KB"])
def test_json_format_fields_and_messages_are_capped_and_escaped(value):
    for made in (record("accepted %s", value), record("ok", connection_id=value)):
        line = JsonFormatter().format(made)
        assert "\n" not in line and len(line.encode()) < LINE_BYTES
        entry = orjson.loads(line)
        assert entry["peer"] == "10.0.0.1:5000"
        assert "\n" not in entry["message"] and "\n" not in entry["call_connection_id"]
    assert orjson.loads(JsonFormatter().format(record("ok", connection_id=value)))[
        "call_connection_id"
    ] == peer_text(value)


def test_peer_text_escapes_separators_and_caps():
    assert peer_text('a b=c]d[e\\f"g\x7fé') == "a\\x20b\\x3dc\\x5dd\\x5be\\x5cf\\x22g\\x7f\\xe9"
    assert (
        peer_text("0b2f6c4e-1f0a-4d3e-9a8b-7c6d5e4f3a2b") == "0b2f6c4e-1f0a-4d3e-9a8b-7c6d5e4f3a2b"
    )
    capped = peer_text("y" * 1000)
    assert capped.startswith("y" * 96) and capped.endswith("...(1000 chars)")


async def test_an_unauthenticated_peer_cannot_shape_the_refusal_lines(caplog):
    caplog.set_level(logging.INFO)
    settings = {"acs_resource_id": "r", "auth_key_set_url": "http://127.0.0.1:9/keys"}
    async with open_gateway(**settings) as server:
        big = "x" * 12_000  # within the upgrade's 16 KB head: it reaches the logs
        headers = [("x-ms-call-correlation-id", FORGED_FIELD), ("x-ms-call-connection-id", big)]
        with pytest.raises(trio_websocket.HandshakeError):
            async with simulated_call(server.urls[0], headers=headers):
                pass
    refusals = [r for r in caplog.records if "refusing the call" in r.getMessage()]
    assert refusals
    for made in refusals:
        line = TextFormatter().format(made)
        assert len(line.encode()) < LINE_BYTES and line.count(" peer=") == 1
        assert len(JsonFormatter().format(made).encode()) < LINE_BYTES
