"""Process messages on the wire (DESIGN §2-§3): this node's one inbox subscription,
decoding what arrives, and the dead-letter queue.

A process's inbox is ``<prefix>.p.<node>.<uid>``; the node holds one wildcard
subscription, ``<prefix>.p.<node>.>``, and dispatches by uid. Inside the cluster a
message travels in the envelope of ``broker/_envelope.py``: alone (msgpack payloads,
topic and sender in the ``Mw-Topic`` and ``Mw-From`` headers) or in a batch with the
messages queued behind it for the same inbox.

From outside (the NATS CLI, any client) the topic may instead follow the uid in the
subject (``mw.p.n1.<uid>.orders.new`` is topic ``orders.new``); a body without a content
type is one payload: JSON when it parses, else the text itself; ``msg:from()`` is "".

A message that cannot be delivered whole (malformed msgpack, an unsupported content
type, a bad ``Mw-From``, no topic or a reserved one, an oversize body, a value Lua
cannot hold, an unknown process, a full mailbox) is never half-delivered: it is
republished, body and headers unchanged plus ``Mw-Dlq-Reason`` and ``Mw-Dlq-Subject``,
to ``<prefix>.dlq.<node>`` by :class:`DeadLetters`, the node's one dead-letter path
(the workflow gateway uses it too), which logs the first of each reason per interval
and counts the rest. A message of a batch that cannot be delivered is republished
alone; the others are delivered.

The inbox subscription is on the node's *data* connection, not the one that carries
heartbeats, control requests and function calls, and its handler runs straight from
that connection's read loop, which yields the event loop after each chunk it reads
and holds reading while dead letters wait to be written (:meth:`DeadLetters.make_room`):
a flood at an inbox waits in the kernel and the server, not in this process, and does
not delay the rest (``docs/architecture.md``, *Floods*).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from moonwire.broker import (BATCH_HEADER, CONTENT_TYPE, FROM_HEADER, MSGPACK, TOPIC_HEADER, Client, Envelope, Headers, Outbox, Pid, Streams, Subjects, Tally, batch_items, drain_when_ready, reason_key)
from moonwire.lua import Event, Message, MoonwireError, check_portable, loads_json, parse_traceparent

from ..cluster import MAX_NAME
from ..wire import DLQ_REASON, DLQ_SUBJECT, EVENT_HEADER, JSON, decode_event, pack, request_trace, unpack

log = logging.getLogger("moonwire.inboxes")

DEFAULT_MAX_BODY = 1024 * 1024
DEAD_LETTERS_WAITING = 4096
"""Dead letters that may wait for the data connection's write buffer; past it one is
dropped and counted. The inbox reader holds reading at half of it, so only dead letters
made outside it (failed workflow signals) can meet the limit."""
DEAD_LETTER_LOG_INTERVAL = 10.0
READ_TURN = 0.002
"""Seconds the data connection's reader handles frames before it yields the event loop
(``broker.Client.read_turn``): what a flood adds to each turn of everything else."""
_TEXT = "text/plain"
NAMED_QUEUE = "mw-names"
"""The queue group of every node for ``<prefix>.n.>``: one node takes each message."""


class Undeliverable(Exception):
    """Why a message from the wire cannot be delivered; it goes to the dead-letter queue."""


@dataclass
class InboxStatistics:
    delivered: int = 0
    dead_lettered: int = 0


def encode(message: Message) -> tuple[bytes, dict[str, str]]:
    """The body and headers of ``message`` published alone."""
    return envelope(message).alone()


def envelope(message: Message) -> Envelope:
    return Envelope(message.topic, message.sender, pack(message.payloads), message.trace or "")


def decode(topic_from_subject: str, headers: dict[str, str], body: bytes, max_body: int) -> Message:
    """The message a wire message (not a batch) carries.

    Raises:
        Undeliverable: naming what is wrong with it.
    """
    if len(body) > max_body:
        raise Undeliverable(f"body of {len(body)} bytes is over the limit of {max_body}")
    topic = topic_from_subject or headers.get(TOPIC_HEADER, "")
    sender = headers.get(FROM_HEADER, "")
    _check_address(topic, sender)  # before decoding a body that would be thrown away
    content_type = headers.get(CONTENT_TYPE)
    try:
        if content_type == MSGPACK:
            payloads = unpack(body, MSGPACK)
        elif content_type == JSON:
            try:
                payloads = [loads_json(body)] if body.strip() else []  # depth-limited before decoding
            except ValueError as err:
                raise Undeliverable(f"Content-Type is {JSON} but the body is not JSON: {err}") from None
        elif not content_type:
            value = unpack(body, None)  # JSON when it parses, else the text
            payloads = [] if value is None else [value]
        elif content_type.startswith(_TEXT):
            payloads = [body.decode("utf-8")]
        else:
            raise Undeliverable(f"unsupported Content-Type {content_type!r} "
                                f"(use {MSGPACK}, {JSON}, {_TEXT} or none)")
    except MoonwireError as err:
        raise Undeliverable(err.message) from None
    except UnicodeDecodeError:
        raise Undeliverable("a text body is not UTF-8") from None
    return _checked_payloads(topic, sender, payloads, request_trace(None, headers))


def decode_item(item: bytes, max_body: int, known_sender: str = "", batch_trace: str | None = None) -> Message:
    """The message an item of a batch carries (``known_sender``: one already checked;
    ``batch_trace``: the batch's, for an item without its own)

    Raises:
        Undeliverable: naming what is wrong with it.
    """
    if len(item) > max_body:
        raise Undeliverable(f"message of {len(item)} bytes is over the limit of {max_body}")
    try:
        fields = unpack(item, MSGPACK)
    except MoonwireError as err:
        raise Undeliverable(err.message) from None
    if not (isinstance(fields, list) and len(fields) in (3, 4) and isinstance(fields[0], str)
            and isinstance(fields[1], str)):
        raise Undeliverable("a batch item must be [topic, sender, payloads] or [topic, sender, payloads, trace]")
    topic, sender, payloads = fields[0], fields[1], fields[2]
    _check_address(topic, "" if sender == known_sender else sender)
    return _checked_payloads(topic, sender, payloads,
                             batch_trace if len(fields) == 3 else parse_traceparent(fields[3]))


def _check_address(topic: str, sender: str) -> None:
    if not topic:
        raise Undeliverable(f"no topic: put it after the uid in the subject or in the {TOPIC_HEADER} header")
    if topic.startswith("@"):
        raise Undeliverable(f"topic {topic!r} is reserved (topics starting with @ are system topics)")
    if sender and Pid.parse(sender) is None:
        raise Undeliverable(f"{FROM_HEADER} {sender!r} is not a PID")


def _checked_payloads(topic: str, sender: str, payloads: object, trace: str | None) -> Message:
    if not isinstance(payloads, list):
        raise Undeliverable(f"a msgpack body must be a list of payloads, got {type(payloads).__name__}")
    try:
        check_portable(payloads)
    except MoonwireError as err:
        raise Undeliverable(err.message) from None
    return Message(topic, payloads, sender, trace)


@dataclass(frozen=True, slots=True)
class ClusterDelivery:
    """How messages to cluster names and groups find their processes: ``holder_of(name)``
    (the names' replica), ``members_here(group)`` (this node's members, a PID once per
    join) and ``route(pid, message)`` (the process table's, which raises
    :class:`MoonwireError` when it cannot deliver)."""

    holder_of: Callable[[str], str | None]
    members_here: Callable[[str], list[str]]
    route: Callable[[str, Message], None]


class NodeInboxes:
    """The node's inbox subscription and its remote sends.

    ``nats`` is the node's data connection (the subscription); sends leave through
    ``outbox``, the control connection's, in order with this node's other messages.
    ``deliver(uid, message)`` is the process table's: it raises :class:`MoonwireError`
    when no process has that uid or its mailbox is full.
    """

    def __init__(self, nats: Client, outbox: Outbox, subjects: Subjects, node: str,
                 deliver: Callable[[str, Message], None], deliver_event: Callable[[str, Event], None],
                 dead_letters: DeadLetters, max_body: int = DEFAULT_MAX_BODY,
                 streams: Streams[Msg] | None = None, cluster: ClusterDelivery | None = None) -> None:
        self.nats = nats
        self.outbox = outbox
        self.subjects = subjects
        self.node = node
        self.deliver = deliver
        self.deliver_event = deliver_event
        self.dead_letters = dead_letters
        self.max_body = max_body
        self.streams = streams
        self.stats = InboxStatistics()
        self.cluster = cluster
        """Messages to cluster names from outside (``<prefix>.n.<name>.<topic>``) and to
        process groups (``<prefix>.g.<group>[.<topic>]``)."""
        self._prefix = subjects.inbox(node, "")  # "<prefix>.p.<node>."
        self._named_prefix = subjects.named("")  # "<prefix>.n."
        self._group_prefix = subjects.group("")  # "<prefix>.g."
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        # Direct: handled in the read loop, so nothing queues in this process in front of
        # the handler (nats-py's per-subscription queue would hold a flood in memory and
        # its task would run the whole backlog without yielding the event loop).
        subscribe = self.nats.subscribe_direct
        self._subscriptions.append(await subscribe(self.subjects.node_inboxes(self.node), self._on_message))
        if self.cluster is not None:
            # One node of the queue group takes each message and hands it to the holder.
            self._subscriptions.append(await subscribe(self.subjects.all_named(), self._on_named, queue=NAMED_QUEUE))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.unsubscribe()

    def _on_message(self, msg: Msg) -> None:
        # A message of another node's stream is handled in its stream's order, once: a
        # resend already handled is dropped, one that came early waits for the gap.
        if self.streams is None:
            self.handle(msg)
            return
        try:
            self.streams.receive(msg.headers, msg, self.handle)
        except ValueError as err:
            self._dead_letter(msg, str(err))

    def handle(self, msg: Msg) -> None:
        """Deliver or dead-letter one message from the wire, in the order given; never raises."""
        try:
            self._handle_message(msg)
        except Exception as err:  # noqa: BLE001 - STYLE §16: nothing raises into the read loop
            log.exception("handling a message on %s failed", msg.subject)
            self._dead_letter(msg, f"internal error while delivering: {type(err).__name__}: {err}")

    def _handle_message(self, msg: Msg) -> None:
        rest = msg.subject[len(self._prefix):]
        uid, _, topic = rest.partition(".")
        headers = msg.headers or {}
        event_kind = headers.get(EVENT_HEADER)
        if event_kind is not None:  # an EXIT or LINK_DOWN from another node (see _remote.py)
            try:
                self.deliver_event(uid, decode_event(event_kind, msg.data))
            except MoonwireError as err:
                self._dead_letter(msg, f"bad event: {err.message}")
            return
        if BATCH_HEADER in headers:
            self._on_batch(uid, msg)
            return
        try:
            self.deliver(uid, decode(topic, headers, msg.data, self.max_body))
            self.stats.delivered += 1
        except Undeliverable as err:
            self._dead_letter(msg, str(err))
        except MoonwireError as err:
            self._dead_letter(msg, err.message)

    def _on_named(self, msg: Msg) -> None:
        """A message to a cluster name from outside: the longest name the subject starts
        with that someone holds (names may hold dots), the rest is the topic. Decoded by
        the rules of the process inboxes and routed to the holder, here or on its node;
        a name nobody holds, or a message that cannot be delivered, is dead-lettered."""
        assert self.cluster is not None
        try:
            rest = msg.subject[len(self._named_prefix):]
            # The names the subject may start with, longest first: every run of whole
            # tokens up to MAX_NAME characters (a longer one is no name), so a subject of
            # thousands of tokens costs a few hundred look-ups, not a join per token.
            ends = [i for i in range(min(len(rest), MAX_NAME + 1)) if rest[i] == "."]
            if len(rest) <= MAX_NAME:
                ends.append(len(rest))
            for end in reversed(ends):
                pid = self.cluster.holder_of(rest[:end])
                if pid is not None:
                    break
            else:
                first = rest.partition(".")[0]
                self._dead_letter(msg, f"no process holds the cluster name {first[:MAX_NAME]!r}"
                                       + (" (nor any longer name the subject starts with)" if "." in rest else ""))
                return
            message = decode(rest[end + 1:], msg.headers or {}, msg.data, self.max_body)
            self.cluster.route(pid, message)
            self.stats.delivered += 1
        except Undeliverable as err:
            self._dead_letter(msg, str(err))
        except MoonwireError as err:
            self._dead_letter(msg, err.message)
        except Exception as err:  # noqa: BLE001 - STYLE §16: nothing raises into the read loop
            log.exception("handling a message on %s failed", msg.subject)
            self._dead_letter(msg, f"internal error while delivering: {type(err).__name__}: {err}")

    def on_group(self, group: str, msg: Msg) -> None:
        """A broadcast to ``group`` (from ``pg.broadcast``, or from outside as
        ``<prefix>.g.<group>.<topic>``): decoded once by the rules of the process inboxes
        and posted to each member here once, however many times it joined. The message
        is dead-lettered when it cannot be decoded, and a copy per member whose mailbox
        refuses it (full), naming the member: nothing is dropped unseen."""
        assert self.cluster is not None
        try:
            topic = msg.subject[len(self._group_prefix) + len(group) + 1:]
            message = decode(topic, msg.headers or {}, msg.data, self.max_body)
        except Undeliverable as err:
            self._dead_letter(msg, str(err))
            return
        for pid in dict.fromkeys(self.cluster.members_here(group)):
            try:
                self.cluster.route(pid, message)
                self.stats.delivered += 1
            except MoonwireError as err:
                self._dead_letter(msg, f"group {group} member {pid}: {err.message}")

    def _on_batch(self, uid: str, msg: Msg) -> None:
        try:
            items = batch_items(msg.data)
        except ValueError as err:
            self._dead_letter(msg, str(err))
            return
        sender, shared = "", request_trace(None, msg.headers)  # one sender's burst: its trace, once
        for item in items:
            try:
                message = decode_item(item, self.max_body, sender, shared)
                sender = message.sender
                self.deliver(uid, message)
                self.stats.delivered += 1
            except (Undeliverable, MoonwireError) as err:
                # Alone, as it would have come without a batch (or as the item it is).
                try:
                    fields = unpack(item, MSGPACK)
                    if not (isinstance(fields, list) and len(fields) in (3, 4) and isinstance(fields[0], str)
                            and isinstance(fields[1], str)):  # header values must be strings
                        raise TypeError("not an item")
                    trace = parse_traceparent(fields[3]) if len(fields) == 4 else shared
                    body, headers = Envelope(fields[0], fields[1], pack(fields[2]), trace or "").alone()
                except (MoonwireError, TypeError, ValueError):
                    body, headers = item, {CONTENT_TYPE: MSGPACK}
                self.stats.dead_lettered += 1
                self.dead_letters.publish(msg.subject, body, headers,
                                          err.message if isinstance(err, MoonwireError) else str(err))

    def _dead_letter(self, msg: Msg, reason: str) -> None:
        self.stats.dead_lettered += 1
        self.dead_letters.publish(msg.subject, msg.data, msg.headers, reason)


@dataclass(frozen=True, slots=True)
class DeadLetterStatistics:
    published: int
    """Republished to the dead-letter subject."""
    dropped: int
    """Lost: the waiting dead letters were at their limit, or the publish failed."""
    waiting: int
    """Waiting for the connection's write buffer now."""
    by_reason: dict[str, int]
    """Every dead letter so far by reason (numbers, PIDs and quoted values blanked) and
    subject prefix; a bounded number of keys, the rest under ``(other)``."""


class DeadLetters:
    """Everything this node cannot deliver goes out here, in the order it failed: to
    the dead-letter subject ``dlq``, on the data connection ``nats``.

    A dead letter goes on the connection's write buffer at once when nothing waits
    before it, else waits in a FIFO (at most ``limit``, then dropped and counted)
    that :meth:`run` (a task owned by the node) publishes. Logging goes through a
    :class:`broker.Tally`: the first dead letter of a reason per interval is logged in
    full, the others are counted into one summary line per interval.
    """

    def __init__(self, nats: Client, dlq: str, *, limit: int = DEAD_LETTERS_WAITING,
                 log_interval: float = DEAD_LETTER_LOG_INTERVAL) -> None:
        self.nats = nats
        self.dlq = dlq
        self.limit = limit
        self.tally = Tally(log, f"undeliverable messages republished to {dlq}", interval=log_interval, max_keys=64)
        self.published = 0
        self.dropped = 0
        self._waiting: deque[tuple[bytes, dict[str, str]]] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._made: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}

    def statistics(self) -> DeadLetterStatistics:
        return DeadLetterStatistics(self.published, self.dropped, len(self._waiting), dict(self.tally.totals))

    def publish(self, subject: str, body: bytes, headers: dict[str, str] | None, reason: str) -> None:
        """Republish a message that came on ``subject`` (with ``body`` and ``headers``)
        to the dead-letter subject, with ``reason``."""
        # A flood repeats one subject and reason: their key and header block are made once.
        made = self._made.get((subject, reason)) if not headers else None
        if made is None:
            key = f"{reason_key(reason)} [{'.'.join(subject.split('.', 3)[:3])}]"
            made = key, _dead_letter_headers(headers, subject, reason)
            if not headers:
                if len(self._made) >= 256:
                    self._made.clear()
                self._made[(subject, reason)] = made
        key, block = made
        self.tally.note(key, "undeliverable message on %s: %s (republished to %s)", subject, reason, self.dlq)
        if not self._waiting and self.nats.try_publish(self.dlq, body, headers=block):
            self.published += 1
            return
        if len(self._waiting) >= self.limit:
            self.dropped += 1
            self.tally.note("dropped", "dropped a dead letter from %s: %d are waiting to be published already",
                            subject, len(self._waiting))
            return
        self._waiting.append((body, block))
        self._ready.set()

    async def make_room(self) -> None:
        """The data connection's read hook (``broker.Client.after_read``): yield the
        event loop once per chunk read, so a flood takes turns with everything else,
        and hold reading while more than half the limit of dead letters wait."""
        await asyncio.sleep(0)
        while len(self._waiting) > self.limit // 2:
            self._room.clear()
            await self._room.wait()

    async def run(self) -> None:
        """Publish waiting dead letters until cancelled; cancelling publishes what is
        waiting first."""
        try:
            await drain_when_ready(self._ready, self._drain)
        finally:
            self.tally.close()

    async def _drain(self) -> None:
        waiting, low = self._waiting, self.limit // 4
        while waiting:
            body, headers = waiting.popleft()
            try:
                await self.nats.publish(self.dlq, body, headers=headers)
                self.published += 1
            except Exception as err:  # noqa: BLE001 - a failed publish is counted, never fatal
                self.dropped += 1
                self.tally.note("publish failed", "could not publish a dead letter to %s: %s", self.dlq, err)
            if len(waiting) <= low:
                self._room.set()
        self._room.set()


def _dead_letter_headers(headers: dict[str, str] | None, subject: str, reason: str) -> dict[str, str]:
    """The message's headers plus the reason and subject: a :class:`broker.Headers` (the
    fast publish path) when every header is one it can encode, else a plain dict."""
    merged = dict(headers or {})
    merged[DLQ_REASON] = " ".join(reason.splitlines())  # a header value holds no line break
    merged[DLQ_SUBJECT] = subject
    try:
        return Headers(merged)
    except ValueError:
        return merged
