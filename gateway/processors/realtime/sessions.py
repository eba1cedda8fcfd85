"""Session rollover: opening the next model session before the current one reaches its limit,
and switching to it between turns.

Owns: when the next session is opened (`session_max_s - rollover_before_s` after the current
one opened), setting it up in the background (session.update, then waiting for
`session.updated` while reading and discarding its other events), when the switch may happen
(`Turns`: neither the bot nor the caller mid-turn), and the switch itself (the conversation so
far sent to the new session, then the caller's audio moved to it in one step). Never: the
transport (the host opens sessions and owns their sockets), wire spellings (`protocol`), what is
remembered (`history`), or retries: a next session that fails is given up, and the current
session's own end is handled by the bridge's reconnect policy.

The host (the bridge) runs the planner as a task for the call's life, tells it when a session
becomes active, and, when a session ends for any reason, claims the ready next session, if any,
instead of reconnecting.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import attrs
import trio

from . import protocol
from .protocol import (
    MalformedEvent,
    ResponseCreated,
    SessionReady,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    UpstreamError,
)

ROLLED_OVER: Final = "rolled over to the next session"
NOT_NEEDED: Final = "the session it was to follow ended first"
REPLY_WAIT_S: Final = 2.0  # after the caller's turn ends, how long a reply may take to start
POLL_S: Final = 0.020  # how often a due switch checks for a turn boundary (one frame)


class Upstream(Protocol):
    """A model session's socket, whatever the transport under it."""

    async def send_message(self, message: str) -> None: ...
    def send_message_nowait(self, message: str) -> bool: ...
    def owes(self) -> bool: ...
    async def flush(self) -> None: ...
    async def get_message(self) -> str | bytes: ...
    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...


class Host(Protocol):
    session_update: str

    async def open_session(self, use: Callable[[Upstream], Awaitable[str]]) -> str:
        """Connect a new session and run `use(socket)` on it; closes it when `use` returns."""

    def between_turns(self) -> bool: ...
    def history_events(self) -> list[str]: ...
    def switch(self, standby: Standby) -> None:
        """Make `standby` (the conversation already sent to it) the session the caller's audio
        goes to, and end the current one."""


class Turns:
    """Whether the conversation is between turns, as far as the model's events tell: the
    caller is not speaking, no reply is about to start, and no tool's result is awaited (its
    output goes to the session that asked, and a new response follows it). Whether the bot is
    still audible is the bridge's to add."""

    def __init__(self) -> None:
        self.caller_speaking = False
        self.reply_due_until = -math.inf  # the caller's turn ended; a reply may still start
        self.tool_running = False

    def see(self, event: protocol.ServerEvent) -> None:
        kind = type(event)
        if kind is SpeechStarted:
            self.caller_speaking = True
        elif kind is SpeechStopped:
            self.caller_speaking = False
            self.reply_due_until = trio.current_time() + REPLY_WAIT_S
        elif kind is ResponseCreated:
            self.reply_due_until = -math.inf
            self.tool_running = False
        elif kind is ToolCall:
            self.tool_running = True

    def quiet(self, now: float) -> bool:
        return not (self.caller_speaking or self.tool_running) and now >= self.reply_due_until


@attrs.define(eq=False)
class Standby:
    """A next session, set up and waiting to take over."""

    ws: Upstream
    # when it began to open: the service counts a session's life from then, not from the
    # switch, which may come as late as the current session's end
    opened_at: float
    released: trio.Event = attrs.field(factory=trio.Event)  # the bridge is done with it
    claimed: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # ends its idle reading
    failure: str | None = None  # it failed after it was claimed, before it took over


