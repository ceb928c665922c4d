"""What arrives on NATS for workflows, and the signals this node sends them.

* ``<prefix>.wf.<worker>.<id>[.<topic>]`` (queue group ``mw.wf``): a message for a
  workflow from a node without a client for its worker, the CLI or a plain NATS
  client, turned into a signal here.
* Signals (from there and from this node's processes) wait in one bounded queue and
  leave in the order they came, one Temporal RPC at a time; a signal Temporal refuses is
  dead-lettered.
* ``<prefix>.wfq.<worker>``: status requests (a workflow's status and result, a worker's
  running workflows), and :func:`workflow_status`/:func:`running_workflows`, the CLI's
  side of them.
* ``<prefix>.wfq.<worker>.ask``: updates and queries (``_requests.py``) for the CLI and
  for nodes without a client for the worker (:func:`workflow_update`,
  :func:`workflow_query`). Apart from status requests, and bounded on their own: an
  update may wait for the workflow's answer for as long as its caller allows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from temporalio.service import RPCError, RPCStatusCode

from moonwire.broker import Outbox, Pid, Subjects, TaskSet
from moonwire.broker import Client as BrokerClient
from moonwire.lua import Kind, Message, MoonwireError, Outcome, internal, invalid, not_found

from ..processes import DeadLetters, Undeliverable, decode, encode
from ..wire import CONTENT_TYPE, Unanswered, Why, answer, ask, unpack
from ._requests import QUERY_TIMEOUT, serve_ask
from ._temporal import Host, workflow_handle, workflow_result
from ._workflow_codec import WorkflowTypes, encode_signal, workflow_pid

log = logging.getLogger("moonwire.workflows")

GATEWAY_QUEUE = "mw.wf"
SIGNALS_WAITING = 1024
"""Signals that may wait for this node's signal sender (one Temporal RPC at a time);
past it a signal from the gateway is dead-lettered and a process's send fails."""
STATUS_REQUESTS = 64
"""Status requests (``mw.wfq``) answered at once; each holds a task waiting for Temporal."""
ASKS = 256
"""Updates and queries (``mw.wfq.<worker>.ask``) served at once; each holds a task
waiting for the workflow's answer."""
ANSWER_MARGIN = 2.0
"""Seconds an asker waits beyond its ask's own timeout, for the gateway's answer to travel."""


def ask_subject(subjects: Subjects, worker: str) -> str:
    return subjects.workflow_status(worker) + ".ask"


@dataclass(frozen=True, slots=True)
class _Signal:
    """A signal waiting to be sent; one from the gateway keeps the message as it came,
    for the dead-letter queue."""

    target: Pid
    message: Message
    subject: str = ""
    body: bytes = b""
    headers: dict[str, str] | None = None


