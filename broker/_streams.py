"""Exactly once and in order between two nodes, over at-most-once NATS.

Core NATS delivers at most once: when a NATS server dies, what it held for routing, and
what a client had written to its socket, is gone, and the client reconnects to another
server within milliseconds, so no node-down explains the loss (the chaos run found such
holes at every few server kills). Process traffic between nodes (messages and the
EXIT/LINK_DOWN events that must follow them) therefore travels in *streams*, one per
pair (sending node, receiving node), the way TCP runs over IP:

- The sender numbers each NATS message of a stream (``Mw-Seq: <node>.<incarnation>.<seq>.<floor>``,
  where ``floor`` is the oldest message it still holds unacknowledged) and keeps it
  until the receiver acknowledges it.
- The receiver delivers a stream's messages in sequence: a message it already has is
  dropped (a resend), one that comes early is held (bounded) until the gap before it
  is filled, and a gap makes it ask for a resend at once (a *nack*).
- Every ``ACK_EVERY`` the receiver acknowledges what it has delivered (cumulatively,
  on ``<prefix>.ack.<sender>``). A sender that hears no progress for ``RESEND_AFTER``
  sends again everything unacknowledged: that covers a lost tail, which no later
  message would reveal as a gap. Only once the receiver has acknowledged anything: an
  inbox subject may have a plain subscriber behind it rather than a node, and it would
  see duplicates; what is lost before a stream's first acknowledgement stays lost.
- A receiver that knows nothing of a stream (it, or the sender, is a new incarnation)
  starts at ``floor``: everything older was acknowledged by someone before.

A sender forgets a stream when its receiver is declared down (its monitors saw the
node-down then, which explains those messages), and holds at most ``MAX_UNACKED``
messages per stream: past it the oldest is dropped, counted and logged, since a
receiver that far behind is as good as down. Messages from outside (no ``Mw-Seq``)
are not part of any stream.

This module is pure bookkeeping: publishing and the clock are the caller's.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._client import Headers

log = logging.getLogger("moonwire.streams")

SEQ_HEADER = "Mw-Seq"
AFTER_HEADER = "Mw-After"
ACK_EVERY = 0.05
"""Seconds between acknowledgements of a stream that made progress."""
RESEND_AFTER = 0.5
"""Seconds without acknowledged progress after which a sender sends again what is unacknowledged."""
NACK_EVERY = 0.1
"""Seconds between two resend requests for the same gap."""
MAX_UNACKED = 100_000
"""Messages a sender holds for one stream; past it the oldest are dropped."""
UNESTABLISHED_MAX = 1024
"""Messages kept for a stream nothing has acknowledged yet. Such a stream is never sent
again on a timer: its subject may be a plain NATS subscriber's (a test, a tap), not a
node's, and a resend would duplicate what it saw."""
MAX_HELD = 10_000
"""Early messages a receiver holds for one stream; past it they are dropped (the
sender still has them, and sends them again)."""
GIVE_UP = 10.0
"""Seconds a gap may stay open before what was held behind it is handled anyway."""
WAIT_AFTER = 5.0
"""Seconds a control request waits for the stream messages sent before it."""
MAX_STREAMS = 4096
"""Receiving streams remembered; past it the least recently used is forgotten."""

Item = TypeVar("Item")


@dataclass(slots=True)
class _Sent:
    seq: int
    subject: str
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class _Outgoing:
    next_seq: int = 1
    unacked: deque[_Sent] = field(default_factory=deque)
    progress_at: float = 0.0  # last ack that advanced, or last resend
    established: bool = False  # the receiver has acknowledged something: it is a node


@dataclass(slots=True)
class _Incoming(Generic[Item]):
    expected: int
    held: dict[int, Item] = field(default_factory=dict)
    progress_at: float = 0.0  # when it last delivered (or began)
    acked: int = 0  # the last cumulative ack sent (expected - 1 when caught up)
    nacked_at: float = -1e9
    waiting: list[tuple[int, float, Callable[[], None]]] = field(default_factory=list)
    """(seq, deadline, run): what runs once the stream has delivered through seq."""


