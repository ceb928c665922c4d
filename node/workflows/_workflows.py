"""The node's side of workflows (DESIGN §7): Temporal clients and workers in the node's
process and event loop, and workflows as members of the one PID space.

* Every ``temporal.worker`` entry of the project runs as a Temporal worker on its task
  queue (``tq_prefix`` + ``task_queue``) with the dynamic Lua workflow
  (``_workflow_run.py``) and one dynamic activity that runs any function by entry id
  (locally, or through its queue group when this node does not define it).
* ``process.spawn*(wf, "<worker id>", ...)`` starts a workflow and answers its PID
  ``{@<worker>|<workflow id>}``; ``exec`` answers its result.
* ``process.send`` to a workflow PID is a signal named by the topic. Signals leave this
  node in the order they were sent, one RPC at a time. A node without a client for the
  worker, the CLI and plain NATS clients publish to ``<prefix>.wf.<worker>.<id>[.<topic>]``
  instead, which the nodes running that worker turn into signals (queue group).
* ``monitor``/``link`` of a workflow PID watch its result (a task per watch, owned
  here): EXIT with its result or error for a monitor, LINK_DOWN on failure only for a
  link. A transport error while watching is retried, never reported as a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from temporalio import activity
from temporalio.client import Client, TLSConfig, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import RawValue, WorkflowIDConflictPolicy
from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryConfig, TelemetryFilter
from temporalio.runtime import Runtime as TemporalRuntime
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer, Worker

from moonwire.broker import Outbox, Pid, Subjects
from moonwire.broker import Client as BrokerClient
from moonwire.lua import (EXIT, LINK_DOWN, Event, Kind, Limits, Message, MoonwireError, Outcome, Pending, SpawnRequest, internal, invalid, not_found, settled)

from ..project import TemporalClientEntry, TemporalWorkerEntry, WorkflowEntry
from ..functions import CodeLoader, Functions
from ..processes import DEFAULT_MAX_BODY, DeadLetters, Undeliverable, decode, encode
from ..processes import Fire
from ..wire import CONTENT_TYPE, MSGPACK, Unanswered, Why, ask, encode_reply, pack, unpack
from ..project import Project
from ._workflow_codec import (SEND_ACTIVITY, WorkflowInput, duration_option, encode_signal, from_failure, start_options, to_failure, workflow_pid)
from ._workflow_run import WorkerContext, register_replay, register_worker, unregister_worker

log = logging.getLogger("moonwire.workflows")

GATEWAY_QUEUE = "mw.wf"
SIGNALS_WAITING = 1024
"""Signals that may wait for this node's signal sender (one Temporal RPC at a time);
past it a signal from the gateway is dead-lettered and a process's send fails."""
STATUS_REQUESTS = 64
"""Status requests (``mw.wfq``) answered at once; each holds a task waiting for Temporal."""
WATCH_RETRY = (0.5, 10.0)  # first and longest wait between attempts to watch a workflow

# Go SDK names (what Wippy's worker_options use) -> Python SDK keyword and converter.
_WORKER_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "max_concurrent_activity_execution_size": ("max_concurrent_activities", int),
    "max_concurrent_workflow_task_execution_size": ("max_concurrent_workflow_tasks", int),
    "max_concurrent_local_activity_execution_size": ("max_concurrent_local_activities", int),
    "max_concurrent_workflow_task_pollers": ("max_concurrent_workflow_task_polls", int),
    "max_concurrent_activity_task_pollers": ("max_concurrent_activity_task_polls", int),
    "worker_activities_per_second": ("max_activities_per_second", float),
    "task_queue_activities_per_second": ("max_task_queue_activities_per_second", float),
    "sticky_schedule_to_start_timeout": ("sticky_queue_schedule_to_start_timeout", lambda v: duration_option(v, "value")),
    "max_cached_workflows": ("max_cached_workflows", int),
    "graceful_shutdown_timeout": ("graceful_shutdown_timeout", lambda v: duration_option(v, "value")),
    "identity": ("identity", str),
    "build_id": ("build_id", str),
    "use_versioning": ("use_worker_versioning", bool),
}


