"""Publishing without awaiting, and request/reply without a task per request.

:class:`Outbox` lets code that must not wait (the scheduler's step) publish: messages
go into a FIFO drained by one long-lived task, so order per node is kept.
:class:`Requests` multiplexes replies over one wildcard inbox subscription: a reply is
matched to its request by token and handed to a callback, so a waiting Lua thread is
woken straight from the subscription, with no Task, future or ``wait_for`` per request.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._client import Client
from ._envelope import BATCH_BYTES, Envelope, batch
from ._streams import Streams

log = logging.getLogger("moonwire.broker")

NO_RESPONDERS = "503"


class Outbox:
    """A FIFO of messages to publish, drained by :meth:`run` (owned by the node).

    Process messages (:meth:`send_nowait`) that stand in a row for the same inbox
    subject leave as one batch (``_envelope.py``); everything keeps its order.
    Other messages go on the connection's write buffer at once when nothing is queued
    before them and the client can (:meth:`broker.Client.try_publish`), with no hop
    through the task.
    """

    def __init__(self, nats: Client, streams: Streams[Any] | None = None) -> None:
        self._nats = nats
        self._try_publish = nats.try_publish
        self._streams = streams
        self._queue: deque[tuple[str, bytes, str, dict[str, str] | None, Envelope | None, str]] = deque()
        self._ready = asyncio.Event()

    def publish_nowait(self, subject: str, body: bytes, *, reply: str = "",
                       headers: dict[str, str] | None = None, stream: str = "", after: str = "") -> None:
        """Publish in order with everything else queued here. ``stream``: the node whose
        inbox ``subject`` is, for traffic that must arrive exactly once and in order with
        this node's process messages to it; ``after``: a node whose receipt of this
        node's stream so far this (control) message must not overtake (``_streams.py``)."""
        order = stream or (after and "@" + after)  # one field for the queue: "node", "@node" or ""
        if not self._queue:
            if order:
                headers = self._stamped(subject, body, headers, order)
            if self._try_publish(subject, body, reply, headers):
                return
            order = ""  # stamped already
        self._queue.append((subject, body, reply, headers, None, order))
        self._ready.set()

    def _stamped(self, subject: str, body: bytes, headers: dict[str, str] | None,
                 order: str) -> dict[str, str] | None:
        """``headers`` for a message in the stream to node ``order``, or (``@node``)
        ordered after that stream; unchanged without streams."""
        if self._streams is None:
            return headers
        if order[0] == "@":
            return self._streams.after(order[1:], headers)
        return self._streams.stamp(order, subject, body, headers or {})

    def send_nowait(self, subject: str, envelope: Envelope, stream: str = "") -> None:
        """Queue a process message for an inbox subject (of node ``stream``)."""
        self._queue.append((subject, b"", "", None, envelope, stream))
        self._ready.set()

    async def run(self) -> None:
        """Publish queued messages until cancelled; cancelling flushes what is queued first."""
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                await self._drain()
        except asyncio.CancelledError:
            await asyncio.shield(self._drain())
            raise

    async def _drain(self) -> None:
        publish = self._nats.publish
        queue = self._queue
        while queue:
            subject, body, reply, headers, envelope, stream = queue.popleft()
            if envelope is not None:
                body, headers = self._coalesce(subject, envelope, stream)
            if stream:
                headers = self._stamped(subject, body, headers, stream)
            try:
                await publish(subject, body, reply=reply, headers=headers)
            except Exception as err:  # noqa: BLE001 - a closed connection must not kill the outbox
                log.warning("could not publish to %s: %s", subject, err)

    def _coalesce(self, subject: str, first: Envelope, stream: str) -> tuple[bytes, dict[str, str]]:
        """``first`` alone, or in a batch with the process messages queued right behind
        it for the same subject (up to BATCH_BYTES and the server's max payload)."""
        queue = self._queue
        if not queue or queue[0][4] is None or queue[0][0] != subject:
            return first.alone()
        limit = min(BATCH_BYTES, self._nats.max_payload or BATCH_BYTES)
        run, size = [first], first.size()
        while queue:
            subject_, _, _, _, envelope, stream_ = queue[0]
            if envelope is None or subject_ != subject or stream_ != stream or size + envelope.size() > limit:
                break
            queue.popleft()
            run.append(envelope)
            size += envelope.size()
        return batch(run) if len(run) > 1 else first.alone()


class NoResponders(Exception):
    """Nobody subscribes to the request subject (NATS status 503)."""


class RequestTimeout(Exception):
    """No reply arrived within the timeout."""


ReplyCallback = Callable[[Msg | Exception], None]


class Requests:
    """Request/reply over one wildcard inbox subscription for the whole node.

    Timeouts share one timer armed for the earliest deadline, over a heap of
    ``(deadline, token)``: a loop timer per request cost more than the rest of the
    request's bookkeeping together. Answered requests leave their heap entry behind; the
    heap is rebuilt from what is still pending once stale entries outnumber live ones.
    """

    def __init__(self, nats: Client, outbox: Outbox) -> None:
        self._nats = nats
        self._outbox = outbox
        self._prefix = nats.new_inbox()
        self._tokens = itertools.count(1)
        self._pending: dict[str, tuple[ReplyCallback, float]] = {}
        """Token -> (callback, deadline)."""
        self._deadlines: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._subscription: Subscription | None = None

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
        for token in list(self._pending):
            self._settle(token, asyncio.CancelledError())

    def request_nowait(self, subject: str, body: bytes, *, timeout: float, callback: ReplyCallback,
                       headers: dict[str, str] | None = None, after: str = "") -> Callable[[], None]:
        """Send a request; ``callback`` gets the reply ``Msg``, or :class:`NoResponders`,
        :class:`RequestTimeout`, or ``CancelledError`` when the node stops. Exactly once.
        ``after``: see :meth:`Outbox.publish_nowait`.

        Returns a function that abandons the request (the callback is then never called).
        """
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = self._pending
        pending[token] = (callback, deadline)
        if len(self._deadlines) > 2 * len(pending) + 64:
            self._deadlines = [(d, t) for t, (_, d) in pending.items()]
            heapq.heapify(self._deadlines)
        else:
            heapq.heappush(self._deadlines, (deadline, token))
        if self._timer is None or deadline < self._timer.when():
            self._arm(loop, deadline)
        self._outbox.publish_nowait(subject, body, reply=f"{self._prefix}.{token}", headers=headers, after=after)
        return functools.partial(pending.pop, token, None)

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
        if pending is not None:  # else answered already, timed out, or abandoned
            pending[0](result)

    def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS and not msg.data:
            self._settle(token, NoResponders())
        else:
            self._settle(token, msg)
