"""The calls this node serves for other nodes that did not finish at once.

A node that calls names itself in its requests (``Mw-Caller: <node>.<incarnation>``,
``broker.CALLER``). When this node cannot answer such a call at once (the function
waits, or it is a process-function, which always does), it first tells the caller it
took it: an empty message with ``Mw-Taken: <node>.<incarnation>`` to the reply subject
(``wire.tell_taken``), so the caller fails the call with a node-down error if this node
dies before it answers, instead of waiting for its timeout. Calls answered at once
(most function calls) cost nothing more.

The work is given up when nobody waits for the answer any more: the calling node gave
the call up and said so (``abandon``: the ``mw.ctl.<node>.abandon`` notice, sent when
a taken call is abandoned or times out there), or the calling node went down
(``caller_down``, from this node's membership). Giving up cancels the task serving the
call: a function's unit ends cancelled, a process-function's process gets CANCEL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from moonwire.broker import CALLER, MSGPACK_HEADERS, Membership, Requests, Subjects

from ..wire import pack, taken_headers, tell_taken


class ServedCalls:
    """The calls served here for other nodes that are still running, by reply subject
    and by calling node."""

    def __init__(self, node: str, incarnation: str, publish: Callable[..., None]) -> None:
        self._notice = taken_headers(node, incarnation)
        self._publish = publish
        """An outbox's ``publish_nowait``: the notice leaves before the reply does."""
        self._by_reply: dict[str, asyncio.Task[Any]] = {}
        self._by_caller: dict[str, set[str]] = {}
        """``<node>.<incarnation>`` -> the reply subjects of its calls served here."""

    def took(self, msg: Msg, task: asyncio.Task[Any]) -> None:
        """``task`` answers ``msg`` later: tell a calling node, and give the work up if it
        goes down. Only a node this one has heard can be declared down: the header is
        not taken as a reason to watch a node (anyone may write it), and a caller that
        dies within its first heartbeat interval leaves its call to run to its end."""
        caller = msg.headers.get(CALLER) if msg.headers else None
        if caller is None or not msg.reply or msg.reply in self._by_reply:
            return
        tell_taken(msg, self._publish, self._notice)
        reply = msg.reply
        self._by_reply[reply] = task
        self._by_caller.setdefault(caller, set()).add(reply)
        task.add_done_callback(lambda _: self._forget(caller, reply))

    def _forget(self, caller: str, reply: str) -> None:
        self._by_reply.pop(reply, None)
        replies = self._by_caller.get(caller)
        if replies is not None:
            replies.discard(reply)
            if not replies:
                del self._by_caller[caller]

    def abandon(self, reply: str) -> bool:
        """The caller gave up the call answered to ``reply``: stop serving it. False
        when no such call runs here (it ended, or it was never this node's)."""
        task = self._by_reply.get(reply)
        if task is None:
            return False
        task.cancel()
        return True

    def caller_down(self, node: str, incarnation: str) -> None:
        """``node`` (that incarnation) is down: nobody waits for its calls' answers."""
        for reply in list(self._by_caller.get(f"{node}.{incarnation}", ())):
            self.abandon(reply)

    def __len__(self) -> int:
        return len(self._by_reply)


def watch_calls(requests: Requests, membership: Membership, publish: Callable[..., None], subjects: Subjects,
                node: str, incarnation: str) -> tuple[ServedCalls, Callable[[str, str, str], None]]:
    """Wire both ends of node-death detection for requests on a node: its requests name
    it (``Mw-Caller``), are watched by its membership, tell the serving node when a call
    it took is given up, and probe with ``info`` for requests lost before any notice.
    Returns the node's :class:`ServedCalls` and what to call when a node goes down
    (``on_down(node, incarnation, reason)``)."""
    requests.identify(node, incarnation)
    requests.liveness = membership
    requests.probe = lambda peer: subjects.control(peer, "info")
    requests.on_abandon = lambda taker, reply: publish(subjects.control(taker, "abandon"), pack({"reply": reply}),
                                                       headers=MSGPACK_HEADERS)
    served = ServedCalls(node, incarnation, publish)

    def node_down(down: str, down_incarnation: str, reason: str) -> None:
        requests.node_down(down, down_incarnation, reason)
        served.caller_down(down, down_incarnation)

    return served, node_down