def worker_options(entry: TemporalWorkerEntry) -> dict[str, Any]:
    """``worker_options`` as Python SDK keywords.

    Raises:
        MoonwireError: (Invalid) an option the Python SDK has no equivalent for, naming it.
    """
    out: dict[str, Any] = {}
    for name, value in entry.worker_options.items():
        mapped = _WORKER_OPTIONS.get(name)
        if mapped is None:
            raise invalid(f"{entry.id}: worker option {name!r} is not supported "
                          f"(supported: {', '.join(sorted(_WORKER_OPTIONS))})")
        keyword, convert = mapped
        try:
            out[keyword] = convert(value)
        except (TypeError, ValueError, MoonwireError) as err:
            reason = err.message if isinstance(err, MoonwireError) else str(err)
            raise invalid(f"{entry.id}: worker option {name}: {reason}") from None
    return out


def _route_core_logs() -> None:
    """The SDK's core (Rust) logs to stdout by default, which is where ``run -x``
    prints its result: forward them to Python logging (stderr) instead, once."""
    global _core_logs_routed
    if _core_logs_routed:
        return
    _core_logs_routed = True
    telemetry = TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core"))))
    TemporalRuntime.set_default(TemporalRuntime(telemetry=telemetry), error_if_already_set=False)


_core_logs_routed = False


async def connect_client(entry: TemporalClientEntry, embedded_address: str | None, project_root: Path) -> Client:
    """A Temporal client for a ``temporal.client`` entry (the embedded server when it
    names no address)."""
    _route_core_logs()
    address = embedded_address if entry.embedded else entry.address
    if address is None:
        raise invalid(f"{entry.id}: no address and no embedded Temporal server")

    def read(path: str | None) -> bytes | None:
        return (project_root / path).read_bytes() if path else None

    tls: bool | TLSConfig = False
    if entry.tls.enabled or entry.auth.type == "mtls":
        tls = TLSConfig(server_root_ca_cert=read(entry.tls.ca_file), domain=entry.tls.server_name,
                        client_cert=read(entry.auth.cert_file or entry.tls.cert_file),
                        client_private_key=read(entry.auth.key_file or entry.tls.key_file))
    elif entry.auth.type == "api_key":
        tls = True  # API keys travel over TLS only
    try:
        return await Client.connect(address, namespace=entry.namespace,
                                    api_key=entry.auth.api_key if entry.auth.type == "api_key" else None,
                                    tls=tls, connect_timeout=timedelta(seconds=entry.connection_timeout))
    except RuntimeError as err:  # what the SDK's core raises for a failed connect
        raise TemporalUnavailable(f"{entry.id}: cannot connect to Temporal at {address}: {err}") from None


class TemporalUnavailable(Exception):
    """A ``temporal.client`` could not connect (the node does not start)."""


@dataclass(frozen=True, slots=True)
class _Signal:
    """A signal waiting to be sent; one from the gateway keeps the message as it came,
    for the dead-letter queue."""

    target: Pid
    message: Message
    subject: str = ""
    body: bytes = b""
    headers: dict[str, str] | None = None


@dataclass(slots=True)
class _Host:
    """A worker entry this node runs: its client and task queue."""

    entry: TemporalWorkerEntry
    client: Client
    task_queue: str
    worker: Worker | None = None
    running: asyncio.Task[None] | None = None
    context: WorkerContext | None = None