@dataclass(frozen=True, slots=True)
class StreamStatistics:
    sent: int
    resent: int
    unacked: int
    dropped_unacked: int
    delivered: int
    duplicates: int
    held: int
    dropped_early: int


Publish = Callable[[str, bytes, dict[str, str]], None]
"""``publish(subject, body, headers)``: put a message on the wire, without waiting."""


class Streams(Generic[Item]):
    """The streams of one node, sending and receiving.

    ``publish`` puts stream messages (resends) and acknowledgements on the wire;
    ``ack_subject(node)`` is where ``node`` hears acknowledgements.
    """

    def __init__(self, node: str, incarnation: str, publish: Publish, ack_subject: Callable[[str], str],
                 *, clock: Callable[[], float] = time.monotonic, max_unacked: int = MAX_UNACKED,
                 max_held: int = MAX_HELD) -> None:
        self.node = node
        self.incarnation = incarnation
        self.publish = publish
        self.ack_subject = ack_subject
        self.clock = clock
        self.max_unacked = max_unacked
        self.max_held = max_held
        self._out: dict[str, _Outgoing] = {}
        self._in: dict[tuple[str, str], _Incoming[Item]] = {}
        self._held = 0  # early messages held, all streams together
        self.sent = self.resent = self.dropped_unacked = 0
        self.delivered = self.duplicates = self.dropped_early = 0

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(self.sent, self.resent, sum(len(o.unacked) for o in self._out.values()),
                                self.dropped_unacked, self.delivered, self.duplicates,
                                sum(len(i.held) for i in self._in.values()), self.dropped_early)

    # ------------------------------------------------------------ sending

    def stamp(self, node: str, subject: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        """Number a message about to be published to ``node`` and keep it until acknowledged;
        returns the headers to publish it with (``headers`` plus ``Mw-Seq``)."""
        out = self._out.get(node)
        if out is None:
            out = self._out[node] = _Outgoing(progress_at=self.clock())
        seq = out.next_seq
        out.next_seq = seq + 1
        if not out.unacked:
            out.progress_at = self.clock()  # the resend timer runs from the oldest unacked message
        elif not out.established and len(out.unacked) >= UNESTABLISHED_MAX:
            out.unacked.popleft()  # nothing acknowledges: maybe no node at all (a plain subscriber)
        elif len(out.unacked) >= self.max_unacked:
            out.unacked.popleft()
            self.dropped_unacked += 1
            if self.dropped_unacked == 1 or self.dropped_unacked % 10_000 == 0:
                log.error("node %s acknowledges nothing: dropped %d unacknowledged messages so far",
                          node, self.dropped_unacked)
        out.unacked.append(_Sent(seq, subject, body, headers))
        self.sent += 1
        return self._headers(out, seq, headers)

    def _headers(self, out: _Outgoing, seq: int, headers: dict[str, str]) -> dict[str, str]:
        return _with(headers, SEQ_HEADER,
                     f"{self.node}.{self.incarnation}.{seq}.{out.unacked[0].seq if out.unacked else seq}")

    def after(self, node: str, headers: dict[str, str] | None) -> dict[str, str]:
        """``headers`` plus ``Mw-After``: the last message of the stream to ``node`` so far,
        which a control request must not overtake at the receiver (it travels on another
        connection than the stream, see :meth:`when_delivered`)."""
        out = self._out.get(node)
        return _with(headers or {}, AFTER_HEADER, f"{self.node}.{self.incarnation}.{out.next_seq - 1 if out else 0}")

    def acknowledged(self, is_node: Callable[[str], bool] = lambda node: False) -> bool:
        """True when everything sent has been acknowledged, on every stream whose receiver
        has acknowledged something or ``is_node`` says is a node (a stream's first
        messages may be all it ever gets, the EXITs of a stopping node say)."""
        return all(not out.unacked for node, out in self._out.items() if out.established or is_node(node))

    def forget(self, node: str) -> None:
        """``node`` was declared down: what it has not acknowledged is accounted for by the
        node-down its watchers saw; later messages start from a new floor."""
        out = self._out.get(node)
        if out is not None:
            out.unacked.clear()

    def on_ack(self, body: bytes) -> None:
        """An acknowledgement (or a resend request) from a receiver.

        Raises:
            ValueError: a malformed body.
        """
        if len(body) > 1024:
            raise ValueError(f"an ack is a small JSON object, not {len(body)} bytes")
        try:
            data = json.loads(body)
        except RecursionError:
            raise ValueError("an ack nested too deep") from None
        if not isinstance(data, dict):
            raise ValueError("an ack must be a JSON object")
        node, incarnation, seq = data.get("from"), data.get("to"), data.get("seq")
        if not (isinstance(node, str) and isinstance(incarnation, str) and isinstance(seq, int)):
            raise ValueError("an ack needs from (str), to (str) and seq (int)")
        if incarnation != self.incarnation:
            return  # for an earlier incarnation of this node
        out = self._out.get(node)
        if out is None:
            return
        out.established = True
        advanced = False
        while out.unacked and out.unacked[0].seq <= seq:
            out.unacked.popleft()
            advanced = True
        if advanced:
            out.progress_at = self.clock()
        if data.get("nack"):
            self._resend(out)

    def _resend(self, out: _Outgoing) -> None:
        out.progress_at = self.clock()
        for sent in list(out.unacked):
            self.resent += 1
            self.publish(sent.subject, sent.body, self._headers(out, sent.seq, sent.headers))

    # ------------------------------------------------------------ receiving

    def receive(self, headers: dict[str, str] | None, item: Item, handle: Callable[[Item], None]) -> None:
        """``item`` arrived with ``headers``: ``handle`` it now if it is outside any stream
        or next in its stream (then the held ones it releases, in order), or not at all
        (a duplicate, or early). Control requests that waited for what was handled run
        after it. ``handle`` must not raise.

        Raises:
            ValueError: a malformed ``Mw-Seq`` (nothing was handled).
        """
        stamp = headers.get(SEQ_HEADER) if headers else None
        if stamp is None:
            handle(item)
            return
        stream, ready = self._accept(stamp, item)
        for one in ready:
            handle(one)
        if ready and stream.waiting:
            self._release(stream)

    def _accept(self, stamp: str, item: Item) -> tuple[_Incoming[Item], list[Item]]:
        key, seq, floor = _parse(stamp)
        stream = self._in.get(key)
        if stream is None:
            if len(self._in) >= MAX_STREAMS:
                self._held -= len(self._in.pop(next(iter(self._in))).held)
            stream = self._in[key] = _Incoming(expected=floor, acked=floor - 1, progress_at=self.clock())
        else:
            self._in[key] = self._in.pop(key)  # most recently used last
            if floor > stream.expected:  # the sender no longer holds what we wait for
                stream.expected = floor
                for old in [s for s in stream.held if s < floor]:
                    del stream.held[old]
                    self._held -= 1
        if seq < stream.expected:
            self.duplicates += 1
            return stream, []
        if seq > stream.expected:
            if seq not in stream.held:
                if self._held >= self.max_held:  # across all streams: a stamp can be forged
                    self.dropped_early += 1
                else:
                    stream.held[seq] = item
                    self._held += 1
            self._nack(key, stream)
            return stream, []
        ready = [item]
        seq += 1
        while stream.held:
            held = stream.held.pop(seq, None)
            if held is None:
                break
            self._held -= 1
            ready.append(held)
            seq += 1
        stream.expected = seq
        stream.progress_at = self.clock()
        self.delivered += len(ready)
        return stream, ready

    def when_delivered(self, headers: dict[str, str] | None, run: Callable[[], None],
                       wait: float = WAIT_AFTER) -> None:
        """Call ``run`` now, or, for a request stamped ``Mw-After``, once the stream it
        names has delivered through that message (at the latest after ``wait`` seconds,
        so a request whose stream was lost for good still runs).

        Raises:
            ValueError: a malformed ``Mw-After``.
        """
        stamp = headers.get(AFTER_HEADER) if headers else None
        if stamp is None:
            run()
            return
        node, incarnation, seq = stamp.split(".")
        if not node or not incarnation:
            raise ValueError(f"malformed {AFTER_HEADER} {stamp!r}")
        through = int(seq)
        stream = self._in.get((node, incarnation))
        if through <= 0 or stream is not None and stream.expected > through:
            run()
            return
        if stream is None:
            if len(self._in) >= MAX_STREAMS:
                self._held -= len(self._in.pop(next(iter(self._in))).held)
            # Nothing of it has arrived yet: its messages (at least one) are on their way.
            stream = self._in[(node, incarnation)] = _Incoming(expected=1)
        stream.waiting.append((through, self.clock() + wait, run))

    def _release(self, stream: _Incoming[Item], *, overdue: bool = False) -> None:
        """Run what waited for messages the stream has now delivered (or waited too long)."""
        now = self.clock()
        ready = [w for w in stream.waiting if w[0] < stream.expected or overdue and w[1] <= now]
        if not ready:
            return
        stream.waiting = [w for w in stream.waiting if w not in ready]
        for through, _, run in ready:
            if through >= stream.expected:
                log.warning("a control request waited %.1fs for message %d of its sender's stream; running it now",
                            WAIT_AFTER, through)
            try:
                run()
            except Exception:  # noqa: BLE001 - one request's failure must not stop the stream
                log.exception("a control request that waited for its stream failed")

    def _nack(self, key: tuple[str, str], stream: _Incoming[Item]) -> None:
        now = self.clock()
        if now - stream.nacked_at < NACK_EVERY:
            return
        stream.nacked_at = now
        self._ack(key, stream, nack=True)

    def _ack(self, key: tuple[str, str], stream: _Incoming[Item], nack: bool = False) -> None:
        node, incarnation = key
        stream.acked = stream.expected - 1
        body: dict[str, Any] = {"from": self.node, "to": incarnation, "seq": stream.acked}
        if nack:
            body["nack"] = True
        self.publish(self.ack_subject(node), json.dumps(body).encode(), {})

    # ------------------------------------------------------------ timers

    def tick(self, handle: Callable[[Item], None] | None = None) -> None:
        """Run every ``ACK_EVERY`` or so: acknowledge progress, ask again for gaps that
        stay open, send again what stays unacknowledged. A gap open for ``GIVE_UP``
        seconds (its sender gone, or a stamp forged from outside) is skipped: what was
        held behind it is handed to ``handle``, so nothing waits for ever."""
        now = self.clock()
        for key, stream in list(self._in.items()):
            if stream.waiting:
                self._release(stream, overdue=True)
            if stream.held and handle is not None and now - stream.progress_at >= GIVE_UP:
                first = min(stream.held)
                log.warning("messages %d to %d from node %s (%s) never came; handling the %d after them",
                            stream.expected, first - 1, key[0], key[1], len(stream.held))
                stream.expected = first
                ready: list[Item] = []
                while (held := stream.held.pop(stream.expected, None)) is not None:
                    self._held -= 1
                    ready.append(held)
                    stream.expected += 1
                stream.progress_at = now
                self.delivered += len(ready)
                for one in ready:
                    handle(one)
                if stream.waiting:
                    self._release(stream)
            if stream.held:
                self._nack(key, stream)
            elif stream.acked != stream.expected - 1:
                self._ack(key, stream)
        for out in self._out.values():
            if out.established and out.unacked and now - out.progress_at >= RESEND_AFTER:
                self._resend(out)


def _with(headers: dict[str, str], name: str, value: str) -> dict[str, str]:
    """A copy of ``headers`` plus ``name: value``; still encoded ahead (the fast publish
    path) when ``headers`` was (:class:`Headers`)."""
    if type(headers) is Headers:
        try:
            return headers.with_header(name, value)
        except ValueError:
            pass  # a value nats-py's publish cleans up
    stamped = dict(headers)
    stamped[name] = value
    return stamped


def _parse(stamp: str) -> tuple[tuple[str, str], int, int]:
    """(sender node, its incarnation), seq and floor of a ``Mw-Seq`` stamp.

    Raises:
        ValueError: a malformed stamp.
    """
    node, incarnation, seq, floor = stamp.split(".")
    if not node or not incarnation or int(floor) > int(seq) or int(floor) < 1:
        raise ValueError(f"malformed {SEQ_HEADER} {stamp!r}")
    return (node, incarnation), int(seq), int(floor)
