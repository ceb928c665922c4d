"""Lua inside a Temporal workflow (DESIGN §7, §11; wippy-surface §3.9).

One dynamic workflow class per worker runs every ``workflow.lua`` entry registered
with it: the workflow type is the entry id. A run builds a fresh Lua state (strings
hashed with a fixed seed, the workflow's clock, a random source seeded from history),
instantiates the entry and drives it as a :class:`lua.Unit` on the workflow's own
event loop. Replay is the same run again from the start; the SDK matches the commands
it issues against history. What makes that work:

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
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue, RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
    TimeoutError as TemporalTimeout,
    WorkflowAlreadyStartedError,
)

from moonwire.broker import Pid
from moonwire.lua import (CANCEL, EXIT, Answer, Event, Kind, Limits, LuaCode, LuaState, Mailbox, Message, MoonwireError, Outcome, Replay, SpawnRequest, Unit, internal, invalid, to_lua)

from ..functions import millis_or_duration
from ..wire import MSGPACK, pack, unpack

log = logging.getLogger("moonwire.workflows")

SEND_ACTIVITY = "moonwire.send"
"""The activity behind ``process.send`` from a workflow to a plain process (no entry
id has no colon, so it cannot clash with a function's activity)."""

DEFAULT_ACTIVITY_TIMEOUT = timedelta(minutes=10)
DEFAULT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=30), maximum_attempts=5)
"""Finite by default (Wippy retries for ever): a broken function fails the workflow's
call after about a minute instead of hiding."""

_NOT_RETRYABLE = frozenset({Kind.INVALID, Kind.NOT_FOUND, Kind.PERMISSION_DENIED, Kind.ALREADY_EXISTS})


# ---------------------------------------------------------------- PIDs and bodies


def workflow_pid(worker: str, workflow_id: str) -> str:
    """A workflow's PID: its worker in place of the host and no node (DESIGN §7)."""
    return str(Pid("", worker, workflow_id))


@dataclass(frozen=True, slots=True)
class WorkflowInput:
    """What a workflow is started with: its arguments, the spawner's context, the
    startup messages (``with_message``) and the PID that spawned it."""

    args: list[Any]
    context: dict[str, Any]
    messages: list[Message]
    parent: str = ""

    def encode(self) -> bytes:
        return pack({"args": self.args, "ctx": self.context, "parent": self.parent,
                     "messages": [[m.topic, m.payloads, m.sender] for m in self.messages]})

    @staticmethod
    def decode(body: bytes) -> WorkflowInput:
        data = unpack(body, MSGPACK)
        if not isinstance(data, dict) or not isinstance(data.get("args", []), list):
            raise invalid("a workflow input must be a map with a list of args")
        messages = [Message(str(topic), list(payloads), str(sender))
                    for topic, payloads, sender in data.get("messages") or []]
        return WorkflowInput(list(data.get("args") or []), dict(data.get("ctx") or {}), messages,
                             str(data.get("parent") or ""))


def encode_signal(sender: str, payloads: list[Any]) -> bytes:
    return pack({"from": sender, "payloads": payloads})


def decode_signal(topic: str, body: bytes) -> Message:
    data = unpack(body, MSGPACK)
    if not isinstance(data, dict) or not isinstance(data.get("payloads"), list):
        raise invalid("a signal body must be a map with a list of payloads")
    return Message(topic, data["payloads"], str(data.get("from") or ""))


# ---------------------------------------------------------------- errors across Temporal


def to_failure(error: MoonwireError) -> ApplicationError:
    """An error leaving Lua for Temporal (a failed activity or workflow): the kind is the
    failure's type, the whole error its details, so both survive the trip."""
    non_retryable = error.retryable is False or (error.retryable is None and error.kind in _NOT_RETRYABLE)
    return ApplicationError(error.message, pack(error), type=error.kind or Kind.INTERNAL,
                            non_retryable=non_retryable)


