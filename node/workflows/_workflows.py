"""The node's side of workflows (DESIGN §7): Temporal clients and workers in the node's
process and event loop, and workflows as members of the one PID space.

* Every ``temporal.worker`` entry of the project runs as a Temporal worker on its task
  queue (``tq_prefix`` + ``task_queue``) with the dynamic Lua workflow
  (``_workflow_run.py``) and one dynamic activity that runs any function by entry id
  (locally, or through its queue group when this node does not define it).
* ``process.spawn*(wf, "<worker id>", ...)`` starts a workflow and answers its PID
  ``{@<worker>|<workflow id>}``; ``exec`` answers its result.
* ``process.send`` to a workflow PID is a signal named by the topic. Signals leave this
  node in the order they were sent, one RPC at a time (the :class:`Gateway`'s sender). A
  node without a client for the worker, the CLI and plain NATS clients publish to
  ``<prefix>.wf.<worker>.<id>[.<topic>]`` instead, which the gateways of the nodes running
  that worker turn into signals (queue group).
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
from typing import Any

from nats.aio.client import Client as NatsClient
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import RawValue, WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from moonwire.broker import Outbox, Pid, Subjects, TaskSet
from moonwire.broker import Client as BrokerClient
from moonwire.lua import (EXIT, LINK_DOWN, Event, Kind, Limits, Message, MoonwireError, Outcome, Pending, SpawnRequest, invalid, not_found, settled)

from ..functions import CodeLoader, Functions
from ..processes import DEFAULT_MAX_BODY, DeadLetters, Fire, encode
from ..project import Project, TemporalClientEntry, TemporalWorkerEntry, WorkflowEntry
from ..telemetry import WorkflowCounts
from ..wire import request_trace
from ._carry import incoming
from ._gateway import SIGNALS_WAITING, Gateway, workflow_update
from ._payloads import decode, decode_all, is_legacy
from ._payloads import encode as to_payload
from ._requests import update_timeout, update_workflow
from ._search import register as register_search_attributes
from ._temporal import (Host, TemporalUnavailable, connect_client, declared_of, registered_worker, task_queue_of, worker_context, worker_options, workflow_handle, workflow_result, workflow_types)
from ._workflow_codec import SEND_ACTIVITY, WorkflowInput, encode_signal, start_options, to_failure, workflow_id_option, workflow_pid
from ._workflow_run import register_worker, unregister_worker

log = logging.getLogger("moonwire.workflows")

UPDATES_WAITING = 1024
"""Updates this node's units may wait on at once (each holds a task); past it,
``process.update`` fails at once with Unavailable."""


class Workflows:
    """Temporal workers in this node, and workflows seen from its processes."""

    def __init__(self, node: str, project: Project, subjects: Subjects, functions: Functions, code: CodeLoader, *,
                 nats: NatsClient | None = None,
                 outbox: Outbox | None = None, limits: Limits = Limits(), mailbox_limit: int = 4096,
                 max_body: int = DEFAULT_MAX_BODY, gateway: BrokerClient | None = None,
                 dead_letters: DeadLetters | None = None, signals_waiting: int = SIGNALS_WAITING) -> None:
        """``gateway`` is the connection the gateway subscribes on (the node's data
        connection); without it, ``nats`` (without both, no gateway subscriptions)."""
        self.node = node
        self.project = project
        self.subjects = subjects
        self.functions = functions
        self.code = code
        self._route: Callable[[str, Message], None] | None = None
        self._workers = sorted(entry.id for entry in project.of_kind("temporal.worker"))
        self.outbox = outbox
        self.limits = limits
        self.mailbox_limit = mailbox_limit
        self.hosts: dict[str, Host] = {}
        self._tasks = TaskSet(log)  # spawns, watches, cancels and terminates
        # Apart from the rest: each worker shuts down gracefully before its run is awaited.
        self._worker_runs = TaskSet(log)
        self._watches: dict[str, dict[tuple[str, bool], asyncio.Task[None]]] = {}  # by watcher
        self.nats = nats
        self._updates_waiting = 0
        self.types = workflow_types(project)
        # The workers' interceptor: labels from the entry ids and type names of the project.
        self.counts = WorkflowCounts({*project.entries, *self.types.named.values(), SEND_ACTIVITY})
        self.sent = 0  # messages to workflows from this node's processes
        self._gateway = Gateway(node, subjects, self.hosts, nats=nats, connection=gateway, outbox=outbox,
                                dead_letters=dead_letters, max_body=max_body, signals_waiting=signals_waiting,
                                types=self.types)

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
                try:
                    await register_search_attributes(clients[entry.client], client_entry)
                except MoonwireError as err:
                    raise TemporalUnavailable(err.message) from None
            self.hosts[entry.id] = Host(entry, clients[entry.client], task_queue_of(self.project, entry))
        for host in self.hosts.values() if run_workers else ():
            context = worker_context(self.project, self.code, host.entry, self.task_queue,
                                     limits=self.limits, mailbox_limit=self.mailbox_limit)
            host.context = context
            host.worker = Worker(host.client, task_queue=host.task_queue, workflows=[register_worker(context)],
                                 activities=[self._activity()], interceptors=[self.counts],
                                 **worker_options(host.entry))
            host.running = self._worker_runs.start(host.worker.run(), f"worker {host.entry.id}")
            log.info("temporal worker %s on task queue %s", host.entry.id, host.task_queue)
        await self._gateway.start()

    async def stop(self) -> None:
        """Stop taking messages, end what is in flight, then shut each worker down gracefully."""
        await self._gateway.stop()
        await self._tasks.stop()
        for host in self.hosts.values():
            if host.worker is not None and host.running is not None and not host.running.done():
                await host.worker.shutdown()
            if host.running is not None:
                await asyncio.gather(host.running, return_exceptions=True)
            if host.context is not None:
                unregister_worker(host.context)
        await self._worker_runs.stop()  # nothing left by now; what is would be cancelled

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
        async def run_function(args: Sequence[RawValue]) -> RawValue:
            name = activity.info().activity_type
            try:
                if name == SEND_ACTIVITY:
                    self._send_from_workflow(decode(args[0]) if args else None)
                    return to_payload(True)
                if is_legacy(args):  # the one map the previous codec wrote
                    data = decode(args[0])
                    if not isinstance(data, dict) or not isinstance(data.get("args", []), list):
                        raise invalid("an activity input must be a map with a list of args")
                    values, context = list(data.get("args") or []), data.get("ctx")
                else:
                    values, data = decode_all(args), incoming()
                    context = data.get("ctx")
                if not isinstance(context or {}, dict):
                    raise invalid("an activity's context must be a map")
                outcome = await settled(self.functions.call(None, name, values, dict(context or {}), {},
                                                       trace=request_trace(data, None)))
                if outcome.ok:
                    return to_payload(outcome.value)
            except MoonwireError as err:
                raise to_failure(err) from None
            assert outcome.error is not None
            raise to_failure(outcome.error)

        return run_function

    def _send_from_workflow(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("payloads"), list) or not all(
                isinstance(data.get(k), str) for k in ("dest", "topic", "from")):
            raise invalid("a send activity input must be a map of dest, topic, payloads and from")
        assert self._route is not None  # workers run only once started
        self._route(str(data["dest"]), Message(str(data["topic"]), list(data["payloads"]), str(data["from"])))

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
            pending.settle(await workflow_result(self.hosts, Pid.parse(pid)))  # type: ignore[arg-type]

        task = self._tasks.start(start(), f"starting {request.entry}")
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
        explicit = request.name or workflow_id_option(request.options)
        workflow_id = str(explicit) if explicit else f"{request.entry}-{uuid.uuid4().hex[:16]}"
        pid = workflow_pid(request.host, workflow_id)
        if Pid.parse(pid) is None:
            raise invalid(f"workflow id {workflow_id!r} may only hold letters, digits, '_', '-' and ':'")
        messages = [Message(topic, payloads, parent) for topic, payloads in request.messages]
        body = WorkflowInput(request.args, request.context, messages, parent).encode()
        options = start_options(request.options, child=False, declared=declared_of(self.project, request.host))
        # Wippy's rule: an explicit id dedupes unless execution_error_when_already_started
        # says otherwise; an explicit id_conflict_policy wins over both.
        error_if_started = options.pop("execution_error_when_already_started", not explicit)
        conflict = options.setdefault("id_conflict_policy", WorkflowIDConflictPolicy.FAIL if error_if_started
                                      else WorkflowIDConflictPolicy.USE_EXISTING)
        use_existing = conflict == WorkflowIDConflictPolicy.USE_EXISTING or (
            conflict != WorkflowIDConflictPolicy.FAIL and not error_if_started)
        if explicit and conflict == WorkflowIDConflictPolicy.USE_EXISTING and await self._running(host, workflow_id):
            # Dedupe (wippy-surface §3.9): the running one's PID; the new input is
            # ignored, the startup messages are still delivered.
            await self._signal_all(host, workflow_id, messages, parent)
            return pid
        try:
            await host.client.start_workflow(self.types.of(request.entry), args=body, id=workflow_id,
                                             task_queue=host.task_queue, **options)
        except WorkflowAlreadyStartedError:
            # Closed, and the id reuse policy refuses a new run (or running, and
            # id_conflict_policy = fail): the existing one's PID unless asked to fail.
            if not use_existing:
                raise MoonwireError(f"workflow {pid} already exists", Kind.ALREADY_EXISTS, retryable=False) from None
            try:
                await self._signal_all(host, workflow_id, messages, parent)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                raise MoonwireError(f"workflow {pid} already ran and is closed: its startup messages cannot be "
                                    "delivered", Kind.ALREADY_EXISTS, retryable=False) from None
        except RPCError as err:
            if err.status == RPCStatusCode.INVALID_ARGUMENT:  # a search attribute the namespace does not have, say
                raise invalid(f"workflow {request.entry} did not start: {err.message}") from None
            raise
        return pid

    @staticmethod
    async def _signal_all(host: Host, workflow_id: str, messages: list[Message], sender: str) -> None:
        handle = host.client.get_workflow_handle(workflow_id)
        for message in messages:
            await handle.signal(message.topic, args=encode_signal(sender, message.payloads))

    # ------------------------------------------------------------ results and watches

    @staticmethod
    async def _running(host: Host, workflow_id: str) -> bool:
        try:
            description = await host.client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == WorkflowExecutionStatus.RUNNING

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

    def _watch(self, watcher: str, target: str, link: bool, fire: Fire) -> None:
        """Deliver EXIT (a monitor) or LINK_DOWN (a link) to ``watcher`` when workflow
        ``target`` ends; the process table applies the rules (a link fires on failure only)."""
        key = (target, link)
        if key in self._watches.get(watcher, ()):
            return
        pid = Pid.parse(target)
        assert pid is not None
        workflow_handle(self.hosts, pid)  # no client for its worker: raise now, not later
        held = self._watches.setdefault(watcher, {})

        async def watching() -> None:
            outcome = await workflow_result(self.hosts, pid)
            mine = self._watches.get(watcher)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self._watches[watcher]
            event = Event(LINK_DOWN if link else EXIT, target, time.time(), outcome.value, outcome.error)
            fire(watcher, event)

        held[key] = self._tasks.start(watching(), f"watching {target}")

    def _unwatch(self, watcher: str, target: str, *, link: bool) -> None:
        held = self._watches.get(watcher)
        task = held.pop((target, link), None) if held else None
        if held is not None and not held:
            del self._watches[watcher]
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------ updates

    def update(self, pid: Pid, name: str, args: list[Any], options: dict[str, Any]) -> Pending:
        """``process.update``: Temporal update ``name`` to workflow ``pid``, through this
        node's client for its worker or the gateway of a node that has one; its result or
        error (Timeout past the ``update.timeout`` option).

        Raises:
            MoonwireError: Invalid for a bad ``update.timeout``; Unavailable when
                UPDATES_WAITING updates from this node wait already.
        """
        timeout = update_timeout(options)
        if self._updates_waiting >= UPDATES_WAITING:
            raise MoonwireError(f"{UPDATES_WAITING} updates from node {self.node} are waiting for answers already",
                                Kind.UNAVAILABLE, retryable=True)
        pending = Pending()

        async def ask() -> None:
            self._updates_waiting += 1
            try:
                if pid.host in self.hosts:
                    outcome = await update_workflow(self.hosts, pid, name, args, timeout)
                elif self.nats is not None:
                    outcome = await workflow_update(self.nats, self.subjects, pid, name, args, timeout)
                else:
                    outcome = Outcome(error=MoonwireError(f"no temporal.client for worker {pid.host} on this node",
                                                          Kind.UNAVAILABLE, retryable=False))
            finally:
                self._updates_waiting -= 1
            pending.settle(outcome)

        pending.abandon = self._tasks.start(ask(), f"update {name} to {pid}").cancel
        return pending

    # ------------------------------------------------------------ signals, cancel, terminate

    def send(self, target: Pid, message: Message) -> None:
        """Signal workflow ``target`` (in order with this node's other signals), or hand
        the message to the nodes that run its worker when this one does not."""
        self.sent += 1
        if target.host in self.hosts:
            self._gateway.signal_nowait(target, message)
        elif self.outbox is not None:
            body, headers = encode(message)
            self.outbox.publish_nowait(self.subjects.workflow(target.host, target.uid), body, headers=headers)
        else:
            raise MoonwireError(f"no temporal.client for worker {target.host} on this node", Kind.UNAVAILABLE,
                                retryable=False)

    def end(self, target: Pid, verb: str, by: str, reason: str) -> Pending:
        """Cancel or terminate workflow ``target``; settled once Temporal has the request."""
        pending = Pending()

        async def act() -> None:
            try:
                handle = workflow_handle(self.hosts, target)
                await (handle.cancel() if verb == "cancel" else handle.terminate("terminated by a process"))
                pending.settle(Outcome(value=True))
            except RPCError as err:
                error = (not_found(f"noproc: workflow {target} not found") if err.status == RPCStatusCode.NOT_FOUND
                         else MoonwireError(f"{verb} {target}: {err}", Kind.UNAVAILABLE, retryable=True))
                pending.settle(Outcome(error=error))
            except MoonwireError as err:
                pending.settle(Outcome(error=err))

        pending.abandon = self._tasks.start(act(), f"{verb} {target}").cancel
        return pending
