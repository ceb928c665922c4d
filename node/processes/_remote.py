"""Process operations across nodes (DESIGN §5-§6), outbound: messages, watches, cancels,
terminates, spawns and events for processes on other nodes.

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

This module is the outbound side (:class:`RemoteNodes`, the process table's target
for PIDs of other nodes) and the CLI's requests from outside (:func:`spawn_from_outside`,
:func:`survey`); ``_control.py`` serves the same verbs inbound. Everything here is
callbacks; no task per operation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from moonwire.broker import MSGPACK_HEADERS, Membership, Outbox, Pid, Requests, Subjects
from moonwire.lua import EXIT, LINK_DOWN, Answer, Event, Kind, Message, MoonwireError, Outcome, Pending, SpawnRequest, not_found

from ..wire import (Describe, Unanswered, Why, ask, encode_event, encode_spawn, node_down, pack, reply_outcome,
                    why_unanswered)
from ._inboxes import envelope
from ._targets import Fire

CONTROL_TIMEOUT = 5.0
SPAWN_QUEUE = "mw.spawn"
ORDERED_VERBS = frozenset({"cancel", "terminate"})
"""Control verbs that must not overtake the messages their sender sent the target before."""


def epoch(uid: str) -> str:
    """The incarnation part of a uid (``<epoch>-<counter>``)."""
    return uid.partition("-")[0]


class RemoteNodes:
    """Processes on other nodes, as this node's process table reaches them (a
    :class:`~._targets.Target`): messages go to their inboxes (in the stream to their
    node), watches, cancels and terminates are requests to their node's control subject,
    and what this node believes about each node's liveness (``Membership``) decides
    whether to send at all."""

    def __init__(self, node: str, subjects: Subjects, outbox: Outbox, requests: Requests,
                 membership: Membership) -> None:
        self.node = node
        self.subjects = subjects
        self.outbox = outbox
        self.requests = requests
        self.membership = membership
        self.dropped_to_down_nodes = 0
        self.sent = 0

    # ------------------------------------------------------------ the Target interface

    def send(self, pid: Pid, message: Message) -> None:
        if self.membership.known_down(pid.node, epoch(pid.uid)):
            self.dropped_to_down_nodes += 1  # dropped and counted; the sender is not blocked
            self.membership.note_dropped(pid.node)
            return
        # No acknowledgement across nodes (wippy-surface §3.1): in the stream to its node.
        packed = envelope(message)
        limit = self.outbox.stream_limit()
        if limit and packed.size() > limit:  # never publishable: the sender hears why
            raise MoonwireError(f"message to {pid} is {packed.size()} bytes, more than the NATS server "
                                f"takes in one message ({limit})", Kind.INVALID, retryable=False)
        self.sent += 1
        self.outbox.send_nowait(self.subjects.inbox(pid.node, pid.uid), packed, pid.node)

    def end(self, pid: Pid, verb: str, by: str, reason: str) -> Answer:
        body: dict[str, Any] = {"target": str(pid), "by": by}
        if verb == "cancel":
            body["reason"] = reason
        pending = Pending()
        pending.abandon = self.request(verb, pid.node, body, pending.settle)
        return pending

    def watch(self, watcher: str, pid: Pid, verb: str, fire: Fire) -> Answer:
        """Ask ``pid``'s node to add or drop the watch; the answer settles once it has. A
        target that does not exist, or a node that does not answer, fires the monitor or
        link at once; the call itself succeeded."""
        if verb in ("monitor", "link"):
            self.expect(pid)
        pending = Pending()
        target = str(pid)

        def done(outcome: Outcome) -> None:
            if outcome.error is not None and verb in ("monitor", "link"):
                fire(watcher, Event(EXIT if verb == "monitor" else LINK_DOWN, target, time.time(), None,
                                    outcome.error))
            pending.settle(Outcome(value=True))

        pending.abandon = self.request(verb, pid.node, {"watcher": watcher, "target": target}, done)
        return pending

    def tell(self, pid: Pid, event: Event) -> None:
        body, headers = encode_event(event)
        # In the stream to that node, so it arrives once, after the messages sent before it.
        self.outbox.publish_nowait(self.subjects.inbox(pid.node, pid.uid), body, headers=headers, stream=pid.node)

    def forget(self, watcher: str, pid: Pid) -> None:
        self.notify("unmonitor", pid.node, {"watcher": watcher, "target": str(pid)})

    def expect(self, pid: Pid) -> None:
        self.membership.expect(pid.node, epoch(pid.uid))

    def describe(self) -> dict[str, Any]:
        membership = self.membership
        # Liveness as this node judges it (broker/_membership.py): peers believed down
        # until heard again, whether it can hear the broker, and sends dropped meanwhile.
        return {"peers": membership.view(), "down": membership.down_view(), "hearing_for": membership.hearing_for(),
                "dropped_to_down_nodes": self.dropped_to_down_nodes}

    def lookup(self, node: str, name: str) -> Answer:
        pending = Pending()
        pending.abandon = self.request("lookup", node, {"name": name, "scope": "local"}, pending.settle)
        return pending

    # ------------------------------------------------------------ requests

    def request(self, verb: str, node: str, body: dict[str, Any],
                on_reply: Callable[[Outcome], None]) -> Callable[[], None]:
        """Ask ``node`` to run ``verb``. ``on_reply`` gets the answer's value, or its
        error: NotFound (noproc) when the target does not exist, Unavailable (node down)
        when no node answers for it, none answers in time, or ``node`` goes down first.
        Returns a function that abandons the request."""
        # A cancel or terminate travels on the control connection, the messages sent before
        # it on the stream to that node (the data connection there): it carries how far
        # that stream had got, and the target's node runs it only once it got that far.
        return self._ask(self.subjects.control(node, verb), body, on_reply,
                         lambda missing: node_down(node, str(missing)), node,
                         after=node if verb in ORDERED_VERBS else "")

    def spawn(self, request: SpawnRequest, parent: str, node: str | None,
              on_reply: Callable[[Outcome], None]) -> Callable[[], None]:
        """Start ``request`` on ``node``, or on whichever node runs its host; the answer
        is the child's PID."""
        subject, nobody = spawn_route(self.subjects, request, node)
        return self._ask(subject, encode_spawn(request, parent), on_reply, nobody, node)

    def _ask(self, subject: str, body: dict[str, Any], on_reply: Callable[[Outcome], None],
             describe: Describe, node: str | None, after: str = "") -> Callable[[], None]:
        """A request to ``node`` (None: a queue group), which fails with a node-down error
        if that node (or the one that took it from the queue group) goes down first."""
        def answered(reply: Msg | BaseException) -> None:
            if isinstance(reply, BaseException) and why_unanswered(reply) is Why.STOPPING:
                return  # the node is stopping; whoever waited is being stopped too
            on_reply(reply_outcome(reply, describe, CONTROL_TIMEOUT))

        return self.requests.request_nowait(subject, pack(body), timeout=CONTROL_TIMEOUT, callback=answered,
                                            headers=self.requests.headers, after=after, node=node)

    def notify(self, verb: str, node: str, body: dict[str, Any]) -> None:
        self.outbox.publish_nowait(self.subjects.control(node, verb), pack(body), headers=MSGPACK_HEADERS)


def spawn_route(subjects: Subjects, request: SpawnRequest, node: str | None) -> tuple[str, Describe]:
    """Where a spawn request goes, and the error when nobody answers there."""
    if node is not None:
        return subjects.control(node, "spawn"), lambda missing: node_down(node, str(missing))

    def nobody(missing: Unanswered) -> MoonwireError:
        if missing.why is Why.NO_RESPONDERS:
            return not_found(f"no node runs process host {request.host}")
        return MoonwireError(f"no node running process host {request.host} answered ({missing})",
                             Kind.UNAVAILABLE, retryable=True)

    return subjects.spawn(request.host), nobody


async def spawn_from_outside(nc: NatsClient, subjects: Subjects, request: SpawnRequest, node: str | None,
                             timeout: float = CONTROL_TIMEOUT) -> Outcome:
    """Spawn with no parent (``moonwire spawn``); the outcome's value is the PID."""
    subject, nobody = spawn_route(subjects, request, node)
    return await ask(nc, subject, encode_spawn(request, ""), nobody, timeout)


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
        answer = reply_outcome(msg, lambda missing: MoonwireError(str(missing), Kind.UNAVAILABLE), timeout).value
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
