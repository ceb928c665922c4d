"""Lua inside a Temporal workflow (DESIGN §7, §11; wippy-surface §3.9).

One dynamic workflow class per worker runs every ``workflow.lua`` entry registered
with it: the workflow type is the entry id. A run takes a Lua state (strings hashed
with a fixed seed, the workflow's clock, a random source seeded from history; one an
ended run gave back when there is one, ``_states.py``), instantiates the entry and
drives it as a :class:`lua.Unit` on the workflow's own event loop. Replay is the same
run again from the start; the SDK matches the commands it issues against history. What
makes that work:

* the Unit's timers are ``loop.call_later`` on the workflow loop, which the SDK turns
  into durable timers (``time.sleep``, ``after``, ``timer``, ``ticker``);
* ``funcs.call``/``funcs.async`` are activities named by the function's entry id
  (:class:`ActivityCalls`);
* the ``process`` module is :class:`WorkflowProcesses`: signals for the inbox and
  ``listen``, external signals or a send activity for ``process.send``, child
  workflows (monitored automatically) for ``spawn``/``exec``;
* ``time.now``, ``uuid.*``, ``math.random``, ``os.time``/``os.date`` read the
  workflow's clock and seeded source; ``os.clock`` is refused and fails the task.

The SDK's Python sandbox is off for this class (``sandboxed=False``): it exists to
catch non-deterministic *Python* in user workflow code, and there is none here; the
user's code is Lua, whose non-determinism the state above removes.

What crosses to and from Temporal (inputs, signal bodies, failures, options) is encoded
by ``_workflow_codec.py``; values become payloads in ``_payloads.py`` (JSON when it holds
them), and ``workflow.attrs`` is typed and checked by ``_search.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ChildWorkflowError, WorkflowAlreadyStartedError

from moonwire.broker import Pid
from moonwire.lua import (CANCEL, EXIT, Answer, Event, Kind, Limits, LuaCode, Mailbox, Message, MoonwireError, Outcome, Pending, Replay, Security, SpawnRequest, Unit, invalid, run_trace, to_lua, to_python)

from ._carry import HEADER, carry
from ._continue import Continuation, continuation
from ._payloads import decode, encode, encode_all
from ._search import Declared, memo, search_updates
from ._states import WorkflowStates
from ._updates import UpdateBook, UpdateHandlers, is_update_pid
from ._workflow_codec import (DEFAULT_RETRY, SEND_ACTIVITY, WorkflowInput, WorkflowTypes, activity_options, decode_signal, encode_signal, from_failure, start_options, to_failure, workflow_id_option, workflow_pid)

log = logging.getLogger("moonwire.workflows")


# ---------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What the workflows of one worker need from their node."""

    worker: str
    """The ``temporal.worker`` entry id (the host part of its workflows' PIDs)."""
    task_queue: str
    code: Callable[[str], LuaCode]
    """The code of a ``workflow.lua`` entry registered with this worker (raises
    MoonwireError NotFound for any other type)."""
    task_queues: Callable[[str], str | None]
    """The task queue of a worker entry id, None when it is not a worker."""
    limits: Limits
    mailbox_limit: int
    types: WorkflowTypes = WorkflowTypes()
    """Temporal workflow type names (``meta.temporal.workflow.name``)."""
    declared: Callable[[str], Declared] = lambda worker: Declared()
    """The search attributes declared on a worker's client."""
    states: WorkflowStates = field(default_factory=WorkflowStates)
    """Lua states that ended runs gave back, for the next runs (``_states.py``)."""


