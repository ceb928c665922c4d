"""Functions: pools of Lua states per ``function.lua`` entry, ``funcs.call`` routing, and
serving every local function to the cluster on its NATS queue group (DESIGN §8).

A call to a function this node defines runs here; any other goes to ``mw.fn.<id>``,
where one of the nodes that define it answers. Nobody serving it is a NotFound at once
(NATS no-responders), not a timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from moonwire.broker import MSGPACK_HEADERS, REPLIES_HEADER, Client, Outbox, Requests, Subjects, TaskSet
from moonwire.lua import (Answer, Kind, Limits, LuaCode, LuaState, MoonwireError, NoProcesses, Outcome, Pending,
                          ProcessServices, Registry, Security, Unit, check_portable, internal, invalid, not_found,
                          settled)

from ..project import FunctionEntry, Project, ProjectEntries, is_entry_id
from ._options import timed_out, timeout_seconds as _timeout_seconds
from ._process_functions import ProcessFunction, process_functions
from ._served import ServedCalls
from ..telemetry import CallCounts
from ..wire import (CONTENT_TYPE, DeadLetter, Unanswered, encode_reply, pack, reply_outcome,
                    request_trace, unpack)
from ._calls import DEFAULT_REMOTE_TIMEOUT, call_unanswered
from ._code import CodeLoader

log = logging.getLogger("moonwire.functions")


QUEUE_GROUP = "moonwire"




@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``meta.options.retry`` (wippy-surface §1.3): retry retryable errors with backoff."""

    max_attempts: int
    initial_delay: float
    backoff_factor: float

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RetryPolicy | None:
        retry = (meta.get("options") or {}).get("retry")
        if not retry:
            return None
        delay = retry.get("initial_delay", 100)
        # The unit is unstated upstream; the example uses 100. A number is read as
        # milliseconds, as funcs options are; a string is a Go duration.
        seconds = delay / 1000 if isinstance(delay, (int, float)) else _timeout_seconds({"timeout": delay}) or 0.0
        return cls(max(int(retry.get("max_attempts", 1)), 1), seconds, float(retry.get("backoff_factor", 2.0)))


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    entry: str
    type: str
    workers: int
    idle: int
    queued: int
    max_workers: int | None
    calls: int