class Gateway:
    """This node's workflow subjects and its signal sender. It owns its subscriptions,
    the queue of signals waiting for Temporal and the tasks serving both (the sender,
    one per status request)."""

    def __init__(self, node: str, subjects: Subjects, hosts: Mapping[str, Host], *, nats: NatsClient | None,
                 connection: BrokerClient | None, outbox: Outbox | None, dead_letters: DeadLetters | None,
                 max_body: int, signals_waiting: int, types: WorkflowTypes = WorkflowTypes()) -> None:
        self.node = node
        self.subjects = subjects
        self.hosts = hosts
        """The worker hosts of this node (the Workflows' own map, filled before :meth:`start`)."""
        self.nats = nats
        self.connection = connection
        """The connection the gateway subscribes on (the node's data connection)."""
        self.outbox = outbox
        self.dead_letters = dead_letters
        self.max_body = max_body
        self.types = types
        """Temporal type -> entry, for listings (``meta.temporal.workflow.name``)."""
        self._tasks = TaskSet(log)
        # Bounded: what waits here waits for one RPC at a time (~700/s measured).
        self._signals: asyncio.Queue[_Signal] = asyncio.Queue(signals_waiting)
        self._subscriptions: list[Subscription] = []
        self._on_status = self._serving(STATUS_REQUESTS, "status requests", self._status)
        self._on_ask = self._serving(ASKS, "updates and queries", lambda data: serve_ask(self.hosts, data))

    async def start(self) -> None:
        """Start the signal sender and subscribe to every worker's subjects."""
        self._tasks.start(self._send_signals(), "the workflow signal sender")
        if self.nats is None:
            return
        for worker in self.hosts:
            if self.connection is not None:  # handled in its read loop, like process inboxes
                self._subscriptions.append(await self.connection.subscribe_direct(
                    self.subjects.workflows(worker), self._on_gateway, queue=GATEWAY_QUEUE))
            else:
                self._subscriptions.append(await self.nats.subscribe(
                    self.subjects.workflows(worker), queue=GATEWAY_QUEUE, cb=self._on_gateway_async))
            self._subscriptions.append(await self.nats.subscribe(
                self.subjects.workflow_status(worker), queue=GATEWAY_QUEUE, cb=self._on_status))
            self._subscriptions.append(await self.nats.subscribe(
                ask_subject(self.subjects, worker), queue=GATEWAY_QUEUE, cb=self._on_ask))

    async def stop(self) -> None:
        """Unsubscribe, then end the sender and the status requests being answered."""
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()
        await self._tasks.stop()

    def signal_nowait(self, target: Pid, message: Message) -> None:
        """Queue a signal to workflow ``target`` behind this node's others.

        Raises:
            MoonwireError: Unavailable (retryable) when the queue is full.
        """
        try:
            self._signals.put_nowait(_Signal(target, message))
        except asyncio.QueueFull:
            raise MoonwireError(f"cannot signal {target} now: {self._signals.maxsize} signals are waiting to be "
                                "sent to Temporal from this node", Kind.UNAVAILABLE, retryable=True) from None

    async def _send_signals(self) -> None:
        while True:
            signal = await self._signals.get()
            target, message = signal.target, signal.message
            try:
                handle = workflow_handle(self.hosts, target)
                await handle.signal(message.topic, args=encode_signal(message.sender, message.payloads))
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

    def _serving(self, limit: int, what: str,
                 reply: Callable[[Any], Awaitable[Any]]) -> Callable[[Msg], Awaitable[None]]:
        """A subscription callback serving requests with ``reply`` (the decoded body ->
        the answer's value; MoonwireError for an error answer).

        Each request ends in its answer (a value or an error), or without a reply subject
        in nothing when it was served and in a dead letter when it was not. At most
        ``limit`` are served at once (each waits for Temporal); past that, the answer is
        Unavailable at once."""
        serving = 0

        async def on_request(msg: Msg) -> None:
            nonlocal serving
            if serving >= limit:
                self._answer(msg, Outcome(error=MoonwireError(f"node {self.node} is serving {limit} {what} already",
                                                              Kind.UNAVAILABLE, retryable=True)))
                return
            serving += 1

            async def serve() -> None:
                nonlocal serving
                try:
                    answer = Outcome(value=await reply(unpack(msg.data, (msg.headers or {}).get(CONTENT_TYPE))))
                except MoonwireError as err:
                    answer = Outcome(error=err)
                except Exception as err:  # noqa: BLE001 - the asker is told; a bug is logged once here
                    log.exception("serving %s on %s failed", what, msg.subject)
                    answer = Outcome(error=internal(f"{what}: {type(err).__name__}: {err}"))
                finally:
                    serving -= 1
                self._answer(msg, answer)

            self._tasks.start(serve(), f"serving {what}")

        return on_request

    async def _status(self, data: Any) -> Any:
        """``{"pid": ...}``: the workflow's status, and its result or error once closed.
        ``{"running": <worker>, "limit": n}``: the worker's running workflows."""
        if isinstance(data, dict) and "running" in data:
            limit = data.get("limit", 1000)
            if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= 100_000:
                limit = 1000
            return await self.running(str(data["running"]), limit)
        pid = Pid.parse(str(data.get("pid"))) if isinstance(data, dict) else None
        if pid is None or not pid.is_workflow:
            raise invalid("a status request is {\"pid\": <workflow PID>} or {\"running\": <worker>}")
        return await self.status(pid)

    def _answer(self, msg: Msg, reply: Outcome) -> None:
        if self.outbox is not None:
            answer(msg, reply, self.outbox.publish_nowait, self._dead_letter,
                   self.nats.max_payload if self.nats is not None else 0)

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
                    listed.append({"pid": str(workflow_pid(worker, execution.id)),
                                   "type": self.types.entry(execution.workflow_type),
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
        handle = workflow_handle(self.hosts, pid)
        try:
            described = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise not_found(f"workflow {pid} not found") from None
            raise MoonwireError(f"temporal: {err}", Kind.UNAVAILABLE, retryable=True) from None
        status = described.status.name.lower() if described.status is not None else "unknown"
        out: dict[str, Any] = {
            "pid": str(pid), "workflow_id": described.id, "run_id": described.run_id,
            "type": self.types.entry(described.workflow_type), "task_queue": described.task_queue, "status": status,
            "started": described.start_time.isoformat() if described.start_time else None,
            "closed": described.close_time.isoformat() if described.close_time else None,
            "history_length": described.history_length,
        }
        if out["type"] != described.workflow_type:  # meta.temporal.workflow.name
            out["workflow_type"] = described.workflow_type
        if described.close_time is not None:
            outcome = await workflow_result(self.hosts, pid)
            if outcome.ok:
                out["result"] = outcome.value
            else:
                out["error"] = outcome.error
        return out


def _quoted(text: str) -> str:
    """A string literal of Temporal's list filter."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def workflow_status(nc: NatsClient, subjects: Subjects, pid: Pid, timeout: float = 5.0) -> Outcome:
    """Ask a node that has a client for ``pid``'s worker for its status (the CLI)."""
    return await _ask_worker(nc, subjects, pid.host, {"pid": str(pid)}, timeout)


async def running_workflows(nc: NatsClient, subjects: Subjects, worker: str, limit: int = 1000,
                            timeout: float = 2.0) -> Outcome:
    """Ask a node that has a client for ``worker`` for its running workflows (the CLI)."""
    return await _ask_worker(nc, subjects, worker, {"running": worker, "limit": limit}, timeout)


async def workflow_update(nc: NatsClient, subjects: Subjects, pid: Pid, name: str, args: list[Any],
                          timeout: float) -> Outcome:
    """Send update ``name`` to workflow ``pid`` through a node that has a client for its
    worker, and wait for the answer at most ``timeout`` seconds (the CLI, a node without
    a client)."""
    body = {"ask": "update", "pid": str(pid), "name": name, "args": args, "timeout": timeout}
    return await _ask_worker(nc, subjects, pid.host, body, timeout + ANSWER_MARGIN, ask_subject(subjects, pid.host))


async def workflow_query(nc: NatsClient, subjects: Subjects, pid: Pid, name: str) -> Outcome:
    """Query ``name`` of workflow ``pid`` through a node that has a client for its worker."""
    body = {"ask": "query", "pid": str(pid), "name": name}
    return await _ask_worker(nc, subjects, pid.host, body, QUERY_TIMEOUT + ANSWER_MARGIN,
                             ask_subject(subjects, pid.host))


async def _ask_worker(nc: NatsClient, subjects: Subjects, worker: str, body: dict[str, Any],
                      timeout: float, subject: str | None = None) -> Outcome:
    def unanswered(missing: Unanswered) -> MoonwireError:
        if missing.why is Why.NO_RESPONDERS:
            return not_found(f"no node has a temporal.client for worker {worker}")
        return MoonwireError(f"no answer about worker {worker}: {missing}", Kind.UNAVAILABLE, retryable=True)

    return await ask(nc, subject or subjects.workflow_status(worker), body, unanswered, timeout)
