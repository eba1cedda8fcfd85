"""One call's tool calls in flight: each run in the bridge's nursery, answered, then the model
asked to go on.

Owns: starting a task per function call the model makes (at most `MAX_RUNNING` at once; more
are answered with an error at once), sending each result as a `function_call_output` on the
session the call came from, and asking for the next response (`response.create`) once the
response that made the calls is done and all of its calls are answered: one request for a
response that called several tools; none if that response was cancelled (the caller is
speaking, and the model answers them); and if another response is in flight then, the request
waits for its end (the service refuses a second one). Counts each outcome in
`CallStats.tool_calls` and notes `tool_call` and `tool_result` in the call's record.
Never: runs a tool itself (`tools`), or raises into the bridge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from ...call.interface import Call
from . import protocol
from .protocol import ToolCall
from .tools import Result, Toolbox

MAX_RUNNING: Final = 8  # tool calls of one call at once; a model asking more gets errors
_TURNS_KEPT: Final = 16  # responses remembered (a dropped session's never finish)
_CALLS_KEPT: Final = 64  # call ids remembered: each call is announced twice
REMEMBERED_CHARS: Final = 2000  # of a tool's output, in the note kept for a next session

Send = Callable[[list[str]], Awaitable[bool]]  # events to one session; False: it is gone


@attrs.frozen(eq=False)
class ToolSession:
    """The model session a tool call came from: how to answer on it, and whether a response is
    in flight on it now. Holds no reference to the bridge (no cycle keeps a call alive)."""

    send: Send
    responding: Callable[[], bool]


@attrs.define
class _Turn:
    """One response's tool calls."""

    pending: int = 0
    done: bool = False  # the response is over
    cancelled: bool = False


class ToolCalls:
    def __init__(
        self, call: Call, toolbox: Toolbox, remember: Callable[[str], None] = lambda _: None
    ) -> None:
        self.call = call
        self.toolbox = toolbox
        self.remember = remember  # a note of each result, for the conversation a next session gets
        self._owed: ToolSession | None = None  # a request to go on, waiting for a response's end
        self.offered = toolbox.session_extra(call)
        self.running = 0
        self._turns: dict[str | None, _Turn] = {}
        self._seen: dict[str, None] = {}  # call ids answered (ordered: the oldest goes first)

    def start(self, nursery: trio.Nursery, session: ToolSession, event: ToolCall) -> None:
        """The model called a tool: run it in `nursery` (the bridge's), answering on `session`."""
        name, call_id = event.name, event.call_id
        if call_id in self._seen or (name is None and call_id):
            return  # answered already, or to come with its name (response.output_item.done)
        self.call.observer.note("tool_call", name=name, call_id=call_id, arguments=event.arguments)
        if not call_id or not name:
            self.call.log.warning("a tool call without a name or call_id (%r); not answered", name)
            self.call.stats.tool_calls["error"] += 1
            return
        self._seen[call_id] = None
        if len(self._seen) > _CALLS_KEPT:
            del self._seen[next(iter(self._seen))]
        turn = self._turn(event.response_id)
        turn.pending += 1
        if self.running >= MAX_RUNNING:
            result = Result('{"error":"too many tool calls at once"}', "error")
            nursery.start_soon(self._answer, session, name, call_id, turn, result, None)
            return
        self.running += 1
        nursery.start_soon(self._run, session, name, call_id, event.arguments or "", turn)

    async def response_done(
        self, session: ToolSession, response_id: str | None, status: str | None
    ) -> None:
        """A response ended: if it called tools and all are answered, ask for the next one."""
        owed, self._owed = self._owed, None
        if owed is session:  # the same session: its answers are there
            await self._continue(session)
        turn = self._turns.get(response_id) if response_id is not None else None
        if turn is None:
            return
        turn.done, turn.cancelled = True, status == "cancelled"
        await self._maybe_continue(session, turn)

    async def _run(
        self, session: ToolSession, name: str, call_id: str, arguments: str, turn: _Turn
    ) -> None:
        started = trio.current_time()
        try:
            self.call.log.info("the model calls %s", name)
            result = await self.toolbox.run(self.call, name, arguments)
        finally:
            self.running -= 1
        await self._answer(session, name, call_id, turn, result, started)

    async def _answer(
        self,
        session: ToolSession,
        name: str,
        call_id: str,
        turn: _Turn,
        result: Result,
        started: float | None,
    ) -> None:
        self.call.stats.tool_calls[result.outcome] += 1
        took = 0.0 if started is None else round((trio.current_time() - started) * 1000, 1)
        self.call.observer.note(
            "tool_result", name=name, call_id=call_id, outcome=result.outcome, ms=took
        )
        turn.pending -= 1
        output = result.output
        if len(output) > REMEMBERED_CHARS:
            output = output[:REMEMBERED_CHARS] + "…"
        self.remember(f"The tool {name} was called and returned: {output}")
        if await session.send([protocol.function_call_output(call_id, result.output)]):
            await self._maybe_continue(session, turn)

    async def _maybe_continue(self, session: ToolSession, turn: _Turn) -> None:
        if turn.pending or not turn.done:
            return
        for key in [k for k, t in self._turns.items() if t is turn]:
            del self._turns[key]
        if not turn.cancelled:
            await self._continue(session)

    async def _continue(self, session: ToolSession) -> None:
        if session.responding():
            self._owed = session
        else:
            await session.send([protocol.create_response()])

    def _turn(self, response_id: str | None) -> _Turn:
        if response_id is None:  # no response to wait for: go on once answered
            return _Turn(done=True)
        turn = self._turns.get(response_id)
        if turn is None:
            turn = self._turns[response_id] = _Turn()
            if len(self._turns) > _TURNS_KEPT:
                del self._turns[next(iter(self._turns))]
        return turn