def from_failure(failure: BaseException) -> MoonwireError:
    """A Temporal failure (of an activity, a child or a workflow) as the error Lua sees."""
    cause: BaseException | None = failure
    while isinstance(cause, (ActivityError, ChildWorkflowError, WorkflowFailureError)):
        if cause.__cause__ is None:
            break
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        if cause.details and isinstance(cause.details[0], bytes):
            try:
                carried = unpack(cause.details[0], MSGPACK)
                if isinstance(carried, MoonwireError):
                    return carried
            except MoonwireError:
                pass
        return MoonwireError(cause.message, cause.type or Kind.UNKNOWN, retryable=not cause.non_retryable)
    if isinstance(cause, TemporalTimeout):
        return MoonwireError(f"timed out ({cause.type.name.lower() if cause.type else 'timeout'})",
                             Kind.TIMEOUT, retryable=True)
    if isinstance(cause, TerminatedError):
        return MoonwireError("workflow terminated", Kind.CANCELED, retryable=False)
    if isinstance(cause, CancelledError):
        return MoonwireError("canceled", Kind.CANCELED, retryable=False)
    return internal(str(cause) if cause is not None else str(failure))


# ---------------------------------------------------------------- options


def duration_option(value: Any, what: str) -> timedelta:
    """Milliseconds (a number, as Wippy's Temporal options) or a duration string."""
    return timedelta(seconds=millis_or_duration(value, what))


def retry_policy(spec: Any, what: str) -> RetryPolicy:
    if not isinstance(spec, dict):
        raise invalid(f"{what} must be a table")
    known = {"initial_interval", "backoff_coefficient", "maximum_interval", "maximum_attempts",
             "non_retryable_error_types"}
    unknown = set(spec) - known
    if unknown:
        raise invalid(f"{what}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        return RetryPolicy(
            initial_interval=duration_option(spec.get("initial_interval", 1000), f"{what}.initial_interval"),
            backoff_coefficient=float(spec.get("backoff_coefficient", 2.0)),
            maximum_interval=(duration_option(spec["maximum_interval"], f"{what}.maximum_interval")
                              if "maximum_interval" in spec else None),
            maximum_attempts=int(spec.get("maximum_attempts", DEFAULT_RETRY.maximum_attempts)),
            non_retryable_error_types=[str(t) for t in spec.get("non_retryable_error_types") or []],
        )
    except (TypeError, ValueError) as err:
        raise invalid(f"{what}: {err}") from None


def activity_options(options: dict[str, Any], task_queue: str) -> dict[str, Any]:
    """``funcs.new():with_options{["activity.<opt>"] = ...}`` as execute_activity's
    keyword arguments (Invalid for an option it does not know)."""
    out: dict[str, Any] = {"task_queue": task_queue, "start_to_close_timeout": DEFAULT_ACTIVITY_TIMEOUT,
                           "retry_policy": DEFAULT_RETRY}
    for key, value in options.items():
        if not isinstance(key, str) or not key.startswith("activity."):
            continue
        name = key[len("activity."):]
        if name in ("start_to_close_timeout", "schedule_to_close_timeout", "schedule_to_start_timeout",
                    "heartbeat_timeout"):
            out[name] = duration_option(value, key)
        elif name == "task_queue":
            out[name] = str(value)
        elif name == "retry_policy":
            out[name] = retry_policy(value, key)
        else:
            raise invalid(f"unknown activity option {key!r}")
    return out


_BOTH = frozenset({"execution_timeout", "run_timeout", "task_timeout", "retry_policy", "cron_schedule", "memo",
                   "id_reuse_policy"})
_TOP_LEVEL = frozenset({"start_delay", "id_conflict_policy"})
_CHILD = frozenset({"parent_close_policy"})


def start_options(options: dict[str, Any], *, child: bool) -> dict[str, Any]:
    """The ``temporal.workflow.*`` spawner options (except ``id``) as keyword arguments
    of start_workflow or, for a ``child``, start_child_workflow.

    Raises:
        MoonwireError: (Invalid) an unknown option, one that does not apply to this kind
            of start, or a bad value; the message names it.
    """
    out: dict[str, Any] = {}
    allowed = _BOTH | (_CHILD if child else _TOP_LEVEL)
    for key, value in options.items():
        if not isinstance(key, str) or not key.startswith("temporal.workflow.") or key == "temporal.workflow.id":
            continue
        name = key[len("temporal.workflow."):]
        if name not in allowed:
            if name in _CHILD:
                raise invalid(f"{key} applies to child workflows (spawned inside a workflow) only")
            if name in _TOP_LEVEL:
                raise invalid(f"{key} does not apply to child workflows")
            raise invalid(f"unknown workflow start option {key!r} (known: "
                          f"{', '.join(sorted('temporal.workflow.' + n for n in _BOTH | _CHILD | _TOP_LEVEL))})")
        if name in ("execution_timeout", "run_timeout", "task_timeout", "start_delay"):
            out[name] = duration_option(value, key)
        elif name == "retry_policy":
            out[name] = retry_policy(value, key)
        elif name == "cron_schedule":
            out[name] = str(value)
        elif name == "memo":
            if not isinstance(value, dict):
                raise invalid(f"{key} must be a table")
            out[name] = dict(value)
        elif name == "id_reuse_policy":
            out[name] = _choice(value, key, WorkflowIDReusePolicy)
        elif name == "id_conflict_policy":
            out[name] = _choice(value, key, WorkflowIDConflictPolicy)
        else:
            out[name] = _choice(value, key, workflow.ParentClosePolicy)
    return out


