"""Request/reply without a task per request.

:class:`Requests` (publishing through the node's :class:`~broker._outbox.Outbox`)
multiplexes replies over one wildcard inbox subscription: a reply is matched to its
request by token and handed to a callback, so a waiting Lua thread is woken straight
from the subscription, with no Task, future or ``wait_for`` per request.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Protocol

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._client import Client, Headers
from ._envelope import BATCH_HEADER, CONTENT_TYPE, MSGPACK, MSGPACK_HEADERS, REPLIES_HEADER, reply_items
from ._outbox import Outbox

log = logging.getLogger("moonwire.broker")

NO_RESPONDERS = "503"


class NoResponders(Exception):
    """Nobody subscribes to the request subject (NATS status 503)."""


class RequestTimeout(Exception):
    """No reply arrived within the timeout."""


class NodeDown(Exception):
    """The node that held the request (the one it was addressed to, or the one whose
    notice said it took it) went down before it answered."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} went down ({reason})")
        self.node, self.reason = node, reason


ReplyCallback = Callable[[Msg | Exception], None]

TAKEN = "Mw-Taken"
"""Header of a notice to a reply subject, with no body: ``<node>.<incarnation>`` took the
request and is working on it; the reply follows. Sent only to callers that name
themselves with :data:`CALLER`, and only for a request not answered at once."""
CALLER = "Mw-Caller"
"""Header of a request from a node: ``<node>.<incarnation>``, so the node serving it may
send :data:`TAKEN` notices and give up the work when that node goes down."""

PROBE_AFTER = 0.5
"""Seconds a request to a queue group must have been on its way, untaken, before a probe
may count it lost: a node that took it but was not heard yet (it just started) has been
heard by then."""
PROBE_TIMEOUT = 5.0
"""Seconds a probe waits for each live node's answer."""


class Liveness(Protocol):
    """What :class:`Requests` asks of the node's liveness (a :class:`~broker.Membership`)."""

    def expect(self, node: str, incarnation: str) -> None: ...

    def incarnation_of(self, node: str) -> str | None: ...

    def live(self) -> list[str]: ...


