"""Publishing without awaiting: :class:`Outbox` lets code that must not wait (the
scheduler's step) publish; messages go into a FIFO drained on the loop's next turn, or
by one long-lived task, so order per node is kept."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from ._client import Client
from ._envelope import BATCH_BYTES, MSGPACK_HEADERS, Envelope, batch, reply_batch
from ._streams import Streams
from ._tasks import drain_when_ready

log = logging.getLogger("moonwire.broker")

BATCH_ROOM = 1024
"""Bytes of a NATS message a batch leaves for its headers (a trace, a stream's sequence)
and its msgpack framing, which the sizes it counts leave out."""
_REPLY = object()
"""Marks a queued reply that may leave in a batch of replies (:meth:`Outbox.reply_nowait`)."""


class Outbox:
    """A FIFO of messages to publish, in order, without the publisher waiting.

    Process messages (:meth:`send_nowait`) that stand in a row for the same inbox
    subject leave as one batch (``_envelope.py``); everything keeps its order.
    Other messages go on the connection's write buffer at once when nothing is queued
    before them and the client can (:meth:`broker.Client.try_publish`), with no hop
    through the task.

    What is queued leaves on the event loop's next turn (:meth:`_flush`, one callback
    for everything queued in the same turn): a batch holds what one turn queued, and
    nothing waits for more. The flush puts it on the connection's write buffer and
    writes that to the socket (:meth:`broker.Client.flush_now`) when the client can;
    what it cannot take (the fast paths off, the buffer full, not connected) waits
    here for :meth:`run` (a task owned by the node), which awaits ``publish``.
    """

    def __init__(self, nats: Client, streams: Streams[Any] | None = None) -> None:
        self._nats = nats
        self._try_publish = nats.try_publish
        self._streams = streams
        self._queue: deque[tuple[str, bytes, str, dict[str, str] | None, Envelope | None, str]] = deque()
        self._ready = asyncio.Event()
        self._flush_soon = False  # a _flush is scheduled
        self._draining = False  # run() is publishing from the queue

    def publish_nowait(self, subject: str, body: bytes, *, reply: str = "",
                       headers: dict[str, str] | None = None, stream: str = "", after: str = "") -> None:
        """Publish in order with everything else queued here. ``stream``: the node whose
        inbox ``subject`` is, for traffic that must arrive exactly once and in order with
        this node's process messages to it; ``after``: a node whose receipt of this
        node's stream so far this (control) message must not overtake (``_streams.py``)."""
        if stream and self._too_large(len(body), subject):
            return
        order = stream or (after and "@" + after)  # one field for the queue: "node", "@node" or ""
        if not self._queue:
            if order:
                headers = self._stamped(subject, body, headers, order)
            if self._try_publish(subject, body, reply, headers):
                return
            order = ""  # stamped already
        self._queue.append((subject, body, reply, headers, None, order))
        self._schedule()

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
        """Queue a process message for an inbox subject (of node ``stream``); it leaves
        on the loop's next turn, in a batch with those queued behind it meanwhile."""
        if stream and self._too_large(envelope.size(), subject):
            return
        self._queue.append((subject, b"", "", None, envelope, stream))
        self._schedule()

    def stream_limit(self) -> int:
        """The largest process message (its envelope's size) that can be published: the
        server's max_payload less BATCH_ROOM for headers (0: not connected yet, no limit)."""
        max_payload = self._nats.max_payload
        return max_payload - BATCH_ROOM if max_payload else 0

    def _too_large(self, size: int, subject: str) -> bool:
        """Whether a message of a stream, ``size`` bytes, can never be published (over the
        server's max_payload, BATCH_ROOM of it left for headers): logged, it is dropped
        before it takes a number, or the receiver would wait on the gap (``_streams.py``)."""
        limit = (self._nats.max_payload or size + BATCH_ROOM) - BATCH_ROOM
        if size <= limit:
            return False
        log.warning("dropped a message of %d bytes to %s: more than the NATS server takes in one (%d)",
                    size, subject, limit)
        return True

    def reply_nowait(self, subject: str, body: bytes) -> None:
        """Queue a msgpack reply to a request whose caller reads batched replies
        (:data:`~broker._envelope.REPLIES_HEADER`); it leaves on the loop's next turn,
        in one batch with the replies queued behind it meanwhile for the same caller."""
        self._queue.append((subject, body, "", MSGPACK_HEADERS, _REPLY, ""))  # type: ignore[arg-type]
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Publish what is queued without awaiting, up to the first message the client
        cannot take that way: that one and the rest wait for :meth:`run`."""
        self._flush_soon = False
        if self._draining:
            return  # run() is at it and takes what was queued since, in order
        queue, try_publish = self._queue, self._try_publish
        while queue:
            subject, body, reply, headers = self._next()
            if not try_publish(subject, body, reply, headers, flush=False):
                queue.appendleft((subject, body, reply, headers, None, ""))  # stamped already
                self._ready.set()
                break
        self._nats.flush_now()

    async def run(self) -> None:
        """Publish queued messages until cancelled; cancelling flushes what is queued first."""
        await drain_when_ready(self._ready, self._drain)

    async def _drain(self) -> None:
        publish = self._nats.publish
        queue = self._queue
        self._draining = True
        try:
            while queue:
                subject, body, reply, headers = self._next()
                try:
                    await publish(subject, body, reply=reply, headers=headers)
                except Exception as err:  # noqa: BLE001 - a closed connection must not kill the outbox
                    log.warning("could not publish to %s: %s", subject, err)
        finally:
            self._draining = False

    def _next(self) -> tuple[str, bytes, str, dict[str, str] | None]:
        """The next NATS message from the front of the queue: (subject, body, reply,
        headers), a batch of what stands in a row when it can be, stamped when in a stream."""
        subject, body, reply, headers, envelope, stream = self._queue.popleft()
        if envelope is _REPLY:
            subject, body, headers = self._coalesce_replies(subject, body, headers)
        elif envelope is not None:
            body, headers = self._coalesce(subject, envelope, stream)
        if stream:
            headers = self._stamped(subject, body, headers, stream)
        return subject, body, reply, headers

    def _batch_limit(self) -> int:
        """Body bytes a batch stops short of: BATCH_BYTES, or the server's max_payload less
        room for the headers and framing it counts too (over it, the batch is refused)."""
        return min(BATCH_BYTES, (self._nats.max_payload or BATCH_BYTES + BATCH_ROOM) - BATCH_ROOM)

    def _coalesce_replies(self, subject: str, body: bytes,
                          headers: dict[str, str] | None) -> tuple[str, bytes, dict[str, str] | None]:
        """A reply alone, or in a batch with the replies queued right behind it for the
        same caller (the same reply prefix), to ``<prefix>.0``."""
        queue = self._queue
        if not queue or queue[0][4] is not _REPLY:
            return subject, body, headers
        prefix, _, token = subject.rpartition(".")
        limit = self._batch_limit()
        run, size = [(token, body)], len(body) + len(token) + 8
        while queue and queue[0][4] is _REPLY:
            next_prefix, _, next_token = queue[0][0].rpartition(".")
            next_size = len(queue[0][1]) + len(next_token) + 8
            if next_prefix != prefix or size + next_size > limit:
                break
            run.append((next_token, queue.popleft()[1]))
            size += next_size
        if len(run) == 1:
            return subject, body, headers
        body, headers = reply_batch(run)
        return f"{prefix}.0", body, headers

    def _coalesce(self, subject: str, first: Envelope, stream: str) -> tuple[bytes, dict[str, str]]:
        """``first`` alone, or in a batch with the process messages queued right behind
        it for the same subject (up to BATCH_BYTES and the server's max payload)."""
        queue = self._queue
        if not queue or type(queue[0][4]) is not Envelope or queue[0][0] != subject:
            return first.alone()
        limit = self._batch_limit()
        run, size = [first], first.size()
        while queue:
            subject_, _, _, _, envelope, stream_ = queue[0]
            if (type(envelope) is not Envelope or subject_ != subject or stream_ != stream
                    or size + envelope.size() > limit):
                break
            queue.popleft()
            run.append(envelope)
            size += envelope.size()
        return batch(run) if len(run) > 1 else first.alone()