class Rollover:
    """Plans each session's successor. `session_active(opened_at)` as each session becomes
    the active one, with when it began to open."""

    def __init__(
        self,
        *,
        session_max_s: float,
        before_s: float,
        gap_s: float,
        setup_timeout_s: float,
        closed: type[Exception],
    ) -> None:
        self.closed = closed  # what the transport raises when a session's socket is closed
        self.session_max_s = session_max_s
        self.before_s = min(before_s, session_max_s / 2)
        self.gap_s = gap_s
        self.setup_timeout_s = setup_timeout_s
        self.standby: Standby | None = None  # set up and not yet claimed
        self._active_opened_at: float | None = None
        self._changed = trio.Event()

    def session_active(self, opened_at: float) -> None:
        self._active_opened_at = opened_at
        self._changed.set()

    def claim(self) -> Standby | None:
        """The ready next session (its idle reading stopped), for the bridge to run; or None."""
        standby, self.standby = self.standby, None
        if standby is not None:
            standby.claimed.cancel()
        return standby

    async def run(
        self, nursery: trio.Nursery, host: Host, log_failure: Callable[[str], None]
    ) -> None:
        """The planner, for the call's life; next sessions run as tasks in `nursery`. The host
        is an argument, not an attribute: the planner is the host's, and holding it back would
        make a cycle that keeps an ended call alive until the cyclic GC runs."""
        if self.session_max_s <= 0:
            return
        while True:
            opened = self._active_opened_at
            if opened is None:
                await self._wait_changed()
                continue
            with trio.move_on_at(opened + self.session_max_s - self.before_s):
                await self._wait_changed()
                continue  # a new session started meanwhile: plan for it instead
            await self._roll_over(nursery, opened, host, log_failure)
            while self._active_opened_at == opened:  # one try a session; then its own end decides
                await self._wait_changed()

    async def _wait_changed(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()

    async def _roll_over(
        self, nursery: trio.Nursery, opened: float, host: Host, log_failure: Callable[[str], None]
    ) -> None:
        ready = trio.Event()
        nursery.start_soon(self._run_standby, ready, host, log_failure)
        await ready.wait()
        while self.standby is not None and self._active_opened_at == opened:
            if not host.between_turns():
                await trio.sleep(POLL_S)
                continue
            standby = self.claim()
            assert standby is not None
            try:
                with trio.move_on_after(self.gap_s) as sending:
                    for event in host.history_events():
                        await standby.ws.send_message(event)
            except self.closed:
                standby.failure = "the next session closed"
            if sending.cancelled_caught:
                standby.failure = "the next session took the conversation too slowly"
            if standby.failure is not None:
                standby.released.set()
                return
            host.switch(standby)
            return
        standby = self.claim()
        if standby is not None:  # the session it was for failed first, and another replaced it
            standby.failure = NOT_NEEDED
            standby.released.set()

    async def _run_standby(
        self, ready: trio.Event, host: Host, log_failure: Callable[[str], None]
    ) -> None:
        opened_at = trio.current_time()
        try:
            reason = await host.open_session(
                lambda ws: self._stand_by(ws, ready, host.session_update, opened_at)
            )
        finally:
            ready.set()
        if reason not in (ROLLED_OVER, NOT_NEEDED):
            log_failure(reason)

    async def _stand_by(
        self, ws: Upstream, ready: trio.Event, session_update: str, opened_at: float
    ) -> str:
        """Set `ws` up as the next session and hold it until claimed and released."""
        try:
            await ws.send_message(session_update)
        except self.closed:
            return "the next session closed during set-up"
        with trio.move_on_after(self.setup_timeout_s) as setting_up:
            reason = await _read_until_failure(ws, self.closed, until_ready=True)
            if reason is not None:
                return reason
        if setting_up.cancelled_caught:
            return "the next session was not set up in time"
        standby = self.standby = Standby(ws, opened_at)
        ready.set()
        with standby.claimed:
            reason = await _read_until_failure(ws, self.closed, until_ready=False)
            if self.standby is standby:
                self.standby = None
            return reason or "the next session ended"
        await standby.released.wait()
        return standby.failure or ROLLED_OVER


async def _read_until_failure(
    ws: Upstream, closed: type[Exception], *, until_ready: bool
) -> str | None:
    """Read and discard a session's events: None once set up (`until_ready`), or why it ended."""
    while True:
        try:
            message = await ws.get_message()
        except closed:
            return "the next session closed"
        try:
            event = protocol.parse(message)
        except MalformedEvent:
            continue
        if type(event) is SessionReady and until_ready and event.updated:
            return None
        if type(event) is UpstreamError and (until_ready or event.fatal):
            return f"the next session failed: {event.type}/{event.code}: {event.message}"