class Workflows:
    """Temporal workers in this node, and workflows seen from its processes."""

    def __init__(self, node: str, project: Project, subjects: Subjects, functions: Functions, code: CodeLoader, *,
                 nats: NatsClient | None = None,
                 outbox: Outbox | None = None, limits: Limits = Limits(), mailbox_limit: int = 4096,
                 max_body: int = DEFAULT_MAX_BODY, gateway: BrokerClient | None = None,
                 dead_letters: DeadLetters | None = None, signals_waiting: int = SIGNALS_WAITING) -> None:
        self.node = node
        self.project = project
        self.subjects = subjects
        self.functions = functions
        self.code = code
        self._route: Callable[[str, Message], None] | None = None
        self._workers = sorted(entry.id for entry in project.of_kind("temporal.worker"))
        self.nats = nats
        self.outbox = outbox
        self.limits = limits
        self.mailbox_limit = mailbox_limit
        self.max_body = max_body
        self.hosts: dict[str, _Host] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watches: dict[str, dict[tuple[str, bool], asyncio.Task[None]]] = {}  # by watcher
        self.gateway = gateway
        """The connection the gateway subscribes on (the node's data connection)."""
        self.dead_letters = dead_letters
        # Bounded: what waits here waits for one RPC at a time (~700/s measured).
        self._signals: asyncio.Queue[_Signal] = asyncio.Queue(signals_waiting)
        self._subscriptions: list[Subscription] = []
        self._status_requests = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self, embedded_address: str | None, route: Callable[[str, Message], None], *,
                    run_workers: bool = True) -> None:
        """Connect the clients and (``run_workers``) start a worker for every
        ``temporal.worker`` entry. ``route`` delivers what a workflow sends to a process
        (the process table's, which exists by now: it was built with this object as
        its workflow target)."""
        self._route = route
        clients: dict[str, Client] = {}
        for entry in self.project.of_kind("temporal.worker"):
            assert isinstance(entry, TemporalWorkerEntry)
            client_entry = self.project.get(entry.client)
            assert isinstance(client_entry, TemporalClientEntry)
            if entry.client not in clients:
                clients[entry.client] = await connect_client(client_entry, embedded_address, self.project.root)
            self.hosts[entry.id] = _Host(entry, clients[entry.client], task_queue_of(self.project, entry))
        for host in self.hosts.values() if run_workers else ():
            context = worker_context(self.project, self.code, host.entry, self.task_queue,
                                     limits=self.limits, mailbox_limit=self.mailbox_limit)
            host.context = context
            host.worker = Worker(host.client, task_queue=host.task_queue, workflows=[register_worker(context)],
                                 activities=[self._activity()], **worker_options(host.entry))
            host.running = asyncio.create_task(host.worker.run(), name=f"worker {host.entry.id}")
            log.info("temporal worker %s on task queue %s", host.entry.id, host.task_queue)
        self._own(self._send_signals(), "signals")
        if self.nats is not None:
            for worker in self.hosts:
                if self.gateway is not None:  # handled in its read loop, like process inboxes
                    self._subscriptions.append(await self.gateway.subscribe_direct(
                        self.subjects.workflows(worker), self._on_gateway, queue=GATEWAY_QUEUE))
                else:
                    self._subscriptions.append(await self.nats.subscribe(
                        self.subjects.workflows(worker), queue=GATEWAY_QUEUE, cb=self._on_gateway_async))
                self._subscriptions.append(await self.nats.subscribe(
                    self.subjects.workflow_status(worker), queue=GATEWAY_QUEUE, cb=self._on_status))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for host in self.hosts.values():
            if host.worker is not None and host.running is not None and not host.running.done():
                await host.worker.shutdown()
            if host.running is not None:
                await asyncio.gather(host.running, return_exceptions=True)
            if host.context is not None:
                unregister_worker(host.context)

    def _own(self, work: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %s", what, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # ------------------------------------------------------------ what runs here

    @property
    def workers(self) -> list[str]:
        """Every ``temporal.worker`` of the project: this node starts workflows there."""
        return self._workers

    def serves(self, host: str) -> bool:
        return host in self._workers

    def task_queue(self, worker: str) -> str | None:
        host = self.hosts.get(worker)
        return host.task_queue if host is not None else None

    def _activity(self) -> Callable[..., Any]:
        @activity.defn(dynamic=True)
        async def run_function(args: Sequence[RawValue]) -> bytes:
            name = activity.info().activity_type
            body = activity.payload_converter().from_payload(args[0].payload, bytes) if args else b""
            try:
                data = unpack(body, MSGPACK)
                if name == SEND_ACTIVITY:
                    self._send_from_workflow(data)
                    return pack(True)
                if not isinstance(data, dict) or not isinstance(data.get("args", []), list):
                    raise invalid("an activity input must be a map with a list of args")
                outcome = await settled(self.functions.call(None, name, list(data.get("args") or []),
                                                       dict(data.get("ctx") or {}), {}))
            except MoonwireError as err:
                raise to_failure(err) from None
            if outcome.ok:
                return pack(outcome.value)
            assert outcome.error is not None
            raise to_failure(outcome.error)

        return run_function

    def _send_from_workflow(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise invalid("a send activity input must be a map")
        assert self._route is not None  # workers run only once started
        self._route(str(data["dest"]), Message(str(data["topic"]), list(data["payloads"]), str(data["from"])))

    def _handle(self, pid: Pid) -> WorkflowHandle[Any, Any]:
        host = self.hosts.get(pid.host)
        if host is None:
            raise MoonwireError(f"this node has no temporal.client for worker {pid.host}", Kind.UNAVAILABLE,
                                retryable=False)
        return host.client.get_workflow_handle(pid.uid, result_type=bytes)

    # ------------------------------------------------------------ starting

    def spawn(self, request: SpawnRequest, parent: str, wait_exit: bool, fire: Fire) -> Pending:
        """Start workflow ``request.entry`` on worker ``request.host``: the answer is its
        PID, or with ``wait_exit`` its result. ``parent`` (a PID or "") sends the startup
        messages and gets the monitor and link the request asks for (``fire`` gets
        their EXIT or LINK_DOWN)."""
        pending = Pending()

        async def start() -> None:
            try:
                pid = await self._start(request, parent)
            except MoonwireError as err:
                pending.settle(Outcome(error=err))
                return
            except RPCError as err:
                pending.settle(Outcome(error=MoonwireError(f"workflow {request.entry} did not start: {err}",
                                                           Kind.UNAVAILABLE, retryable=True)))
                return
            if parent and request.monitor:
                self._watch(parent, pid, False, fire)
            if parent and request.link:
                self._watch(parent, pid, True, fire)
            if not wait_exit:
                pending.settle(Outcome(value=pid))
                return
            pending.settle(await self._result(Pid.parse(pid)))  # type: ignore[arg-type]

        task = self._own(start(), f"starting {request.entry}")
        pending.abandon = task.cancel
        return pending

    async def _start(self, request: SpawnRequest, parent: str) -> str:
        host = self.hosts.get(request.host)
        if host is None:
            raise not_found(f"no temporal.worker {request.host} on node {self.node}")
        entry = self.project.get(request.entry)
        if not isinstance(entry, WorkflowEntry):
            raise invalid(f"{request.entry} is not a workflow.lua entry" if entry is not None
                          else f"no entry {request.entry}")
        worker = registered_worker(entry)
        if worker not in (None, request.host):
            raise invalid(f"{request.entry} is registered with worker {worker}, not {request.host}")
        explicit = request.name or request.options.get("temporal.workflow.id")
        workflow_id = str(explicit) if explicit else f"{request.entry}-{uuid.uuid4().hex[:16]}"
        pid = workflow_pid(request.host, workflow_id)
        if Pid.parse(pid) is None:
            raise invalid(f"workflow id {workflow_id!r} may only hold letters, digits, '_', '-' and ':'")
        messages = [Message(topic, payloads, parent) for topic, payloads in request.messages]
        body = WorkflowInput(request.args, request.context, messages, parent).encode()
        options = start_options(request.options, child=False)
        conflict = options.setdefault("id_conflict_policy", WorkflowIDConflictPolicy.USE_EXISTING)
        if explicit and conflict == WorkflowIDConflictPolicy.USE_EXISTING and await self._running(host, workflow_id):
            # Dedupe (wippy-surface §3.9): the running one's PID; the new input is
            # ignored, the startup messages are still delivered.
            handle = host.client.get_workflow_handle(workflow_id)
            for message in messages:
                await handle.signal(message.topic, encode_signal(parent, message.payloads))
            return pid
        try:
            await host.client.start_workflow(request.entry, body, id=workflow_id, task_queue=host.task_queue,
                                             **options)
        except WorkflowAlreadyStartedError:
            raise MoonwireError(f"workflow {pid} already exists", Kind.ALREADY_EXISTS, retryable=False) from None
        return pid

    # ------------------------------------------------------------ results and watches

    @staticmethod
    async def _running(host: _Host, workflow_id: str) -> bool:
        try:
            description = await host.client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == WorkflowExecutionStatus.RUNNING

    async def _result(self, pid: Pid) -> Outcome:
        """The workflow's result or error, once it ends; transport errors are retried."""
        delay = WATCH_RETRY[0]
        while True:
            try:
                handle = self._handle(pid)
                return Outcome(value=unpack(await handle.result(), MSGPACK))
            except WorkflowFailureError as err:
                return Outcome(error=from_failure(err))
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return Outcome(error=not_found(f"noproc: workflow {pid} not found"))
                log.warning("watching %s: %s; retrying in %.1fs", pid, err, delay)
            except MoonwireError as err:
                return Outcome(error=err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY[1])

    def watch(self, watcher: str, pid: Pid, verb: str, fire: Fire) -> None:
        """Monitor, link, unmonitor or unlink workflow ``pid`` for process ``watcher``.

        Raises:
            MoonwireError: Unavailable when this node has no client for its worker.
        """
        if verb in ("monitor", "link"):
            self._watch(watcher, str(pid), verb == "link", fire)
        else:
            self._unwatch(watcher, str(pid), link=verb == "unlink")

    def tell(self, pid: Pid, event: Event) -> None:
        """A process linked to workflow ``pid`` ended: the link ends (a workflow cannot be
        killed by a process). A workflow monitors no process: nothing else to tell."""
        if event.kind == LINK_DOWN:
            self._unwatch(event.sender, str(pid), link=True)

    def forget(self, watcher: str, pid: Pid) -> None:
        """``watcher`` ended while it monitored workflow ``pid``."""
        self._unwatch(watcher, str(pid), link=False)

    def expect(self, pid: Pid) -> None:
        pass  # a workflow's end is watched through Temporal, not heartbeats

    def describe(self) -> dict[str, Any]:
        return {}

    def _watch(self, watcher: str, target: str, link: bool, fire: Fire) -> None:
        """Deliver EXIT (a monitor) or LINK_DOWN (a link) to ``watcher`` when workflow
        ``target`` ends; the process table applies the rules (a link fires on failure only)."""
        held = self._watches.setdefault(watcher, {})
        key = (target, link)
        if key in held:
            return
        pid = Pid.parse(target)
        assert pid is not None
        self._handle(pid)  # no client for its worker: raise now, not later

        async def watching() -> None:
            outcome = await self._result(pid)
            mine = self._watches.get(watcher)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self._watches[watcher]
            event = Event(LINK_DOWN if link else EXIT, target, time.time(), outcome.value, outcome.error)
            fire(watcher, event)

        held[key] = self._own(watching(), f"watching {target}")

    def _unwatch(self, watcher: str, target: str, *, link: bool) -> None:
        held = self._watches.get(watcher)
        task = held.pop((target, link), None) if held else None
        if held is not None and not held:
            del self._watches[watcher]
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------ signals, cancel, terminate

    def send(self, target: Pid, message: Message) -> None:
        """Signal workflow ``target`` (in order with this node's other signals), or hand
        the message to the nodes that run its worker when this one does not."""
        if target.host in self.hosts:
            try:
                self._signals.put_nowait(_Signal(target, message))
            except asyncio.QueueFull:
                raise MoonwireError(f"cannot signal {target} now: {self._signals.maxsize} signals are waiting to be "
                                    "sent to Temporal from this node", Kind.UNAVAILABLE, retryable=True) from None
        elif self.outbox is not None:
            body, headers = encode(message)
            self.outbox.publish_nowait(self.subjects.workflow(target.host, target.uid), body, headers=headers)
        else:
            raise MoonwireError(f"no temporal.client for worker {target.host} on this node", Kind.UNAVAILABLE,
                                retryable=False)

    async def _send_signals(self) -> None:
        while True:
            signal = await self._signals.get()
            target, message = signal.target, signal.message
            try:
                await self._handle(target).signal(message.topic, encode_signal(message.sender, message.payloads))
            except Exception as err:  # noqa: BLE001 - one bad signal must not stop the sender: it is dead-lettered
                if isinstance(err, RPCError) and err.status == RPCStatusCode.NOT_FOUND:
                    reason = f"no running workflow {target.uid} on worker {target.host}: {err}"
                elif isinstance(err, (RPCError, MoonwireError)):
                    reason = f"signal {message.topic!r} to {target} failed: {err}"
                else:  # a payload Temporal's converter cannot carry (a lone surrogate in a string, say)
                    reason = f"signal {message.topic!r} to {target} cannot be sent: {type(err).__name__}: {err}"
                if signal.subject:  # from the gateway: the message as it came
                    self._dead_letter(signal.subject, signal.body, signal.headers, reason)
                else:
                    body, headers = encode(message)
                    self._dead_letter(self.subjects.workflow(target.host, target.uid), body, headers, reason)

    def _dead_letter(self, subject: str, body: bytes, headers: dict[str, str] | None, reason: str) -> None:
        if self.dead_letters is not None:
            self.dead_letters.publish(subject, body, headers, reason)
        else:  # no broker (a bench): nowhere to republish
            log.warning("undeliverable message on %s: %s", subject, reason)

    async def _on_gateway_async(self, msg: Msg) -> None:
        self._on_gateway(msg)

    def _on_gateway(self, msg: Msg) -> None:
        """A message for a workflow from outside: ``<prefix>.wf.<worker>.<id>[.<topic>]``."""
        for worker in self.hosts:
            prefix = self.subjects.workflow(worker, "")
            if msg.subject.startswith(prefix):
                workflow_id, _, topic = msg.subject[len(prefix):].partition(".")
                break
        else:
            return
        try:
            message = decode(topic, msg.headers or {}, msg.data, self.max_body)
        except Undeliverable as err:
            self._dead_letter(msg.subject, msg.data, msg.headers, str(err))
            return
        try:
            self._signals.put_nowait(_Signal(Pid("", worker, workflow_id), message, msg.subject, msg.data,
                                             msg.headers))
        except asyncio.QueueFull:
            self._dead_letter(msg.subject, msg.data, msg.headers,
                              f"{self._signals.maxsize} signals are waiting to be sent to Temporal from node "
                              f"{self.node} already")

    async def _on_status(self, msg: Msg) -> None:
        """``{"pid": ...}``: the workflow's status, and its result or error once closed.
        ``{"running": <worker>, "limit": n}``: the worker's running workflows.

        Each request ends in its answer (a value or an error), or without a reply subject
        in nothing when it was served and in a dead letter when it was not. At most
        STATUS_REQUESTS are answered at once (each waits for Temporal); past that, at once
        with Unavailable."""
        if self._status_requests >= STATUS_REQUESTS:
            self._answer(msg, Outcome(error=MoonwireError(f"node {self.node} is answering {STATUS_REQUESTS} status "
                                                          "requests already", Kind.UNAVAILABLE, retryable=True)))
            return
        self._status_requests += 1
        self._own(self._answer_status(msg), "a status request")

    async def _answer_status(self, msg: Msg) -> None:
        try:
            data = unpack(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            if isinstance(data, dict) and "running" in data:
                limit = data.get("limit", 1000)
                if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= 100_000:
                    limit = 1000
                reply = Outcome(value=await self.running(str(data["running"]), limit))
            else:
                pid = Pid.parse(str(data.get("pid"))) if isinstance(data, dict) else None
                if pid is None or not pid.is_workflow:
                    raise invalid("a status request is {\"pid\": <workflow PID>} or {\"running\": <worker>}")
                reply = Outcome(value=await self.status(pid))
        except MoonwireError as err:
            reply = Outcome(error=err)
        except Exception as err:  # noqa: BLE001 - the asker is told; a bug is logged once here
            log.exception("a status request on %s failed", msg.subject)
            reply = Outcome(error=internal(f"status request failed: {type(err).__name__}: {err}"))
        finally:
            self._status_requests -= 1
        self._answer(msg, reply)

    def _answer(self, msg: Msg, reply: Outcome) -> None:
        if not msg.reply:
            if reply.error is not None:
                self._dead_letter(msg.subject, msg.data, msg.headers, reply.error.message)
            return
        if self.outbox is None:
            return
        body, headers = encode_reply(reply, (msg.headers or {}).get(CONTENT_TYPE))
        self.outbox.publish_nowait(msg.reply, body, headers=headers)

    async def running(self, worker: str, limit: int = 1000) -> dict[str, Any]:
        """The running workflows on ``worker``'s task queue, as Temporal's visibility
        lists them (``moonwire ps``): at most ``limit`` of them, and how many in all.

        Raises:
            MoonwireError: NotFound for a worker this node has no client for,
                Unavailable when Temporal does not answer.
        """
        host = self.hosts.get(worker)
        if host is None:
            raise not_found(f"this node has no temporal.client for worker {worker}")
        query = f"TaskQueue = {_quoted(host.task_queue)} AND ExecutionStatus = 'Running'"
        now = datetime.now(timezone.utc)
        listed: list[dict[str, Any]] = []
        try:
            if limit > 0:
                async for execution in host.client.list_workflows(query, limit=limit):
                    listed.append({"pid": str(workflow_pid(worker, execution.id)), "type": execution.workflow_type,
                                   "worker": worker, "status": "running",
                                   "uptime": (now - execution.start_time).total_seconds(),
                                   "history_length": execution.history_length})
            total = (await host.client.count_workflows(query)).count if len(listed) >= limit else len(listed)
        except RPCError as err:
            raise MoonwireError(f"temporal: {err}", Kind.UNAVAILABLE, retryable=True) from None
        return {"worker": worker, "task_queue": host.task_queue, "workflows": total, "list": listed}

    async def status(self, pid: Pid) -> dict[str, Any]:
        """What ``moonwire workflow show`` prints.

        Raises:
            MoonwireError: NotFound for an unknown workflow, Unavailable when Temporal
                does not answer.
        """
        handle = self._handle(pid)
        try:
            described = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise not_found(f"workflow {pid} not found") from None
            raise MoonwireError(f"temporal: {err}", Kind.UNAVAILABLE, retryable=True) from None
        status = described.status.name.lower() if described.status is not None else "unknown"
        out: dict[str, Any] = {
            "pid": str(pid), "workflow_id": described.id, "run_id": described.run_id,
            "type": described.workflow_type, "task_queue": described.task_queue, "status": status,
            "started": described.start_time.isoformat() if described.start_time else None,
            "closed": described.close_time.isoformat() if described.close_time else None,
            "history_length": described.history_length,
        }
        if described.close_time is not None:
            outcome = await self._result(pid)
            if outcome.ok:
                out["result"] = outcome.value
            else:
                out["error"] = outcome.error
        return out

    def end(self, target: Pid, verb: str, by: str, reason: str) -> Pending:
        """Cancel or terminate workflow ``target``; settled once Temporal has the request."""
        pending = Pending()

        async def act() -> None:
            try:
                handle = self._handle(target)
                await (handle.cancel() if verb == "cancel" else handle.terminate("terminated by a process"))
                pending.settle(Outcome(value=True))
            except RPCError as err:
                error = (not_found(f"noproc: workflow {target} not found") if err.status == RPCStatusCode.NOT_FOUND
                         else MoonwireError(f"{verb} {target}: {err}", Kind.UNAVAILABLE, retryable=True))
                pending.settle(Outcome(error=error))
            except MoonwireError as err:
                pending.settle(Outcome(error=err))

        pending.abandon = self._own(act(), f"{verb} {target}").cancel
        return pending


def _quoted(text: str) -> str:
    """A string literal of Temporal's list filter."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def task_queue_of(project: Project, worker: TemporalWorkerEntry) -> str:
    client = project.get(worker.client)
    assert isinstance(client, TemporalClientEntry)
    return client.tq_prefix + worker.task_queue


def worker_context(project: Project, code: CodeLoader, worker: TemporalWorkerEntry,
                   task_queues: Callable[[str], str | None], *, limits: Limits = Limits(),
                   mailbox_limit: int = 4096) -> WorkerContext:
    """What the Lua workflows of ``worker`` need: the code of the entries registered
    with it (an entry naming no worker runs on any), and the task queue of every worker."""

    def code_of(workflow_type: str) -> Any:
        entry = project.get(workflow_type)
        if not isinstance(entry, WorkflowEntry):
            raise not_found(f"no workflow.lua entry {workflow_type}")
        if registered_worker(entry) not in (None, worker.id):
            raise not_found(f"{workflow_type} is registered with worker {registered_worker(entry)}, not {worker.id}")
        return code.code(entry)

    return WorkerContext(worker=worker.id, task_queue=task_queue_of(project, worker), code=code_of,
                         task_queues=task_queues, limits=limits, mailbox_limit=mailbox_limit)


def workflow_replayer(project: Project) -> Replayer:
    """A Temporal replayer for this project's Lua workflows: replay recorded histories
    against the current code to find non-determinism before deploying it."""
    workers = [e for e in project.of_kind("temporal.worker") if isinstance(e, TemporalWorkerEntry)]
    if not workers:
        raise invalid("the project has no temporal.worker entry")
    queues = {w.id: task_queue_of(project, w) for w in workers}
    code = CodeLoader(project)

    def any_workflow(workflow_type: str) -> Any:
        entry = project.get(workflow_type)
        if not isinstance(entry, WorkflowEntry):
            raise not_found(f"no workflow.lua entry {workflow_type}")
        return code.code(entry)

    context = WorkerContext(worker=workers[0].id, task_queue=queues[workers[0].id], code=any_workflow,
                            task_queues=queues.get, limits=Limits(), mailbox_limit=4096)
    return Replayer(workflows=[register_replay(context)])


def registered_worker(entry: WorkflowEntry) -> str | None:
    """The worker ``meta.temporal.workflow.worker`` names, if any."""
    temporal = entry.meta.get("temporal") if isinstance(entry.meta, dict) else None
    found = temporal.get("workflow", {}).get("worker") if isinstance(temporal, dict) else None
    return found if isinstance(found, str) else None


async def workflow_status(nc: NatsClient, subjects: Subjects, pid: Pid, timeout: float = 5.0) -> Outcome:
    """Ask a node that has a client for ``pid``'s worker for its status (the CLI)."""
    return await _ask_worker(nc, subjects, pid.host, {"pid": str(pid)}, timeout)


async def running_workflows(nc: NatsClient, subjects: Subjects, worker: str, limit: int = 1000,
                            timeout: float = 2.0) -> Outcome:
    """Ask a node that has a client for ``worker`` for its running workflows (the CLI)."""
    return await _ask_worker(nc, subjects, worker, {"running": worker, "limit": limit}, timeout)


async def _ask_worker(nc: NatsClient, subjects: Subjects, worker: str, body: dict[str, Any],
                      timeout: float) -> Outcome:
    def unanswered(missing: Unanswered) -> MoonwireError:
        if missing.why is Why.NO_RESPONDERS:
            return not_found(f"no node has a temporal.client for worker {worker}")
        return MoonwireError(f"no answer about worker {worker}: {missing}", Kind.UNAVAILABLE, retryable=True)

    return await ask(nc, subjects.workflow_status(worker), body, unanswered, timeout)