class FunctionPool:
    """The Lua states that run one function entry, and the limit on how many run at once.

    ``static`` keeps ``workers`` states; ``lazy`` and ``adaptive`` grow to ``max_size``
    and retire states idle for ``idle_timeout``; ``inline`` has no limit. Beyond the
    limit, up to ``buffer`` calls wait; more fail at once with Unavailable (retryable).
    A state that ran out of memory is retired, not reused.
    """

    def __init__(self, entry: FunctionEntry, code: LuaCode, functions: Functions) -> None:
        self.entry = entry
        self.code = code
        self.functions = functions
        pool = entry.pool
        self.kind = pool.effective_type
        self.max_workers: int | None = {
            "static": pool.effective_workers, "lazy": pool.max_size, "adaptive": pool.max_size, "inline": None,
        }[self.kind]
        self.queue_limit = pool.effective_buffer
        self.idle_timeout = pool.idle_timeout
        self.limits = Limits(memory=pool.memory_limit, instructions=pool.instruction_budget)
        self.retry = RetryPolicy.from_meta(entry.meta)
        self._idle: list[tuple[LuaState, Any, float]] = []
        self._total = 0
        self._waiters: deque[asyncio.Future[tuple[LuaState, Any]]] = deque()
        self._calls = 0
        self.stats = functions.calls.of(entry.id)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(self.entry.id, self.kind, self._total, len(self._idle), len(self._waiters),
                              self.max_workers, self._calls)

    def prewarm(self) -> None:
        if self.kind == "static":
            for _ in range(self.max_workers or 0):
                state, fn = self._new_worker()
                self._idle.append((state, fn, time.monotonic()))

    def _new_worker(self) -> tuple[LuaState, Any]:
        state = LuaState(self.limits, log=log, registry=self.functions.registry)
        fn = state.load(self.code)  # a syntax error fails this call, and only calls of this entry
        self._total += 1
        return state, fn

    def _try_acquire(self) -> tuple[LuaState, Any] | None:
        if self._idle:
            state, fn, _ = self._idle.pop()
            return state, fn
        if self.max_workers is None or self._total < self.max_workers:
            return self._new_worker()
        return None

    async def _acquire(self) -> tuple[LuaState, Any]:
        worker = self._try_acquire()
        if worker is not None:
            return worker
        if len(self._waiters) >= self.queue_limit:
            raise MoonwireError(f"function {self.entry.id} is busy: {self._total} workers running and "
                                f"{len(self._waiters)} calls queued", Kind.UNAVAILABLE, retryable=True)
        waiter: asyncio.Future[tuple[LuaState, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result()[0], waiter.result()[1])
            raise

    def _release(self, state: LuaState, fn: Any) -> None:
        if state.poisoned:
            self._total -= 1
            worker: tuple[LuaState, Any] | None = None
            if self._waiters:
                try:
                    worker = self._new_worker()
                except MoonwireError as err:
                    self._fail_next_waiter(err)
        else:
            worker = (state, fn)
        while worker is not None and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        if worker is not None:
            now = time.monotonic()
            self._idle.append((worker[0], worker[1], now))
            self._reap(now)

    def _fail_next_waiter(self, err: MoonwireError) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(err)
                return

    def _reap(self, now: float) -> None:
        # Idle workers are taken from the end, so the longest idle is first.
        if self.kind == "static" or now - self._idle[0][2] < self.idle_timeout:
            return
        keep = [item for item in self._idle if now - item[2] < self.idle_timeout]
        self._total -= len(self._idle) - len(keep)
        self._idle = keep

    def call(self, args: list[Any], context: dict[str, Any], options: dict[str, Any],
             security: Security | None = None, trace: str | None = None) -> Outcome | Awaitable[Outcome]:
        """Run the function (as ``security``'s actor and scope, in ``trace``): an Outcome
        when it finished without waiting, else an awaitable. Counted (and timed) in ``stats``."""
        started = time.perf_counter()
        self._calls += 1
        try:
            timeout = _timeout_seconds(options)
            if self.retry is None and timeout is None:
                worker = self._try_acquire()
                if worker is not None:
                    return self.stats.timed(started, self._start(*worker, args, context, security, trace))
        except MoonwireError as err:  # e.g. the chunk did not load: raised, not returned
            return self.stats.timed(started, Outcome(error=err, raised=True))
        return self.stats.timed(started, self._call_with_policy(args, context, timeout, security, trace))

    def _start(self, state: LuaState, fn: Any, args: list[Any], context: dict[str, Any],
               security: Security | None, trace: str | None) -> Outcome | Awaitable[Outcome]:
        """Run on an acquired worker: the Outcome when it finished without waiting, else
        an awaitable that finishes it. The worker goes back to the pool either way."""
        unit = Unit(state, self.entry.id, context=context, services=self.functions,
                    processes=self.functions.processes, security=security, trace=trace)
        try:
            outcome = unit.begin(fn, args)
        except BaseException:  # arguments Lua cannot hold: the worker goes back, not lost
            self._release(state, fn)
            raise
        if outcome is not None:
            self._release(state, fn)
            return outcome
        return self._finish(unit, state, fn)

    async def _finish(self, unit: Unit, state: LuaState, fn: Any) -> Outcome:
        try:
            return await unit.finish()
        finally:
            self._release(state, fn)

    async def _run_once(self, args: list[Any], context: dict[str, Any], security: Security | None,
                        trace: str | None) -> Outcome:
        state, fn = await self._acquire()
        return await settled(self._start(state, fn, args, context, security, trace))

    async def _call_with_policy(self, args: list[Any], context: dict[str, Any], timeout: float | None,
                                security: Security | None, trace: str | None) -> Outcome:
        attempts = self.retry.max_attempts if self.retry else 1
        delay = self.retry.initial_delay if self.retry else 0.0
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout(timeout):
                    outcome = await self._run_once(args, context, security, trace)
            except TimeoutError:
                assert timeout is not None
                outcome = Outcome(error=timed_out(self.entry.id, timeout))
            except MoonwireError as err:
                outcome = Outcome(error=err, raised=True)
            if outcome.ok or attempt == attempts or not outcome.error or not outcome.error.is_retryable():
                return outcome
            log.info("%s failed (attempt %d of %d): %s; retrying in %.3fs", self.entry.id, attempt, attempts,
                     outcome.error.message, delay)
            await asyncio.sleep(delay)
            delay *= self.retry.backoff_factor if self.retry else 1.0
        raise AssertionError("unreachable")


class Functions:
    """Every function this node can call (implements the Lua units' ``Services``).

    Without a broker (``requests`` None) only local functions exist.
    """

    def __init__(self, project: Project, subjects: Subjects, nats: Client | None = None,
                 requests: Requests | None = None, outbox: Outbox | None = None,
                 dead_letter: DeadLetter | None = None) -> None:
        self.project = project
        self.subjects = subjects
        self.nats = nats
        self.requests = requests
        self.outbox = outbox
        self.code = CodeLoader(project)
        self.registry = Registry(ProjectEntries(project))
        """The project's entries and environment variables for every Lua state of this
        node (``registry``, ``env``): one, so memory storages are the node's."""
        self.calls = CallCounts()  # what each local function ran: the metrics, $SRV.STATS
        self.pools: dict[str, FunctionPool] = {}
        for entry in project.of_kind("function.lua"):
            assert isinstance(entry, FunctionEntry)
            self.pools[entry.id] = FunctionPool(entry, self.code.code(entry), self)
        self._subscriptions: dict[str, Subscription] = {}
        self._inflight = TaskSet(log)
        """Calls that did not finish at once, each answered by its own task."""
        self.dead_letter = dead_letter
        """Where a call without a reply subject that cannot be served goes."""
        self.processes: ProcessServices = NoProcesses()
        """The process API of function calls: the node's process table (:meth:`use_processes`)."""
        self.process_functions = process_functions(project, self)
        """Process entries with a ``default_host``, called and served as functions."""
        self.served: ServedCalls | None = None
        """The calls served for other nodes that did not finish at once (set by the node)."""

    # ------------------------------------------------------------ calling

    def call(self, caller: Unit | None, target: str, args: list[Any], context: dict[str, Any],
             options: dict[str, Any], security: Security | None = None, trace: str | None = None) -> Answer:
        pool = self.pools.get(target) or self.process_functions.get(target)
        trace = caller.traceparent() if caller is not None else trace
        if pool is not None:
            return pool.call(args, context, options, security, trace)
        if not is_entry_id(target):  # it names no entry anywhere, and must not reach a subject
            return Outcome(error=invalid(f"invalid function id {target!r}: expected namespace:name"))
        if self.requests is None:
            return Outcome(error=not_found(f"function {target} not found"))
        try:
            wait = _timeout_seconds(options) or DEFAULT_REMOTE_TIMEOUT
        except MoonwireError as err:
            return Outcome(error=err)
        call = _RemoteCall(target, wait)
        body: dict[str, Any] = {"args": args, "ctx": context, "trace": trace}
        if security is not None:  # optional: a node that does not know the field ignores it
            body["security"] = security.to_wire()
        call.abandon = self.requests.request_nowait(
            self.subjects.function(target), pack(body), timeout=wait,
            headers=self.requests.headers, callback=call.on_reply)
        return call

    # ------------------------------------------------------------ serving

    def use_processes(self, processes: ProcessServices) -> None:
        """The process API of function calls from now on. Functions and processes use
        each other (a function may spawn, a process may call): the process table is
        built on these functions and hands itself back here as soon as it exists, before
        anything (a workflow activity, a spawn from another node) can call a function."""
        self.processes = processes

    async def serve(self) -> None:
        """Subscribe each local function to its queue group (and warm static pools)."""
        for pool in self.pools.values():
            pool.prewarm()
        if self.nats is None:
            return
        served = [*self.pools, *self.process_functions]
        for entry_id in served:
            await self.subscribe(entry_id)
        if served:
            log.info("serving %d function(s): %s", len(served), ", ".join(sorted(served)))

    async def subscribe(self, entry_id: str) -> None:
        """Serve ``entry_id`` on its queue group (from its pool as it is at each request).
        Once: an entry that turns from a process-function into a function (a reload) is
        subscribed already, and a second subscription would outlive its removal."""
        if self.nats is not None and entry_id not in self._subscriptions:
            self._subscriptions[entry_id] = await self.nats.subscribe_direct(
                self.subjects.function(entry_id), functools.partial(self._serve_current, entry_id), queue=QUEUE_GROUP)

    def served_entries(self) -> list[str]:
        """The entry ids whose ``mw.fn.<id>`` this node serves now (its ``nats micro`` endpoints)."""
        return list(self._subscriptions)

    async def unsubscribe(self, entry_id: str) -> None:
        if (subscription := self._subscriptions.pop(entry_id, None)) is not None:
            await subscription.unsubscribe()

    def _serve_current(self, entry_id: str, msg: Msg) -> None:
        """A request for ``entry_id``, served by its pool (or process entry) as it is now
        (a reload may have replaced it, or removed it while the request was on its way)."""
        pool = self.pools.get(entry_id) or self.process_functions.get(entry_id)
        if pool is not None:
            self._serve_one(msg, pool)
        elif msg.reply and self.outbox is not None:
            body, headers = encode_reply(Outcome(error=not_found(f"function {entry_id} not found")),
                                         (msg.headers or {}).get(CONTENT_TYPE))
            self.outbox.publish_nowait(msg.reply, body, headers=headers)

    def _serve_one(self, msg: Msg, pool: FunctionPool | ProcessFunction) -> None:
        # Called from the connection's read loop: answer at once when the call finishes
        # without waiting, else hand it to a task owned by this service. Its one body:
        # nothing raises into the read loop; every call ends in a reply (or, without a
        # reply subject, a dead letter when it cannot run).
        content_type = (msg.headers or {}).get(CONTENT_TYPE)
        try:
            data = unpack(msg.data, content_type)
            args, context = parse_request(data)
            check_portable(args)
            if context:
                check_portable(context)
            # Only the full form ({"args", "ctx", "security"?}) carries an actor and scope.
            full = isinstance(data, dict) and "args" in data
            security = Security.from_wire(data.get("security")) if full else None
            trace = request_trace(data if full else None, msg.headers)
        except MoonwireError as err:
            log.warning("bad request for %s: %s", pool.entry.id, err.message)
            self._reply(msg, content_type, pool, Outcome(error=err), bad_request=True)
            return
        try:
            result = pool.call(args, context, {}, security, trace)
        except Exception as err:  # noqa: BLE001 - a bug must not reach the read loop; the caller is told
            log.exception("serving a call to %s failed", pool.entry.id)
            result = Outcome(error=internal(f"serving the call failed: {type(err).__name__}: {err}"))
        if isinstance(result, Outcome):
            self._reply(msg, content_type, pool, result)
            return
        task = self._inflight.start(self._reply_later(msg, content_type, pool, result), f"serving {pool.entry.id}")
        if self.served is not None:  # a calling node is told who took it, and can give it up
            self.served.took(msg, task)

    async def _reply_later(self, msg: Msg, content_type: str | None, pool: FunctionPool | ProcessFunction,
                           result: Answer) -> None:
        try:
            outcome = await settled(result)
        except MoonwireError as err:
            outcome = Outcome(error=err)
        except Exception as err:  # noqa: BLE001 - the caller is told, not left to time out
            log.exception("serving a call to %s failed", pool.entry.id)
            outcome = Outcome(error=internal(f"serving the call failed: {type(err).__name__}: {err}"))
        self._reply(msg, content_type, pool, outcome)

    def _reply(self, msg: Msg, content_type: str | None, pool: FunctionPool | ProcessFunction, outcome: Outcome,
               bad_request: bool = False) -> None:
        if not msg.reply:
            if bad_request and self.dead_letter is not None:
                assert outcome.error is not None
                self.dead_letter(msg.subject, msg.data, msg.headers, outcome.error.message)
            elif not outcome.ok:
                log.warning("%s failed (no reply subject): %s", pool.entry.id, outcome.error)
            return
        assert self.outbox is not None
        body, headers = encode_reply(outcome, content_type, self.nats.max_payload if self.nats is not None else 0)
        if headers is MSGPACK_HEADERS and msg.headers and msg.headers.get(REPLIES_HEADER) == "batch":
            self.outbox.reply_nowait(msg.reply, body)  # with the others this turn answers to that caller
        else:
            self.outbox.publish_nowait(msg.reply, body, headers=headers)

    async def stop(self) -> None:
        for subscription in self._subscriptions.values():
            await subscription.unsubscribe()
        self._subscriptions.clear()
        await self._inflight.stop()


class _RemoteCall(Pending):
    """A call answered by another node: settled with the outcome its reply carries."""

    __slots__ = ("target", "wait")

    def __init__(self, target: str, wait: float) -> None:
        super().__init__()
        self.target, self.wait = target, wait

    def on_reply(self, reply: Msg | BaseException) -> None:
        self.settle(reply_outcome(reply, self.unanswered, self.wait))

    def unanswered(self, missing: Unanswered) -> MoonwireError:
        return call_unanswered(self.target, missing)


def parse_request(data: Any) -> tuple[list[Any], dict[str, Any]]:
    """Arguments and context from a request body.

    ``{"args": [...], "ctx": {...}}`` is the full form; a JSON array is the argument
    list; ``null`` or an empty body is no arguments; any other value is one argument.

    Raises:
        MoonwireError: (Invalid) ``args`` is not a list or ``ctx`` not a mapping.
    """
    if data is None:
        return [], {}
    if isinstance(data, list):
        return data, {}
    if isinstance(data, dict) and "args" in data:
        args, context = data.get("args"), data.get("ctx") or {}
        if not isinstance(args, list):
            raise invalid("request field 'args' must be a list")
        if not isinstance(context, dict):
            raise invalid("request field 'ctx' must be a mapping")
        return args, context
    return [data], {}
