"""Process operations across nodes (DESIGN §5-§6): the control plane and remote events.

Outbound, for a local process acting on a PID of another node: ``monitor``, ``link``,
``unmonitor`` and ``unlink`` are requests to ``<prefix>.ctl.<node>.<verb>`` that the
calling Lua thread waits for, so the watch is in place (or gone) on the target's node
before the call returns, and messages sent after it are ordered after it. When the
target no longer exists the monitor or link fires at once (a NoProc-style NotFound
error); when nobody answers for its node, with a node-down error. ``cancel`` and
``terminate`` are one-way notices.

Exit events for watchers and linked processes on other nodes travel to the watcher's
inbox subject with an ``Mw-Event`` header, on the same subscription as messages, so an
EXIT arrives after every message the exited process sent (DESIGN §4).

Inbound, this node's one subscription ``<prefix>.ctl.<node>.*`` runs the verbs on its
process table. Everything here is callbacks; no task per operation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker import NoResponders, Outbox, Pid, Requests, RequestTimeout, Subjects
from lua import Event, Kind, MoonwireError

from ._payload import CONTENT_TYPE, MSGPACK, pack, unpack

if TYPE_CHECKING:
    from ._processes import ProcessTable

EVENT_HEADER = "Mw-Event"
CONTROL_TIMEOUT = 5.0
_VERBS = ("monitor", "link", "unmonitor", "unlink", "cancel", "terminate")


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
    error = data.get("error")
    if error is not None and not isinstance(error, MoonwireError):
        raise MoonwireError("malformed event error", Kind.INVALID, retryable=False)
    return Event(kind, data["from"], float(data.get("at") or time.time()), data.get("value"), error,
                 data.get("reason"))


class Cluster:
    """This node's side of remote process operations."""

    def __init__(self, nats: NatsClient, outbox: Outbox, requests: Requests, subjects: Subjects, node: str,
                 table: ProcessTable) -> None:
        self.nats = nats
        self.outbox = outbox
        self.requests = requests
        self.subjects = subjects
        self.node = node
        self.table = table
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nats.subscribe(self.subjects.control(self.node, "*"), cb=self._on_control)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    # ------------------------------------------------------------ outbound

    def request(self, verb: str, target: Pid, body: dict[str, Any],
                on_reply: Callable[[MoonwireError | None], None]) -> Callable[[], None]:
        """Ask ``target``'s node to run ``verb``. ``on_reply`` gets None once it is done,
        or the error: NotFound (noproc) when the target does not exist, Unavailable
        (node down) when no node answers for it or none answers in time. Returns a
        function that abandons the request."""
        def answered(reply: Msg | BaseException) -> None:
            if isinstance(reply, NoResponders):
                on_reply(node_down(target.node, "no node answers for it"))
            elif isinstance(reply, RequestTimeout):
                on_reply(node_down(target.node, f"no answer within {CONTROL_TIMEOUT:.0f}s"))
            elif isinstance(reply, Msg):
                try:
                    data = unpack(reply.data, (reply.headers or {}).get(CONTENT_TYPE))
                except MoonwireError as err:
                    on_reply(err)
                    return
                error = data.get("error") if isinstance(data, dict) else None
                on_reply(error if isinstance(error, MoonwireError) else None)
            # else: the node is stopping; whoever waited is being stopped too

        return self.requests.request_nowait(self.subjects.control(target.node, verb), pack(body),
                                            timeout=CONTROL_TIMEOUT, callback=answered,
                                            headers={CONTENT_TYPE: MSGPACK})

    def notify(self, verb: str, target: Pid, body: dict[str, Any]) -> None:
        self.outbox.publish_nowait(self.subjects.control(target.node, verb), pack(body),
                                   headers={CONTENT_TYPE: MSGPACK})

    def event(self, to: Pid, event: Event) -> None:
        body, headers = encode_event(event)
        self.outbox.publish_nowait(self.subjects.inbox(to.node, to.uid), body, headers=headers)

    # ------------------------------------------------------------ inbound

    async def _on_control(self, msg: Msg) -> None:
        verb = msg.subject.rpartition(".")[2]
        try:
            data = unpack(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            if verb not in _VERBS or not isinstance(data, dict):
                raise MoonwireError(f"unknown control request {verb!r}", Kind.INVALID, retryable=False)
            self.table.control(verb, data)
            reply: dict[str, Any] = {"ok": True}
        except MoonwireError as err:
            reply = {"error": err}
        if msg.reply:
            self.outbox.publish_nowait(msg.reply, pack(reply), headers={CONTENT_TYPE: MSGPACK})
