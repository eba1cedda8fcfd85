"""`gateway.control.calls`: CallControl against the fake ACS through the real SDK, and the
IncomingCall data a processor sees."""

from __future__ import annotations

import pytest
import trio

from gateway.call.interface import Call, CallControlHandle
from gateway.testing import open_fake_acs, open_gateway
from gateway.testing.acs_events import incoming_call_event

pytest.importorskip("azure.communication.callautomation")

from gateway.control.calls import (  # noqa: E402
    CallControl,
    CallControlError,
    IncomingCall,
    transfer_target,
)
from tests.acs_app import open_app  # noqa: E402


def _control(acs, call, timeout: float = 5.0) -> CallControl:
    incoming = IncomingCall.from_event_data(call.event["data"])
    return CallControl.from_connection_string(
        acs.connection_string, call.call_connection_id, incoming, timeout=timeout, **acs.sdk_options
    )


def test_incoming_call_data_from_the_event():
    event = incoming_call_event(
        to="+18005550100",
        caller="8:acs:abc",
        incoming_call_context="ctx",
        server_call_id="s",
        correlation_id="c",
        caller_display_name="Ann",
        sip_headers={"X-Team": "sales"},
        voip_headers={"route": "b"},
    )
    incoming = IncomingCall.from_event_data(event["data"])
    assert (incoming.caller, incoming.callee) == ("8:acs:abc", "4:+18005550100")
    assert incoming.caller_display_name == "Ann"
    assert incoming.custom_context == {
        "sipHeaders": {"X-Team": "sales"},
        "voipHeaders": {"route": "b"},
    }
    assert "ctx" not in repr(incoming)
    with pytest.raises(ValueError, match="incomingCallContext"):
        IncomingCall.from_event_data({"from": {"rawId": "4:+1"}})


@pytest.mark.parametrize(
    "target, kind",
    [("+14255550123", "phoneNumber"), ("4:+14255550123", "phoneNumber"), ("8:acs:x_1", "user")],
)
def test_transfer_targets(target, kind):
    identifier = transfer_target(target)
    assert identifier.raw_id == ("4:+14255550123" if kind == "phoneNumber" else target)


@pytest.mark.parametrize("target", ["", "14255550123", "+1", "8:acs:", "sip:x@y", "+1425abc"])
def test_bad_transfer_targets_are_refused_before_anything_is_sent(target):
    with pytest.raises(ValueError):
        transfer_target(target)


def test_call_control_is_a_control_handle_and_absent_by_default():
    assert Call.__attrs_attrs__.control.default is None  # type: ignore[attr-defined]  # attrs adds it
    handle: CallControlHandle = CallControl(None, "id")  # type: ignore[arg-type]  # no SDK client needed
    assert handle.caller is None and handle.custom_context == {}


async def test_hang_up_transfer_and_streaming_through_the_fake():
    async with open_gateway("echo") as gateway, open_fake_acs() as acs:
        async with open_app(acs, gateway.urls[0], start=False):
            call = await acs.ring(caller="+14255550123", sip_headers={"X-Team": "sales"})
            with trio.fail_after(10):
                await call.answered.wait()
            control = _control(acs, call)
            assert control.caller == "4:+14255550123"
            assert control.callee == "4:+18005550100"
            assert control.custom_context["sipHeaders"] == {"X-Team": "sales"}

            await control.start_media_streaming()
            with trio.fail_after(10):
                await call.media_connected.wait()
            await control.stop_media_streaming()
            with trio.fail_after(10):
                await call.wait_for_callback("MediaStreamingStopped")

            await control.transfer("8:acs:agent-7", operation_context="to-agent")
            with trio.fail_after(10):
                await call.disconnected.wait()
            assert call.transfers[0]["targetParticipant"]["rawId"] == "8:acs:agent-7"
            assert call.transfers[0]["operationContext"] == "to-agent"

            # The call is over: ACS answers 404, which is a CallControlError.
            with pytest.raises(CallControlError) as gone:
                await control.hang_up()
            assert gone.value.status == 404 and gone.value.operation == "hang_up"

            second = await acs.ring()
            with trio.fail_after(10):
                await second.answered.wait()
            await _control(acs, second).hang_up()
            with trio.fail_after(10):
                await second.disconnected.wait()


async def test_a_slow_acs_costs_at_most_the_timeout_and_leaves_nothing_behind():
    async with open_fake_acs() as acs:
        async with open_app(acs, None):
            call = await acs.ring()
            with trio.fail_after(10):
                await call.answered.wait()
            acs.rest_delay = 30.0
            control = _control(acs, call, timeout=0.5)
            started = trio.current_time()
            with pytest.raises(CallControlError, match="no answer within 0.5 s"):
                await control.hang_up()
            assert trio.current_time() - started < 3
            assert call.state == "connected"


async def test_a_refused_request_carries_acs_status_and_code():
    async with open_fake_acs() as acs:
        async with open_app(acs, None):
            call = await acs.ring()
            with trio.fail_after(10):
                await call.answered.wait()
            control = CallControl.from_connection_string(
                f"endpoint={acs.endpoint}/;accesskey=" + "QUJD" * 11,
                call.call_connection_id,
                **acs.sdk_options,
            )
            with pytest.raises(CallControlError) as refused:
                await control.transfer("+14255550199")
            assert (refused.value.status, refused.value.code) == (401, "Denied")
            assert call.transfers == [] and call.state == "connected"