def _choice(value: Any, what: str, choices: type[enum.Enum]) -> Any:
    """An enum member named in snake_case (``use_existing``)."""
    names = [n.lower() for n in choices.__members__ if n != "UNSPECIFIED"]
    if not isinstance(value, str) or value.lower() not in names:
        raise invalid(f"{what} must be one of {', '.join(names)}, not {value!r}")
    return choices[value.upper()]


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


class WorkflowRun:
    """One execution (or replay) of a Lua workflow."""

    def __init__(self, context: WorkerContext, started: WorkflowInput) -> None:
        info = workflow.info()
        self.context = context
        self.info = info
        self.pid = workflow_pid(context.worker, info.workflow_id)
        self.state = LuaState(context.limits, replay=Replay(now_ns=workflow.time_ns, random=workflow.new_random()))
        self.unit = Unit(self.state, info.workflow_type, context=dict(started.context),
                         services=ActivityCalls(self), processes=WorkflowProcesses(self),
                         loop=asyncio.get_running_loop())
        self.unit.pid = self.pid
        self.unit.mailbox = Mailbox(self.state, context.mailbox_limit)
        self.state.add_workflow_module({
            "info": self._info, "history_length": lambda: workflow.info().get_current_history_length(),
            "history_size": lambda: workflow.info().get_current_history_size(), "version": self._version,
            "worker": lambda: context.worker.encode(),
        })
        self.started = started
        self.cancel_requested = False
        self._children = itertools.count(1)
        self._sends: asyncio.Future[None] | None = None
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

    @staticmethod
    def _version(change_id: bytes, low: int, high: int) -> int:
        return high if workflow.patched(change_id.decode()) else low

    def post(self, message: Message) -> None:
        assert self.unit.mailbox is not None
        if not self.unit.mailbox.post(message):
            workflow.logger.warning("signal %r dropped: the inbox of %s is full", message.topic, self.pid)

    async def execute(self) -> bytes:
        """Run the Lua code to its end: its result, or a failure for Temporal."""
        try:
            code = self.context.code(self.info.workflow_type)
        except MoonwireError as err:
            # As the SDK does for an unregistered type: fail the task, so a worker that
            # has the entry (or this one, redeployed) can take it.
            raise RuntimeError(err.message) from None
        try:
            export = self.state.instantiate(code)
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
        outcome: Outcome = driver.result()
        if outcome.ok:
            return pack(outcome.value)
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

        def done(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                workflow.logger.warning("%s from %s failed: %s", what, self.pid, task.exception())

        self.unit.own(work, done)

    def send_in_order(self, work: Callable[[], Awaitable[Any]]) -> None:
        """Sends leave one after another, so they arrive in the order they were made."""
        previous = self._sends

        async def chained() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await work()

        task = asyncio.ensure_future(chained())
        self._sends = task
        self.own(task, "a send")

    def child_id(self) -> str:
        return f"{self.info.workflow_id}-{next(self._children)}"


class ActivityCalls:
    """``funcs.call``/``funcs.async`` inside a workflow: activities named by the entry id."""

    def __init__(self, run: WorkflowRun) -> None:
        self.run = run

    def call(self, caller: Unit | None, target: str, args: list[Any], context: dict[str, Any],
             options: dict[str, Any]) -> Answer:
        try:
            settings = activity_options(options, self.run.context.task_queue)
        except MoonwireError as err:
            return Outcome(error=err)
        return self._execute(target, pack({"args": args, "ctx": context}), settings)

    async def _execute(self, target: str, body: bytes, settings: dict[str, Any]) -> Outcome:
        try:
            result = await workflow.execute_activity(target, body, result_type=bytes, **settings)
        except ActivityError as err:
            return Outcome(error=from_failure(err))
        return Outcome(value=unpack(result, MSGPACK))


class WorkflowProcesses:
    """The ``process`` module inside a workflow (wippy-surface §3.9)."""

    def __init__(self, run: WorkflowRun) -> None:
        self.run = run

    def pid_of(self, unit: Unit) -> str:
        return self.run.pid

    def send(self, unit: Unit, dest: str, topic: str, payloads: list[Any]) -> None:
        pid = Pid.parse(dest)
        body = encode_signal(self.run.pid, payloads)
        if pid is not None and pid.is_workflow:
            handle = workflow.get_external_workflow_handle(pid.uid)
            self.run.send_in_order(lambda: handle.signal(topic, body))
            return
        # A plain process: at least once, through an activity any node can run.
        message = pack({"dest": dest, "topic": topic, "payloads": payloads, "from": self.run.pid})
        self.run.send_in_order(lambda: workflow.execute_activity(
            SEND_ACTIVITY, message, task_queue=self.run.context.task_queue,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=DEFAULT_RETRY))

    def spawn(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._child(request, wait_exit=False)

    def exec(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._child(request, wait_exit=True)

    def _child(self, request: SpawnRequest, wait_exit: bool) -> Answer:
        """A child workflow, monitored automatically: its EXIT arrives in the parent's
        events even after a plain spawn (wippy-surface §3.9)."""
        task_queue = self.run.context.task_queues(request.host)
        if task_queue is None:
            return Outcome(error=invalid(
                f"inside a workflow, process.spawn starts child workflows: {request.host} is not a temporal.worker"))
        options = start_options(request.options, child=True)
        workflow_id = request.name or request.options.get("temporal.workflow.id") or self.run.child_id()
        child_pid = workflow_pid(request.host, str(workflow_id))
        body = WorkflowInput(request.args, request.context,
                             [Message(t, p, self.run.pid) for t, p in request.messages], self.run.pid).encode()
        return self._start_child(request.entry, str(workflow_id), task_queue, body, child_pid, wait_exit, options)

    async def _start_child(self, entry: str, workflow_id: str, task_queue: str, body: bytes, child_pid: str,
                           wait_exit: bool, options: dict[str, Any]) -> Outcome:
        try:
            handle = await workflow.start_child_workflow(entry, body, id=workflow_id, task_queue=task_queue,
                                                         result_type=bytes, **options)
        except WorkflowAlreadyStartedError:
            return Outcome(error=MoonwireError(f"workflow {child_pid} already exists", Kind.ALREADY_EXISTS,
                                               retryable=False))

        async def outcome() -> Outcome:
            try:
                return Outcome(value=unpack(await handle, MSGPACK))
            except ChildWorkflowError as err:
                return Outcome(error=from_failure(err))

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
class LuaWorkflow:
    """Every ``workflow.lua`` entry: the workflow type is the entry id."""

    def __init__(self) -> None:
        self.run_: WorkflowRun | None = None
        self.early: list[Message] = []

    @workflow.signal(dynamic=True)
    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        try:
            body = workflow.payload_converter().from_payload(args[0].payload, bytes) if args else b""
            message = decode_signal(name, body)
        except Exception as err:  # noqa: BLE001 - a bad signal must not fail the workflow
            workflow.logger.warning("signal %r dropped: %s", name, err)
            return
        if self.run_ is None:  # signals before the run started queue behind startup messages
            self.early.append(message)
        else:
            self.run_.post(message)

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> bytes:
        context = _CONTEXTS.get(workflow.info().task_queue, _REPLAY)
        if context is None:  # the worker is stopping: let another take the task
            raise RuntimeError(f"no moonwire worker for task queue {workflow.info().task_queue}")
        try:
            body = workflow.payload_converter().from_payload(args[0].payload, bytes) if args else b""
            started = WorkflowInput.decode(body) if body else WorkflowInput([], {}, [])
        except Exception as err:  # noqa: BLE001
            raise to_failure(invalid(f"bad workflow input: {err}")) from None
        self.run_ = WorkflowRun(context, started)
        for message in self.early:
            self.run_.post(message)
        self.early.clear()
        return await self.run_.execute()