class Requests:
    """Request/reply over one wildcard inbox subscription for the whole node.

    Timeouts share one timer armed for the earliest deadline, over a heap of
    ``(deadline, token)``: a loop timer per request cost more than the rest of the
    request's bookkeeping together. Answered requests leave their heap entry behind; the
    heap is rebuilt from what is still pending once stale entries outnumber live ones.

    A request held by a known node fails with :class:`NodeDown` when that node goes
    down (:meth:`node_down`): one addressed to a node (``node=``), or one to a queue
    group that a node took with a :data:`TAKEN` notice. One to a queue group that no
    notice claimed is failed by a probe after a node-down, when every live node has
    answered a later request (:meth:`node_down`, ``probe``) and it is still unclaimed.
    """

    def __init__(self, nats: Client, outbox: Outbox) -> None:
        self._nats = nats
        self._outbox = outbox
        self._prefix = nats.new_inbox()
        self._tokens = itertools.count(1)
        self._pending: dict[str, tuple[ReplyCallback, float, float]] = {}
        """Token -> (callback, deadline, sent): ``sent`` is the loop time a request to a
        queue group left, -1 for others."""
        self._deadlines: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._subscription: Subscription | None = None
        self._held: dict[str, tuple[str, str, bool]] = {}
        """Token -> (node, incarnation or "" for any, taken by notice) of requests a known node holds."""
        self._by_node: dict[str, set[str]] = {}
        self._probes: set[asyncio.TimerHandle] = set()
        self.liveness: Liveness | None = None
        """Set once the node's membership exists: notices make it watch the node named."""
        self.on_abandon: Callable[[str, str], None] | None = None
        """``on_abandon(node, reply subject)``: a request that ``node`` took (a notice) was
        given up (abandoned, or timed out) before its reply: tell that node."""
        self.probe: Callable[[str], str] | None = None
        """The subject of a request every node answers (``node`` -> subject) after what
        it read before it: the barrier of the probe for lost requests; None: no probes."""
        self.headers: Headers = MSGPACK_HEADERS
        """The headers of this node's msgpack requests: with :data:`CALLER` once
        :meth:`identify` has named the node."""

    def identify(self, node: str, incarnation: str) -> None:
        """Name this node in its requests (:data:`CALLER`), so the nodes serving them send
        notices and give the work up if this node goes down."""
        self.headers = Headers({CONTENT_TYPE: MSGPACK, CALLER: f"{node}.{incarnation}", REPLIES_HEADER: "batch"})

    async def start(self) -> None:
        self._subscription = await self._nats.subscribe_direct(f"{self._prefix}.*", self._on_reply)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        for timer in self._probes:
            timer.cancel()
        self._probes.clear()
        for token in list(self._pending):
            self._settle(token, asyncio.CancelledError())

    def request_nowait(self, subject: str, body: bytes, *, timeout: float, callback: ReplyCallback,
                       headers: dict[str, str] | None = None, after: str = "", node: str | None = None
                       ) -> Callable[[], None]:
        """Send a request; ``callback`` gets the reply ``Msg``, or :class:`NoResponders`,
        :class:`RequestTimeout`, :class:`NodeDown`, or ``CancelledError`` when the node
        stops. Exactly once. ``after``: see :meth:`Outbox.publish_nowait`. ``node``: the
        node the subject is addressed to, whose node-down fails the request; None for a
        queue group (a notice may name the node that took it).

        Returns a function that abandons the request (the callback is then never called).
        """
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        pending = self._pending
        pending[token] = (callback, deadline, now if node is None else -1.0)
        if len(self._deadlines) > 2 * len(pending) + 64:
            self._deadlines = [(d, t) for t, (_, d, _) in pending.items()]
            heapq.heapify(self._deadlines)
        else:
            heapq.heappush(self._deadlines, (deadline, token))
        if self._timer is None or deadline < self._timer.when():
            self._arm(loop, deadline)
        if node is not None:
            incarnation = self.liveness.incarnation_of(node) if self.liveness is not None else None
            self._hold(token, node, incarnation or "", False)
        self._outbox.publish_nowait(subject, body, reply=f"{self._prefix}.{token}", headers=headers, after=after)
        return functools.partial(self._abandon, token)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Time out every request past its deadline; re-arm for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines:
            deadline, token = deadlines[0]
            if token not in self._pending:
                heapq.heappop(deadlines)  # answered or abandoned
            elif deadline <= now:
                heapq.heappop(deadlines)
                self._settle(token, RequestTimeout())
            else:
                self._arm(loop, deadline)
                return

    def _settle(self, token: str, result: Msg | Exception) -> None:
        pending = self._pending.pop(token, None)
        if pending is None:
            return  # answered already, timed out, or abandoned
        if self._held:
            self._release(token, gave_up=isinstance(result, RequestTimeout))
        pending[0](result)

    def _abandon(self, token: str) -> None:
        if self._pending.pop(token, None) is not None and self._held:
            self._release(token, gave_up=True)

    def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        headers = msg.headers
        if headers and token == "0" and BATCH_HEADER in headers:
            self._on_replies(msg)
            return
        self._on_one(token, msg)

    def _on_replies(self, msg: Msg) -> None:
        """A batch of replies (``Outbox.reply_nowait``): each settles its request."""
        try:
            items = reply_items(msg.data)
        except ValueError as err:
            log.warning("a batch of replies on %s is malformed (its requests will time out): %s", msg.subject, err)
            return
        nats, prefix = self._nats, self._prefix
        for token, body in items:
            self._on_one(token, Msg(nats, subject=f"{prefix}.{token}", data=body, headers={CONTENT_TYPE: MSGPACK}))

    def _on_one(self, token: str, msg: Msg) -> None:
        headers = msg.headers
        if headers:
            if headers.get("Status") == NO_RESPONDERS and not msg.data:
                self._settle(token, NoResponders())
                return
            taken = headers.get(TAKEN)
            if taken is not None:
                self._taken(token, taken)
                return
        self._settle(token, msg)

    # ------------------------------------------------------------ who holds a request

    def _hold(self, token: str, node: str, incarnation: str, taken: bool) -> None:
        self._held[token] = (node, incarnation, taken)
        self._by_node.setdefault(node, set()).add(token)

    def _release(self, token: str, gave_up: bool) -> None:
        held = self._held.pop(token, None)
        if held is None:
            return
        node, _, taken = held
        tokens = self._by_node.get(node)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._by_node[node]
        if gave_up and taken and self.on_abandon is not None:
            try:
                self.on_abandon(node, f"{self._prefix}.{token}")
            except Exception:  # noqa: BLE001 - a courtesy to the other node; never the caller's problem
                log.exception("telling node %s of an abandoned request failed", node)

    def _taken(self, token: str, who: str) -> None:
        """A notice: node ``who`` (``<node>.<incarnation>``) took request ``token``."""
        node, _, incarnation = who.partition(".")
        if token not in self._pending or not node or token in self._held:
            return  # answered or given up meanwhile; or a repeated notice
        self._hold(token, node, incarnation, True)
        log.debug("request %s taken by %s", token, who)
        if self.liveness is not None:
            self.liveness.expect(node, incarnation)  # a node never heard must still be judged

    def node_down(self, node: str, incarnation: str, reason: str) -> None:
        """``node`` (that incarnation) is down: every request it held fails with
        :class:`NodeDown`; then, if any request to a queue group is unclaimed, probe."""
        for token in list(self._by_node.get(node, ())):
            held = self._held.get(token)
            if held is not None and held[1] in ("", incarnation):
                self._settle(token, NodeDown(node, reason))
        if self.probe is None or self.liveness is None:
            return
        suspects = [token for token, (_, _, sent) in self._pending.items() if sent >= 0 and token not in self._held]
        if suspects:
            # Probed once the youngest is PROBE_AFTER old: by then a node that took one of
            # them has been heard, or has said so.
            youngest = max(self._pending[token][2] for token in suspects)

            def probe() -> None:
                self._probes.discard(timer)
                self._probe(suspects, node, reason)

            timer = asyncio.get_running_loop().call_at(youngest + PROBE_AFTER, probe)
            self._probes.add(timer)

    def _probe(self, suspects: list[str], node: str, reason: str) -> None:
        """Ask every live node for a reply that it sends only after handling what it read
        before (a barrier). Once all have answered, the ``suspects`` (requests to a queue
        group, pending when ``node`` went down) still unclaimed went to a node that is
        gone: they fail with :class:`NodeDown` naming ``node``. A live node that does not
        answer (a timeout; an error reply is an answer) leaves everything as it was."""
        assert self.probe is not None and self.liveness is not None
        suspects = [token for token in suspects if token in self._pending and token not in self._held]
        if not suspects:
            return
        peers = [peer for peer in self.liveness.live() if peer != node]
        unanswered = len(peers)
        vouched = True

        def conclude() -> None:
            lost = [token for token in suspects if token in self._pending and token not in self._held]
            if lost:
                log.warning("%d request(s) to a queue group lost with node %s: no live node took them",
                            len(lost), node)
            for token in lost:
                self._settle(token, NodeDown(node, reason))

        def answered(result: Msg | Exception) -> None:
            nonlocal unanswered, vouched
            unanswered -= 1
            vouched = vouched and isinstance(result, Msg)
            if unanswered == 0 and vouched:
                conclude()

        if not peers:
            conclude()  # no other node is alive: none can hold them
        for peer in peers:
            self.request_nowait(self.probe(peer), b"", timeout=PROBE_TIMEOUT, callback=answered, node=peer)
