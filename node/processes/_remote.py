"""Process operations across nodes (DESIGN §5-§6): the control plane and remote events.

Outbound, for a local process acting on a PID of another node: ``monitor``, ``link``,
``unmonitor``, ``unlink`` and ``lookup`` are requests to ``<prefix>.ctl.<node>.<verb>``
that the calling Lua thread waits for, so the watch is in place (or gone) on the
target's node before the call returns, and messages sent after it are ordered after
it. When the target no longer exists the monitor or link fires at once (a NoProc-style
NotFound error); when nobody answers for its node, with a node-down error. ``cancel``
and ``terminate`` are requests too (an unknown target answers NotFound); what a process
tells other nodes when it exits (``unmonitor`` of what it watched) is a one-way notice.

Spawning on a host this node does not run is a request to the queue group
``<prefix>.spawn.<host id>`` (one node that runs the host answers with the PID), or to
``<prefix>.ctl.<node>.spawn`` when the spawner pins a node. The parent's monitor and
link travel in the request and are in place on the child's node before it starts.

Exit events for watchers and linked processes on other nodes travel to the watcher's
inbox subject with an ``Mw-Event`` header, on the same subscription as messages, so an
EXIT arrives after every message the exited process sent (DESIGN §4).

For the CLI, every node answers ``<prefix>.nodes.info`` and ``<prefix>.nodes.ps``
(broadcast) and the same verbs on its control subject; :func:`survey` gathers them.

Inbound, this node's subscriptions run the verbs on its process table. Everything here
is callbacks; no task per operation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError as NatsNoResponders
from nats.errors import TimeoutError as NatsTimeout

from moonwire.broker import MSGPACK_HEADERS, NoResponders, Outbox, Requests, RequestTimeout, Streams, Subjects
from moonwire.lua import (Event, Kind, MoonwireError, Outcome, Pending, SpawnRequest, check_portable, internal, invalid, not_found)

from ..wire import CONTENT_TYPE, MSGPACK, pack, pack_reply, unpack

if TYPE_CHECKING:
    from ._table import ProcessTable

log = logging.getLogger("moonwire.remote")

EVENT_HEADER = "Mw-Event"
CONTROL_TIMEOUT = 5.0
SPAWN_QUEUE = "mw.spawn"
SURVEY_VERBS = frozenset({"info", "ps"})
DeadLetter = Callable[[str, bytes, "dict[str, str] | None", str], None]
"""Republishes a message (subject, body, headers) with a reason to the dead-letter queue."""
ORDERED_VERBS = frozenset({"cancel", "terminate"})
"""Control verbs that must not overtake the messages their sender sent the target before."""
CONTROL_VERBS = frozenset({"monitor", "link", "unmonitor", "unlink", "cancel", "terminate", "spawn", "lookup"}
                          ) | SURVEY_VERBS


def noproc(pid: str) -> MoonwireError:
    return MoonwireError(f"noproc: process {pid} does not exist", Kind.NOT_FOUND, retryable=False,
                         details={"pid": pid})


def node_down(node: str, reason: str) -> MoonwireError:
    return MoonwireError(f"node down: node {node} is unreachable ({reason})", Kind.UNAVAILABLE, retryable=True,
                         details={"node": node})


def encode_event(event: Event) -> tuple[bytes, dict[str, str]]:
    body = {"from": event.sender, "at": event.at}
    if event.reason is not None:
        body["reason"] = event.reason
    elif event.error is not None:
        body["error"] = event.error
    else:
        body["value"] = event.value
    return pack(body), {CONTENT_TYPE: MSGPACK, EVENT_HEADER: event.kind}


def decode_event(kind: str, body: bytes) -> Event:
    """Raises MoonwireError (Invalid) for a body that is not an event."""
    data = unpack(body, MSGPACK)
    if not isinstance(data, dict) or not isinstance(data.get("from"), str):
        raise MoonwireError("malformed event body", Kind.INVALID, retryable=False)
    error, at, reason = data.get("error"), data.get("at"), data.get("reason")
    if error is not None and not isinstance(error, MoonwireError):
        raise MoonwireError("malformed event error", Kind.INVALID, retryable=False)
    if not (at is None or isinstance(at, (int, float)) and not isinstance(at, bool)) or not (
            reason is None or isinstance(reason, str)):
        raise MoonwireError("malformed event: 'at' must be a number and 'reason' a string", Kind.INVALID,
                            retryable=False)
    check_portable(data.get("value"))
    if error is not None:
        check_portable(error)
    return Event(kind, data["from"], float(at or time.time()), data.get("value"), error, reason)


def encode_spawn(request: SpawnRequest, parent: str) -> dict[str, Any]:
    return {"request": asdict(request), "parent": parent}


def decode_spawn(data: dict[str, Any]) -> tuple[SpawnRequest, str]:
    """Raises MoonwireError (Invalid) for a body that is not a spawn request."""
    fields = data.get("request")
    parent = data.get("parent", "")
    try:
        if not isinstance(fields, dict) or not isinstance(parent, str):
            raise TypeError("expected {request, parent}")
        request = SpawnRequest(**fields)
        request.messages = [(str(topic), list(payloads)) for topic, payloads in request.messages]
        if not (isinstance(request.entry, str) and isinstance(request.host, str) and isinstance(request.args, list)
                and isinstance(request.context, dict) and isinstance(request.options, dict)):
            raise TypeError("field of the wrong type")
    except (TypeError, ValueError) as err:
        raise invalid(f"malformed spawn request: {err}") from err
    return request, parent


class Cluster:
    """This node's side of remote process operations."""

    def __init__(self, nats: NatsClient, outbox: Outbox, requests: Requests, subjects: Subjects, node: str,
                 table: ProcessTable, streams: Streams[Any] | None = None) -> None:
        self.nats = nats
        self.streams = streams
        """Where a cancel or terminate waits for the messages its sender sent before it."""
        self.outbox = outbox
        self.requests = requests
        self.subjects = subjects
        self.node = node
        self.table = table
        self.dead_letter: DeadLetter | None = None
        """Where a request without a reply subject that cannot be served goes (set by the node)."""
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        """Serve this node's control subject, the survey subjects, and the spawn queue
        group of every host it runs (``spawn_hosts``)."""
        subscribe = self.nats.subscribe
        self._subscriptions.append(await subscribe(self.subjects.control(self.node, "*"), cb=self._on_control))
        self._subscriptions.append(await subscribe(self.subjects.survey("*"), cb=self._on_survey))
        for host in self.table.spawn_hosts():
            self._subscriptions.append(await subscribe(self.subjects.spawn(host), queue=SPAWN_QUEUE,
                                                       cb=self._on_spawn))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.unsubscribe()

    # ------------------------------------------------------------ outbound

    def request(self, verb: str, node: str, body: dict[str, Any],
                on_reply: Callable[[Outcome], None]) -> Callable[[], None]:
        """Ask ``node`` to run ``verb``. ``on_reply`` gets the answer's value, or its
        error: NotFound (noproc) when the target does not exist, Unavailable (node down)
        when no node answers for it or none answers in time. Returns a function that
        abandons the request."""
        # A cancel or terminate travels on the control connection, the messages sent before
        # it on the stream to that node (the data connection there): it carries how far
        # that stream had got, and the target's node runs it only once it got that far.
        return self._ask(self.subjects.control(node, verb), body, on_reply,
                         lambda why: node_down(node, why), after=node if verb in ORDERED_VERBS else "")

    def spawn(self, request: SpawnRequest, parent: str, node: str | None,
              on_reply: Callable[[Outcome], None]) -> Callable[[], None]:
        """Start ``request`` on ``node``, or on whichever node runs its host; the answer
        is the child's PID."""
        subject, nobody = _spawn_route(self.subjects, request, node)
        return self._ask(subject, encode_spawn(request, parent), on_reply, nobody)

    def _ask(self, subject: str, body: dict[str, Any], on_reply: Callable[[Outcome], None],
             nobody: Callable[[str], MoonwireError], after: str = "") -> Callable[[], None]:
        def answered(reply: Msg | BaseException) -> None:
            if isinstance(reply, NoResponders):
                on_reply(Outcome(error=nobody(_NO_RESPONDERS)))
            elif isinstance(reply, RequestTimeout):
                on_reply(Outcome(error=nobody(f"no answer within {CONTROL_TIMEOUT:.0f}s")))
            elif isinstance(reply, Msg):
                on_reply(reply_outcome(reply))
            # else: the node is stopping; whoever waited is being stopped too

        return self.requests.request_nowait(subject, pack(body), timeout=CONTROL_TIMEOUT, callback=answered,
                                            headers=MSGPACK_HEADERS, after=after)

    def notify(self, verb: str, node: str, body: dict[str, Any]) -> None:
        self.outbox.publish_nowait(self.subjects.control(node, verb), pack(body), headers=MSGPACK_HEADERS)

    def event(self, node: str, uid: str, event: Event) -> None:
        body, headers = encode_event(event)
        # In the stream to that node, so it arrives once, after the messages sent before it.
        self.outbox.publish_nowait(self.subjects.inbox(node, uid), body, headers=headers, stream=node)

    # ------------------------------------------------------------ inbound

    async def _on_control(self, msg: Msg) -> None:
        self._run_verb(msg, CONTROL_VERBS)

    async def _on_survey(self, msg: Msg) -> None:
        self._run_verb(msg, SURVEY_VERBS)  # asked of every node: nothing that acts

    def _run_verb(self, msg: Msg, allowed: frozenset[str]) -> None:
        verb = msg.subject.rpartition(".")[2]

        def answer() -> None:
            self._answer(msg, lambda data: self.table.control(verb, data) if verb in allowed else _unknown(verb))

        if self.streams is None or verb not in ORDERED_VERBS:
            answer()
            return
        try:
            self.streams.when_delivered(msg.headers, answer)
        except ValueError as err:
            self._reply(msg, {"error": invalid(f"control request on {msg.subject}: {err}")})

    async def _on_spawn(self, msg: Msg) -> None:
        self._answer(msg, lambda data: self.table.control("spawn", data))

    def _answer(self, msg: Msg, run: Callable[[dict[str, Any]], Any]) -> None:
        """The one body of every inbound handler: decode, run, answer. Exactly one exit:
        the answer (a value or an error) to the reply subject; without one, an error
        goes to the dead-letter queue. Nothing raises into the client's read loop."""
        try:
            data = unpack(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            if not isinstance(data, dict):
                raise invalid("a control request body must be a map")
            value = run(data)
            if isinstance(value, Pending):  # answered later (a workflow start, say)
                value.listen(lambda outcome: self._reply(msg, {"value": outcome.value} if outcome.ok
                                                         else {"error": outcome.error}))
                return
            reply: dict[str, Any] = {"value": value}
        except MoonwireError as err:
            reply = {"error": err}
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a field missing or of the wrong type
            reply = {"error": invalid(f"malformed control request on {msg.subject}: {type(err).__name__}: {err}")}
        except Exception as err:  # noqa: BLE001 - a bug here must not reach the read loop; it is answered
            log.exception("control request on %s failed", msg.subject)
            reply = {"error": internal(f"control request on {msg.subject} failed: {type(err).__name__}: {err}")}
        self._reply(msg, reply)

    def _reply(self, msg: Msg, reply: dict[str, Any]) -> None:
        error = reply.get("error")
        if not msg.reply:
            if error is not None:
                self._dead_letter(msg, error.message if isinstance(error, MoonwireError) else str(error))
            return
        self.outbox.publish_nowait(msg.reply, pack_reply(reply), headers=MSGPACK_HEADERS)

    def _dead_letter(self, msg: Msg, reason: str) -> None:
        if self.dead_letter is not None:
            self.dead_letter(msg.subject, msg.data, msg.headers, reason)
        else:
            log.warning("request on %s without a reply subject failed: %s", msg.subject, reason)


_NO_RESPONDERS = "nobody serves it"


def _spawn_route(subjects: Subjects, request: SpawnRequest,
                 node: str | None) -> tuple[str, Callable[[str], MoonwireError]]:
    """Where a spawn request goes, and the error when nobody answers there."""
    if node is not None:
        return subjects.control(node, "spawn"), lambda why: node_down(node, why)

    def nobody(why: str) -> MoonwireError:
        if why == _NO_RESPONDERS:
            return not_found(f"no node runs process host {request.host}")
        return MoonwireError(f"no node running process host {request.host} answered ({why})",
                             Kind.UNAVAILABLE, retryable=True)

    return subjects.spawn(request.host), nobody


async def spawn_from_outside(nc: NatsClient, subjects: Subjects, request: SpawnRequest, node: str | None,
                             timeout: float = CONTROL_TIMEOUT) -> Outcome:
    """Spawn with no parent (``moonwire spawn``); the outcome's value is the PID."""
    subject, nobody = _spawn_route(subjects, request, node)
    try:
        reply = await nc.request(subject, pack(encode_spawn(request, "")), timeout=timeout,
                                 headers=MSGPACK_HEADERS)
    except NatsNoResponders:
        return Outcome(error=nobody(_NO_RESPONDERS))
    except NatsTimeout:
        return Outcome(error=nobody(f"no answer within {timeout:.0f}s"))
    return reply_outcome(reply)


def _unknown(verb: str) -> Any:
    raise invalid(f"unknown control request {verb!r}")


def reply_outcome(reply: Msg) -> Outcome:
    """The outcome a control reply (``{"value"}`` or ``{"error"}``) carries."""
    try:
        data = unpack(reply.data, (reply.headers or {}).get(CONTENT_TYPE))
    except MoonwireError as err:
        return Outcome(error=err)
    if not isinstance(data, dict):
        return Outcome(error=invalid("malformed control reply"))
    error = data.get("error")
    if isinstance(error, MoonwireError):
        return Outcome(error=error)
    if error is not None:
        return Outcome(error=invalid("malformed control reply: its error is not an error value"))
    return Outcome(value=data.get("value"))


# ---------------------------------------------------------------- surveys (CLI)


@dataclass
class Survey:
    """What the nodes answered to a survey, and which known nodes did not."""

    answers: dict[str, Any] = field(default_factory=dict)
    """Node name -> its answer."""
    missing: list[str] = field(default_factory=list)


async def survey(nc: NatsClient, subjects: Subjects, verb: str, body: dict[str, Any] | None = None, *,
                 node: str | None = None, timeout: float = 0.8) -> Survey:
    """Ask every node (or only ``node``) for ``verb`` (``info`` or ``ps``).

    Every answer names the nodes its sender knows to be alive; the survey ends as soon as
    each of those has answered, or at ``timeout``. Known nodes that stayed silent are
    listed in ``missing``."""
    result = Survey()
    expected: set[str] = {node} if node is not None else set()
    complete = asyncio.Event()
    inbox = nc.new_inbox()

    async def on_answer(msg: Msg) -> None:
        answer = reply_outcome(msg).value
        if not isinstance(answer, dict) or not isinstance(answer.get("node"), str):
            return
        result.answers[answer["node"]] = answer
        if node is None:
            expected.update(str(peer["node"]) for peer in answer.get("peers", ()) if isinstance(peer, dict))
        if expected <= set(result.answers):
            complete.set()

    subscription = await nc.subscribe(inbox, cb=on_answer)
    try:
        subject = subjects.control(node, verb) if node is not None else subjects.survey(verb)
        await nc.publish(subject, pack(body or {}), reply=inbox, headers=MSGPACK_HEADERS)
        await nc.flush()
        try:
            await asyncio.wait_for(complete.wait(), timeout)
        except TimeoutError:
            pass
    finally:
        await subscription.unsubscribe()
    result.missing = sorted(expected - set(result.answers))
    return result
