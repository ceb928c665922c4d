"""A unit: one running function call or process inside a Lua state.

The unit owns its main thread, the threads it spawned (``coroutine.spawn``), its timers
and the calls it is waiting on. Lua threads yield requests (``core.request``); the unit
answers each request at once when it can, or parks the thread until a channel, timer or
call wakes it. One place decides when Lua runs: :meth:`Unit.step`.

A unit ends when its main thread returns or raises; whatever it still owns is stopped
then (spawned threads are killed, timers cancelled, pending calls cancelled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ._answer import BLOCKED, Answer, Outcome, Pending
from ._channel import Channel, Handed, ThreadWaiter, Waiter, select
from ._errors import Kind, MoonwireError, internal, invalid
from ._holdings import Future, Holdings, Timer
from ._mailbox import Mailbox
from ._ready import NOTHING_READY as _NOTHING_READY
from ._ready import Ready, give_back, ready_queue
from ._security_context import Security
from ._state import LuaState
from ._trace import SPANS, new_traceparent, trace_id
from ._unit_process import PROCESS_OPS, NoProcesses, ProcessRequests, ProcessServices
from ._values import to_lua, to_python

_BLOCKED = BLOCKED


class Services(Protocol):
    """What a unit needs from the node it runs on."""

    def call(self, caller: Unit | None, target: str, args: list[Any], context: dict[str, Any],
             options: dict[str, Any], security: Security | None = None) -> Answer:
        """Call function ``target``, running as ``security`` (the caller's actor and scope)."""
        ...


class NoServices:
    """For units that run with no node around them (tests, tools)."""

    def call(self, caller: Unit | None, target: str, args: list[Any], context: dict[str, Any],
             options: dict[str, Any], security: Security | None = None) -> Outcome:
        return Outcome(error=MoonwireError(f"function {target} not found", Kind.NOT_FOUND, retryable=False))


_NO_PROCESSES = NoProcesses()
_NO_CONTEXT: dict[str, Any] = {}  # shared by every unit without context: never written



TURN = 0.02
"""Seconds of Lua one step of a unit, or one turn of a host's scheduler, may chain before
the event loop gets a turn (beyond the one resume running when it is reached, which the
instruction budget bounds)."""


class Unit(ProcessRequests):
    """One call or process running in ``state``.

    A function call: :meth:`begin`, then ``await`` :meth:`finish` (the caller's task
    drives it). A process: :meth:`start`, after which its host's scheduler drives it:
    ``notify`` is called whenever the unit has a thread ready to run, and the scheduler
    calls :meth:`step`. Either way ``on_end`` is called once when the unit ends.
    """

    __slots__ = (
        "state", "label", "context", "services", "processes", "loop", "main", "threads", "ready", "_holdings",
        "outcome", "_wakeup", "notify", "on_end", "scheduled", "pid", "mailbox",
        "trap_links", "upgradable", "frame_id", "record", "preempted", "security", "trace", "span",
    )

    def __init__(self, state: LuaState, label: str, *, context: dict[str, Any] | None = None,
                 services: Services | None = None, processes: ProcessServices | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, security: Security | None = None,
                 trace: str | None = None) -> None:
        self.state = state
        self.label = label
        self.context: dict[str, Any] = context if context is not None else _NO_CONTEXT
        """Read only: a unit's context never changes (a callee's is a merged copy)."""
        self.security = security
        """The actor and scope the unit runs as (wippy-modules §5.3): not context values
        (``ctx`` does not show them), but passed on the same way."""
        self.services: Services = services if services is not None else NoServices()
        self.processes: ProcessServices = processes if processes is not None else _NO_PROCESSES
        self.loop = loop or asyncio.get_running_loop()
        self.main: int | None = None
        self.threads: set[int] = set()
        self.ready: Ready | tuple[()] = _NOTHING_READY
        """The threads to resume, in order, with their resume values (a deque while any are)."""
        self._holdings: Holdings | None = None
        self.outcome: Outcome | None = None
        # Most calls finish inside begin() and never wait: create the event on demand.
        self._wakeup: asyncio.Event | None = None
        self.notify: Callable[[Unit], None] | None = None
        """Set by a scheduler: called when a thread of this unit becomes ready."""
        self.on_end: Callable[[Unit], None] | None = None
        """Called once, when the unit has ended (``outcome`` is set)."""
        self.scheduled = False
        """Owned by the scheduler: the unit is in its run queue."""
        self.preempted = False
        """Its last step ended because its turn was up, not because it waits: the
        scheduler runs it before the units queued meanwhile."""
        self.pid: str | None = None
        self.mailbox: Mailbox | None = None
        self.trap_links = False
        self.upgradable = False
        """``set_options{upgradable = true}``: the process is told (OUTDATED) when its code changes."""
        self.frame_id: str | None = None
        self.record: Any = None
        """The node's record of this unit as a process, if it is one."""
        self.trace = trace
        """The ``traceparent`` of the work under way (``_trace.py``): the call's, or for a
        process the one of the message it took last; None until one comes or is needed."""
        self.span: Any = None
        """The span of a function call, when a span hook is installed (``_trace.py``)."""

    def traceparent(self) -> str:
        """The unit's trace context, a new trace if it has none yet (it logs, calls,
        sends or spawns for the first time)."""
        trace = self.trace
        if trace is None:
            trace = self.trace = new_traceparent()
        return trace

    def log_fields(self) -> dict[str, Any]:
        """What a log record about this unit carries (``entry``, ``pid``, ``trace_id``)."""
        fields = {"entry": self.label, "trace_id": trace_id(self.traceparent())}
        if self.pid is not None:
            fields["pid"] = self.pid
        return fields

    # ------------------------------------------------------------ driving

    def begin(self, fn: Any, args: list[Any]) -> Outcome | None:
        """Start the main thread and run until every thread waits; the outcome if it ended."""
        hook = SPANS.hook
        if hook is not None and self.state.random is None:  # a call; a workflow run (it replays) is none
            self.span, self.trace = hook.begin(self.label, self.trace)
        self._step((fn, self._lua_args(args)))
        return self.outcome

    async def finish(self) -> Outcome:
        """Run until the main thread ends. Cancelling this cancels the unit."""
        try:
            while self.outcome is None:
                # A thread may have been woken before this task first ran (the event
                # did not exist then): only wait when nothing is ready.
                if not self.ready:
                    if self._wakeup is None:
                        self._wakeup = asyncio.Event()
                    await self._wakeup.wait()
                    self._wakeup.clear()
                else:
                    await asyncio.sleep(0)  # the last step used its turn: let the loop run
                self.step()
            return self.outcome
        except asyncio.CancelledError:
            self._end(Outcome(error=MoonwireError("canceled", Kind.CANCELED, retryable=False)))
            raise
        finally:
            await self._await_children()

    async def run(self, fn: Any, args: list[Any]) -> Outcome:
        self.begin(fn, args)
        return await self.finish()

    def start(self, fn: Any, args: list[Any]) -> None:
        """Create the main thread and hand the unit to its scheduler (``notify``); it
        first runs when the scheduler steps it."""
        self._launch(fn, self._lua_args(args))

    def _launch(self, fn: Any, lua_args: tuple[Any, ...]) -> None:
        self.main = self.state.spawn(fn, self._box())
        self.threads.add(self.main)
        self._ready(self.main, lua_args)  # the first resume passes the arguments
        if self.notify is not None:
            self.notify(self)

    def replace(self, fn: Any, args: list[Any]) -> None:
        """``process.upgrade``: end every thread, timer, call and subscription of the
        running code, and start ``fn(*args)`` as the unit's new main thread. The unit
        keeps its PID, context, security and options, and its mailbox keeps what the old
        code had not received (``Mailbox.reset``). Nothing the old code waited for can
        resume the new one: thread ids are never reused (a late wake-up finds no such
        thread) and every pending answer, timer and child task is dropped.

        Raises:
            MoonwireError: Lua cannot hold ``args`` (nothing was replaced then).
        """
        lua_args = self._lua_args(args)
        # Items a mailbox channel handed to a thread that has not run since: not received.
        handed = [values.item for _, values in self.ready if isinstance(values, Handed)]
        old = list(self.threads)
        self.threads.clear()
        self.ready = _NOTHING_READY
        for tid in old:
            self.state.kill(tid)
        if self._holdings is not None:
            holdings, self._holdings = self._holdings, None
            holdings.release()
        if self.mailbox is not None:
            self.mailbox.reset(handed)
        self._launch(fn, lua_args)

    def _lua_args(self, args: list[Any]) -> tuple[Any, ...]:
        return tuple([to_lua(self.state, a) for a in args])

    def abort(self, error: MoonwireError) -> None:
        """End the unit now with ``error`` (terminate, a linked failure): its threads are
        killed wherever they wait."""
        self._end(Outcome(error=error))

    def kick(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def wake(self, tid: int, values: tuple[Any, ...]) -> None:
        if tid in self.threads:
            self._ready(tid, values)
            if self.notify is not None:
                self.notify(self)
            elif self._wakeup is not None:
                self._wakeup.set()

    def _ready(self, tid: int, values: tuple[Any, ...]) -> None:
        ready = self.ready
        if ready is _NOTHING_READY:
            self.ready = ready = ready_queue()
        ready.append((tid, values))  # type: ignore[union-attr]  # not the empty tuple: a deque

    def step(self) -> None:
        """Resume ready threads until none is ready or the unit ended."""
        self._step(None)

    def _step(self, main: tuple[Any, tuple[Any, ...]] | None) -> None:
        """:meth:`step`, first starting the main thread ``(fn, args)`` when given."""
        state = self.state
        previous, state.current = state.current, self
        try:
            if main is not None:
                self.main, outcome = state.start(main[0], *main[1])
                self.threads.add(self.main)
                self._handle(self.main, outcome)
            # The instruction budget bounds one resume; a thread whose requests are
            # answered at once (a local call, a send to itself) would chain resumes, each
            # with a fresh budget, without the loop ever getting a turn. So a step ends
            # after TURN seconds, leaving the rest ready for the next turn.
            turn_ends = time.perf_counter() + TURN
            while self.ready and self.outcome is None:
                tid, values = self.ready.popleft()  # type: ignore[union-attr]  # not empty: a deque
                self._handle(tid, state.resume(tid, *values))
                if self.ready and time.perf_counter() > turn_ends:
                    if self.notify is not None:
                        # A process: first in its host's run queue again, so the loop gets
                        # a turn and nothing else changes (the processes it woke or spawned
                        # still run after it, as they would have without the cut).
                        self.preempted = True
                        self.notify(self)
                    break  # a call: finish() yields the loop before stepping again
            if not self.ready:  # it waits: hold no queue meanwhile
                give_back(self.ready)
                self.ready = _NOTHING_READY
        finally:
            state.current = previous

    def _handle(self, tid: int, outcome: tuple[Any, ...]) -> None:
        """Act on what thread ``tid`` did when it last ran (see ``core.resume``)."""
        tag = outcome[0]
        if tag == b"request":
            op = _OPS.get(outcome[1])
            if op is None:
                self._thread_failed(tid, internal(f"unknown request {outcome[1]!r}"))
                return
            try:
                answer = op(self, tid, *outcome[2:])
            except MoonwireError as err:
                self._thread_failed(tid, err)
                return
            if answer is not _BLOCKED:
                self._ready(tid, answer)
        elif tag == b"return":
            self.threads.discard(tid)
            if tid == self.main:
                self._end(self._returned(outcome[1:]))
        elif tag == b"error":
            self.threads.discard(tid)
            error = self.state.to_error(outcome[1])
            if len(outcome) > 2 and error.stack is None and isinstance(outcome[2], bytes):
                error.stack = outcome[2].decode(errors="replace")
            self._thread_failed(tid, error)
        else:
            self.threads.discard(tid)
            self._thread_failed(tid, invalid("attempt to yield from outside a coroutine"))

    def _returned(self, values: tuple[Any, ...]) -> Outcome:
        # wippy-surface §3.5: `return v, err` with a non-nil err is an abnormal exit.
        try:
            value = to_python(self.state, values[0]) if values else None
            err = values[1] if len(values) > 1 else None
            if err is not None:
                return Outcome(value=None, error=self.state.to_error(err))
        except MoonwireError as conversion:
            return Outcome(error=conversion)
        return Outcome(value=value)

    def _thread_failed(self, tid: int, error: MoonwireError) -> None:
        self.threads.discard(tid)
        self.state.kill(tid)
        if tid != self.main:  # a spawned coroutine's error takes the unit down: let it crash
            error = MoonwireError(f"coroutine failed: {error.message}", error.kind, retryable=error.retryable,
                                  details=error.details, stack=error.stack)
        self._end(Outcome(error=error, raised=True))

    def _end(self, outcome: Outcome) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self.span is not None and (hook := SPANS.hook) is not None:
            hook.end(self.span, outcome.error)
        if self.threads:
            for tid in self.threads:
                self.state.kill(tid)
            self.threads.clear()
        self.ready = _NOTHING_READY
        if self._holdings is not None:
            self._holdings.release()
        if self.mailbox is not None:
            self.mailbox.close()
        self.kick()
        if self.on_end is not None:
            self.on_end(self)

    def holdings(self) -> Holdings:
        if self._holdings is None:
            self._holdings = Holdings()
        return self._holdings

    async def _await_children(self) -> None:
        if self._holdings is None:
            return
        children = list(self._holdings.children)
        for task in children:
            task.cancel()
        if children:
            await asyncio.gather(*children, return_exceptions=True)

    def own(self, awaitable: Awaitable[Any], on_done: Callable[[asyncio.Task[Any]], None]) -> asyncio.Task[Any]:
        """Run ``awaitable`` as a child task of this unit; cancelled when the unit ends."""
        task = asyncio.ensure_future(awaitable)
        children = self.holdings().children
        children.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            children.discard(t)
            on_done(t)

        task.add_done_callback(done)
        return task

    # ------------------------------------------------------------ requests

    def _box(self) -> Any:
        """The Lua box of this process's mailbox, which its threads send as (or None)."""
        return self.mailbox.box if self.mailbox is not None else None

    def _op_spawn(self, tid: int, fn: Any) -> tuple[Any, ...]:
        child = self.state.spawn(fn, self._box())
        self.threads.add(child)
        self._ready(child, ())
        return (True,)

    def _op_yield(self, tid: int) -> object:
        # To the back of the queue: the thread runs again after whatever else is ready.
        self.loop.call_soon(self.wake, tid, ())
        return _BLOCKED

    def _op_sleep(self, tid: int, ns: int) -> object:
        self.holdings().sleeping[tid] = self.loop.call_later(max(ns, 0) / 1e9, self._wake_sleeper, tid)
        return _BLOCKED

    def _wake_sleeper(self, tid: int) -> None:
        del self.holdings().sleeping[tid]
        self.wake(tid, ())

    def _op_timer(self, tid: int, channel: Channel, ns: int, periodic: bool) -> tuple[Any, ...]:
        return (Timer(self, channel, int(ns), bool(periodic)),)

    def _waiter(self, tid: int) -> Waiter:
        waiter = ThreadWaiter(self, tid)
        # No thread can appear while the only one waits: only then may a sibling upgrade
        # the process before this thread gets what a mailbox channel hands it.
        if len(self.threads) > 1:
            waiter.keep = True
        return waiter

    def _op_chan_send(self, tid: int, channel: Channel, value: Any) -> object:
        done = channel.try_send(value)
        if done is not None:
            return done
        channel.wait_send(self._waiter(tid), value)
        return _BLOCKED

    def _op_chan_recv(self, tid: int, channel: Channel) -> object:
        got = channel.try_receive()
        if got is not None:
            return got
        channel.wait_receive(self._waiter(tid))
        return _BLOCKED

    def _op_box_wait(self, tid: int, channel: Any) -> object:
        # A receive from an inbox whose box is empty (the local path, lua/_box.py).
        channel.wait_empty(self._waiter(tid))
        return _BLOCKED

    def _op_select(self, tid: int, specs: Any, has_default: bool) -> object:
        cases = []
        for index in range(1, len(specs) + 1):
            spec = specs[index]
            cases.append((spec[1].decode(), spec[2], spec[3]))
        done = select(cases, bool(has_default), self._waiter(tid))
        return _BLOCKED if done is None else done

    def _call_args(self, args: tuple[Any, ...], context: Any, options: Any,
                   security: Any) -> tuple[list[Any], dict[str, Any], dict[str, Any], Security | None]:
        state = self.state
        py_args = [to_python(state, a) for a in args]
        merged = dict(self.context)
        if context is not None:
            merged.update(to_python(state, context))
        py_options = to_python(state, options) if options is not None else {}
        # The callee runs as the caller, unless the executor says otherwise (with_actor/with_scope).
        runs_as = self.security if security is None else Security.overlay(
            self.security, Security.from_wire(to_python(state, security)))
        return py_args, merged, py_options if isinstance(py_options, dict) else {}, runs_as

    def _answer(self, outcome: Outcome) -> tuple[Any, ...]:
        if outcome.ok:
            return (to_lua(self.state, outcome.value),)
        assert outcome.error is not None
        return (None, self.state.make_error(outcome.error))

    def _when_answered(self, answer: Answer, callback: Callable[[Outcome], None]) -> Callable[[], None]:
        """Call ``callback`` with the outcome of a Pending or awaitable answer, unless the
        unit ends first. Returns a function that stops waiting for it."""
        if isinstance(answer, Pending):
            pending = self.holdings().pending
            pending.add(answer)
            answer.owner = pending
            answer.listen(callback)
            return answer.drop

        def done(task: asyncio.Task[Outcome]) -> None:
            if not task.cancelled():
                error = task.exception()
                callback(task.result() if error is None else Outcome(error=_as_error(error)))

        return self.own(answer, done).cancel

    def _reply(self, tid: int, answer: Answer) -> object:
        """Resume values now for an Outcome; else park ``tid`` until the answer settles."""
        if isinstance(answer, Outcome):
            return self._answer(answer)
        self._when_answered(answer, lambda outcome: self.wake(tid, self._answer(outcome)))
        return _BLOCKED

    def _op_call(self, tid: int, target: bytes, context: Any, options: Any, security: Any, *args: Any) -> object:
        py_args, merged, py_options, runs_as = self._call_args(args, context, options, security)
        return self._reply(tid, self.services.call(self, target.decode(), py_args, merged, py_options, runs_as))

    def _op_async(self, tid: int, target: bytes, context: Any, options: Any, security: Any, channel: Channel,
                  *args: Any) -> object:
        py_args, merged, py_options, runs_as = self._call_args(args, context, options, security)
        future = Future(self, channel)
        answer = self.services.call(self, target.decode(), py_args, merged, py_options, runs_as)
        if isinstance(answer, Outcome):
            future.settle(answer)
        else:
            future.abandon = self._when_answered(answer, future.settle)
        return (future,)


# The requests a Lua thread can make, by name (see `core.request` in _core.lua).
_OPS: dict[bytes, Callable[..., Any]] = {
    b"spawn": Unit._op_spawn, b"yield": Unit._op_yield, b"sleep": Unit._op_sleep, b"timer": Unit._op_timer,
    b"chan_send": Unit._op_chan_send, b"chan_recv": Unit._op_chan_recv, b"select": Unit._op_select,
    b"box_wait": Unit._op_box_wait,
    b"call": Unit._op_call, b"async": Unit._op_async, **PROCESS_OPS,
}


def _as_error(error: BaseException) -> MoonwireError:
    if isinstance(error, MoonwireError):
        return error
    return internal(f"{type(error).__name__}: {error}")