class WorkflowRun:
    """One execution (or replay) of a Lua workflow."""

    def __init__(self, context: WorkerContext, started: WorkflowInput, updates: UpdateBook | None = None) -> None:
        info = workflow.info()
        self.context = context
        self.info = info
        self.pid = workflow_pid(context.worker, info.workflow_id)
        self.state = context.states.take(context.limits, Replay(now_ns=workflow.time_ns, random=workflow.new_random()))
        self.unit = Unit(self.state, context.types.entry(info.workflow_type), context=dict(started.context),
                         services=ActivityCalls(self), processes=WorkflowProcesses(self),
                         loop=asyncio.get_running_loop())
        self.unit.pid = self.pid
        self.unit.trace = run_trace(info.run_id)  # the same on every replay: logs of a run share it
        self.unit.mailbox = Mailbox(self.state, context.mailbox_limit)
        self.state.add_workflow_module({
            "info": self._info, "history_length": lambda: workflow.info().get_current_history_length(),
            "history_size": lambda: workflow.info().get_current_history_size(), "version": self._version,
            "worker": lambda: context.worker.encode(), "attrs": self._attrs,
        })
        self.started = started
        self.cancel_requested = False
        self._children = itertools.count(1)
        self._sends: asyncio.Future[None] | None = None
        self.updates = updates if updates is not None else UpdateBook()
        self.continuing: Continuation | None = None
        """Set by ``process.upgrade``: the run is continuing as new (``_continue.py``)."""
        for message in started.messages:  # before any signal (wippy-surface §3.9)
            self.post(message)

    def _info(self) -> Any:
        info = workflow.info()
        return to_lua(self.state, {
            "workflow_id": info.workflow_id, "run_id": info.run_id, "workflow_type": info.workflow_type,
            "task_queue": info.task_queue, "namespace": info.namespace, "attempt": info.attempt,
            "history_length": info.get_current_history_length(), "history_size": info.get_current_history_size(),
            "pid": self.pid,
        })

    def _attrs(self, search: Any, memos: Any) -> Any:
        """``workflow.attrs{search=, memo=}``: true, or nil and the reason (Invalid)."""
        try:
            updates = search_updates(to_python(self.state, search), self.context.declared(self.context.worker),
                                     "workflow.attrs search") if search is not None else []
            fields = memo(to_python(self.state, memos), "workflow.attrs memo") if memos is not None else {}
        except MoonwireError as err:
            return None, err.message.encode()
        if updates:
            workflow.upsert_search_attributes(updates)
        if fields:
            workflow.upsert_memo(fields)
        return True

    @staticmethod
    def _version(change_id: bytes, low: int, high: int) -> int:
        return high if workflow.patched(change_id.decode()) else low

    def post(self, message: Message) -> bool:
        """Deliver a signal or update; False (logged) when the inbox is full."""
        if self.continuing is not None:  # upgrading: for the next run, if its input has room
            if not self.continuing.carry(message):
                workflow.logger.warning("message %r dropped: the next run's input of %s is full", message.topic,
                                        self.pid)
                return False
            return True
        assert self.unit.mailbox is not None
        if not self.unit.mailbox.post(message):
            workflow.logger.warning("message %r dropped: the inbox of %s is full", message.topic, self.pid)
            return False
        return True

    def upgrade(self, entry: str | None, args: list[Any]) -> Answer:
        """``process.upgrade``: continue as new once this run has wound down (see
        :meth:`execute`); the Lua code ends now. The answer settles only on failure."""
        assert self.unit.mailbox is not None
        try:
            self.continuing = continuation(entry, args, self.info.workflow_type, self.started, self.unit.mailbox,
                                           self.context.code, self.context.types)
        except MoonwireError as err:
            return Outcome(error=err)
        self.unit.abort(MoonwireError("continued as new", Kind.CANCELED, retryable=False))
        return Pending()

    def refuses(self) -> str | None:
        """Why a message (an update) cannot be taken now, if it cannot."""
        if self.unit.outcome is not None:
            return (f"workflow {self.pid} is ending this run (it returned, failed or continues as new): send the "
                    "update again")
        mailbox = self.unit.mailbox
        if mailbox is not None and mailbox.depth() >= mailbox.limit:
            return f"the inbox of {self.pid} is full ({mailbox.limit} unread messages)"
        return None

    async def _wind_down(self) -> None:
        """Before the run completes or continues as new: its sends leave, its unanswered
        updates fail, and every handler has finished (Temporal drops what is in flight
        when a run closes; a signal handler still running would lose its message)."""
        if self._sends is not None:
            await asyncio.wait([self._sends])
        self.updates.close_all("the workflow continued as new" if self.continuing is not None
                               else "the workflow ended")
        if not workflow.all_handlers_finished():
            await workflow.wait_condition(workflow.all_handlers_finished)

    async def execute(self) -> RawValue:
        """Run the Lua code to its end: its result, or a failure for Temporal."""
        try:
            code = self.context.code(self.context.types.entry(self.info.workflow_type))
        except MoonwireError as err:
            # As the SDK does for an unregistered type: fail the task, so a worker that
            # has the entry (or this one, redeployed) can take it.
            raise RuntimeError(err.message) from None
        try:
            export = self.state.instantiate(code)
            # On the workflow's own deterministic loop, awaited below: no node TaskSet belongs here.
            driver = asyncio.ensure_future(self.unit.run(export, self.started.args))
        except MoonwireError as err:
            raise to_failure(MoonwireError(err.message, err.kind or Kind.INTERNAL, retryable=False)) from None
        while not driver.done():
            try:
                await asyncio.wait([driver])
            except asyncio.CancelledError:
                # Temporal cancels the run task; the Lua code gets CANCEL and decides.
                self.cancel_requested = True
                assert self.unit.mailbox is not None
                self.unit.mailbox.post_event(Event(CANCEL, "", workflow.time(), reason="workflow canceled"))
        if self.state.violation is not None:
            # Failing the task (not the workflow) keeps history clean; a fixed deploy resumes it.
            raise RuntimeError(f"workflow {self.info.workflow_type} called {self.state.violation}, which is not "
                               "deterministic inside a workflow (use time.now())")
        await self._wind_down()
        # Nothing runs Lua in this run any more (its unit ended, its handlers finished):
        # the next run may have the state.
        self.context.states.give(self.state)
        if self.continuing is not None:
            self.continuing.complete()
        outcome: Outcome = driver.result()
        if outcome.ok:
            try:
                return encode(outcome.value)
            except MoonwireError as err:
                raise to_failure(err) from None
        assert outcome.error is not None
        error = outcome.error
        if self.cancel_requested and error.kind == Kind.CANCELED:
            raise asyncio.CancelledError(error.message)
        if error.kind == Kind.UNKNOWN:  # a Lua runtime error (wippy-surface §3.9)
            error = MoonwireError(error.message, Kind.INTERNAL, retryable=False, details=error.details,
                                  stack=error.stack)
        raise to_failure(error)

    def own(self, work: Awaitable[Any], what: str) -> None:
        """Run ``work`` as a child of the unit; a failure is logged (it cannot be returned)."""
        self.unit.own(work, self._logged(what))

    def _logged(self, what: str) -> Callable[[asyncio.Future[Any]], None]:
        """A done-callback that logs the failure of ``what``."""

        def done(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                workflow.logger.warning("%s from %s failed: %s", what, self.pid, task.exception())

        return done

    def send_in_order(self, work: Callable[[], Awaitable[Any]]) -> None:
        """Sends leave one after another, so they arrive in the order they were made."""
        previous = self._sends

        async def chained() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await work()

        # The workflow loop's task, owned by the run: the last one is awaited before the
        # run ends, so a send made just before returning or upgrading still leaves.
        task = asyncio.ensure_future(chained())
        self._sends = task
        task.add_done_callback(self._logged("a send"))

    def child_id(self) -> str:
        return f"{self.info.workflow_id}-{next(self._children)}"


class ActivityCalls:
    """``funcs.call``/``funcs.async`` inside a workflow: activities named by the entry id."""

    def __init__(self, run: WorkflowRun) -> None:
        self.run = run

    def call(self, caller: Unit | None, target: str, args: list[Any], context: dict[str, Any],
             options: dict[str, Any], security: Security | None = None) -> Answer:
        # A workflow has no actor or scope, nor a `security` module to make one (wippy-modules
        # §0): `security` is always None here, and an activity runs as no actor.
        try:
            settings = activity_options(options, self.run.context.task_queue)
        except MoonwireError as err:
            return Outcome(error=err)
        trace = caller.traceparent() if caller is not None else None  # the run's: the same on replay
        try:
            body = [*encode_all(args), *carry({"ctx": context, "trace": trace})]
        except MoonwireError as err:
            return Outcome(error=err)
        return self._execute(target, body, settings)

    async def _execute(self, target: str, args: list[Any], settings: dict[str, Any]) -> Outcome:
        try:
            result = await workflow.execute_activity(target, args=args, result_type=RawValue, **settings)
            return Outcome(value=decode(result))
        except ActivityError as err:
            return Outcome(error=from_failure(err))
        except MoonwireError as err:
            return Outcome(error=err)


class WorkflowProcesses:
    """The ``process`` module inside a workflow (wippy-surface §3.9)."""

    def __init__(self, run: WorkflowRun) -> None:
        self.run = run

    def pid_of(self, unit: Unit) -> str:
        return self.run.pid

    def send(self, unit: Unit, dest: str, topic: str, payloads: list[Any]) -> None:
        if is_update_pid(dest):  # an update's answer (wippy-modules §12.5)
            self.run.updates.answer(dest, topic, payloads)
            return
        pid = Pid.parse(dest)
        if pid is not None and pid.is_workflow:
            handle = workflow.get_external_workflow_handle(pid.uid)
            body = encode_signal(self.run.pid, payloads)
            self.run.send_in_order(lambda: handle.signal(topic, args=body))
            return
        # A plain process: at least once, through an activity any node can run.
        message = encode({"dest": dest, "topic": topic, "payloads": payloads, "from": self.run.pid})
        self.run.send_in_order(lambda: workflow.execute_activity(
            SEND_ACTIVITY, message, task_queue=self.run.context.task_queue,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=DEFAULT_RETRY))

    def spawn(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._child(request, wait_exit=False)

    def spawns_here(self, request: SpawnRequest) -> bool:
        return False  # a spawn is a child workflow, started by a command: never at once

    def exec(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._child(request, wait_exit=True)

    def _child(self, request: SpawnRequest, wait_exit: bool) -> Answer:
        """A child workflow, monitored automatically: its EXIT arrives in the parent's
        events even after a plain spawn (wippy-surface §3.9)."""
        task_queue = self.run.context.task_queues(request.host)
        if task_queue is None:
            return Outcome(error=invalid(
                f"inside a workflow, process.spawn starts child workflows: {request.host} is not a temporal.worker"))
        context = self.run.context
        options = start_options(request.options, child=True, declared=context.declared(request.host))
        workflow_id = request.name or workflow_id_option(request.options) or self.run.child_id()
        child_pid = workflow_pid(request.host, str(workflow_id))
        body = WorkflowInput(request.args, request.context,
                             [Message(t, p, self.run.pid) for t, p in request.messages], self.run.pid).encode()
        return self._start_child(context.types.of(request.entry), str(workflow_id), task_queue, body, child_pid,
                                 wait_exit, options)

    async def _start_child(self, workflow_type: str, workflow_id: str, task_queue: str, body: list[Any],
                           child_pid: str, wait_exit: bool, options: dict[str, Any]) -> Outcome:
        try:
            handle = await workflow.start_child_workflow(workflow_type, args=body, id=workflow_id,
                                                         task_queue=task_queue, result_type=RawValue, **options)
        except WorkflowAlreadyStartedError:
            return Outcome(error=MoonwireError(f"workflow {child_pid} already exists", Kind.ALREADY_EXISTS,
                                               retryable=False))

        async def outcome() -> Outcome:
            try:
                return Outcome(value=decode(await handle))
            except ChildWorkflowError as err:
                return Outcome(error=from_failure(err))
            except MoonwireError as err:
                return Outcome(error=err)

        if wait_exit:
            return await outcome()

        async def report() -> None:
            ended = await outcome()
            assert self.run.unit.mailbox is not None
            self.run.unit.mailbox.post_event(Event(EXIT, child_pid, workflow.time(), ended.value, ended.error))

        self.run.own(report(), f"child workflow {child_pid}")
        return Outcome(value=child_pid)

    def watch(self, unit: Unit, verb: str, dest: str) -> Answer | None:
        raise invalid(f"process.{verb} is not available inside a workflow: child workflows are monitored "
                      "automatically")

    def terminate(self, unit: Unit, dest: str) -> Answer | None:
        raise invalid("process.terminate is not available inside a workflow")

    def cancel(self, unit: Unit, dest: str, reason: str) -> Answer | None:
        pid = Pid.parse(dest)
        if pid is None or not pid.is_workflow:
            raise invalid("inside a workflow, process.cancel can only cancel another workflow")
        return self._cancel(pid.uid)

    @staticmethod
    async def _cancel(workflow_id: str) -> Outcome:
        await workflow.get_external_workflow_handle(workflow_id).cancel()
        return Outcome(value=True)

    def register(self, unit: Unit, name: str, pid: str | None) -> None:
        raise invalid("the name registry is not available inside a workflow")

    def upgrade(self, unit: Unit, entry: str | None, args: list[Any]) -> Answer:
        return self.run.upgrade(entry, args)

    def update(self, unit: Unit, dest: str, name: str, args: list[Any], options: dict[str, Any]) -> Answer:
        raise invalid("process.update is not available inside a workflow (send it a signal with process.send)")

    def lookup(self, unit: Unit, name: str, node: str | None) -> Answer:
        return Outcome(error=invalid("the name registry is not available inside a workflow"))

    def unregister(self, unit: Unit, name: str) -> bool:
        raise invalid("the name registry is not available inside a workflow")


# ---------------------------------------------------------------- the workflow class


_CONTEXTS: dict[str, WorkerContext] = {}
"""Worker contexts by task queue. The SDK takes workflow classes only at module level,
so the one class finds its worker's context here; two nodes in one Python process that
run the same worker load the same project, so either context serves."""


def register_worker(context: WorkerContext) -> type:
    """Make :class:`LuaWorkflow` runnable on ``context.task_queue``; returns the class."""
    _CONTEXTS[context.task_queue] = context
    return LuaWorkflow


def register_replay(context: WorkerContext) -> type:
    """Make :class:`LuaWorkflow` replay histories from any task queue with ``context``
    (a Replayer runs on a task queue of its own)."""
    global _REPLAY
    _REPLAY = context
    return LuaWorkflow


_REPLAY: WorkerContext | None = None


def unregister_worker(context: WorkerContext) -> None:
    if _CONTEXTS.get(context.task_queue) is context:
        del _CONTEXTS[context.task_queue]


@workflow.defn(dynamic=True, sandboxed=False)
class LuaWorkflow(UpdateHandlers):
    """Every ``workflow.lua`` entry: the workflow type is the entry id."""

    def __init__(self) -> None:
        self.run_: WorkflowRun | None = None
        self.early: list[Message] = []
        self.updates = UpdateBook()

    @workflow.signal(dynamic=True)
    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        try:
            message = decode_signal(name, args)
        except Exception as err:  # noqa: BLE001 - a bad signal must not fail the workflow
            workflow.logger.warning("signal %r dropped: %s", name, err)
            return
        if self.run_ is None:  # signals before the run started queue behind startup messages
            self.early.append(message)
        else:
            self.run_.post(message)

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> RawValue:
        context = _CONTEXTS.get(workflow.info().task_queue, _REPLAY)
        if context is None:  # the worker is stopping: let another take the task
            raise RuntimeError(f"no moonwire worker for task queue {workflow.info().task_queue}")
        try:
            started = WorkflowInput.decode(args, workflow.info().headers.get(HEADER))
        except Exception as err:  # noqa: BLE001
            raise to_failure(invalid(f"bad workflow input: {err}")) from None
        self.run_ = WorkflowRun(context, started, self.updates)
        for message in self.early:
            self.run_.post(message)
        self.early.clear()
        return await self.run_.execute()
