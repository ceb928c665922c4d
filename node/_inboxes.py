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
cannot hold, an unknown process, a full mailbox) is never half-delivered: it is logged
with the reason and republished, body and headers unchanged plus ``Mw-Dlq-Reason`` and
``Mw-Dlq-Subject``, to ``<prefix>.dlq.<node>``. A message of a batch that cannot be
delivered is republished alone; the others are delivered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker import BATCH_HEADER, CONTENT_TYPE, FROM_HEADER, MSGPACK, TOPIC_HEADER, Envelope, Outbox, Pid, Subjects, batch_items
from lua import Event, Message, MoonwireError, check_portable

from ._payload import JSON, pack, unpack
from ._remote import EVENT_HEADER, decode_event

log = logging.getLogger("moonwire.inboxes")

REASON_HEADER = "Mw-Dlq-Reason"
SUBJECT_HEADER = "Mw-Dlq-Subject"
DEFAULT_MAX_BODY = 1024 * 1024
_TEXT = "text/plain"


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
    return Envelope(message.topic, message.sender, pack(message.payloads))


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
                payloads = [json.loads(body)] if body.strip() else []
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
    return _checked_payloads(topic, sender, payloads)


def decode_item(item: bytes, max_body: int, known_sender: str = "") -> Message:
    """The message an item of a batch carries (``known_sender``: one already checked).

    Raises:
        Undeliverable: naming what is wrong with it.
    """
    if len(item) > max_body:
        raise Undeliverable(f"message of {len(item)} bytes is over the limit of {max_body}")
    try:
        fields = unpack(item, MSGPACK)
    except MoonwireError as err:
        raise Undeliverable(err.message) from None
    if not (isinstance(fields, list) and len(fields) == 3 and isinstance(fields[0], str)
            and isinstance(fields[1], str)):
        raise Undeliverable("a batch item must be [topic, sender, payloads]")
    topic, sender, payloads = fields
    _check_address(topic, "" if sender == known_sender else sender)
    return _checked_payloads(topic, sender, payloads)


def _check_address(topic: str, sender: str) -> None:
    if not topic:
        raise Undeliverable(f"no topic: put it after the uid in the subject or in the {TOPIC_HEADER} header")
    if topic.startswith("@"):
        raise Undeliverable(f"topic {topic!r} is reserved (topics starting with @ are system topics)")
    if sender and Pid.parse(sender) is None:
        raise Undeliverable(f"{FROM_HEADER} {sender!r} is not a PID")


def _checked_payloads(topic: str, sender: str, payloads: object) -> Message:
    if not isinstance(payloads, list):
        raise Undeliverable(f"a msgpack body must be a list of payloads, got {type(payloads).__name__}")
    try:
        check_portable(payloads)
    except MoonwireError as err:
        raise Undeliverable(err.message) from None
    return Message(topic, payloads, sender)


class NodeInboxes:
    """The node's inbox subscription and its remote sends.

    ``deliver(uid, message)`` is the process table's: it raises :class:`MoonwireError`
    when no process has that uid or its mailbox is full.
    """

    def __init__(self, nats: NatsClient, outbox: Outbox, subjects: Subjects, node: str,
                 deliver: Callable[[str, Message], None], deliver_event: Callable[[str, Event], None],
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.nats = nats
        self.outbox = outbox
        self.subjects = subjects
        self.node = node
        self.deliver = deliver
        self.deliver_event = deliver_event
        self.max_body = max_body
        self.stats = InboxStatistics()
        self._prefix = subjects.inbox(node, "")  # "<prefix>.p.<node>."
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nats.subscribe(self.subjects.node_inboxes(self.node), cb=self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def send(self, pid: Pid, message: Message) -> None:
        """Publish ``message`` to ``pid``'s inbox on its node (in order with every other
        message this node publishes)."""
        self.outbox.send_nowait(self.subjects.inbox(pid.node, pid.uid), envelope(message))

    async def _on_message(self, msg: Msg) -> None:
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

    def _on_batch(self, uid: str, msg: Msg) -> None:
        try:
            items = batch_items(msg.data)
        except ValueError as err:
            self._dead_letter(msg, str(err))
            return
        sender = ""
        for item in items:
            try:
                message = decode_item(item, self.max_body, sender)
                sender = message.sender
                self.deliver(uid, message)
                self.stats.delivered += 1
            except (Undeliverable, MoonwireError) as err:
                # Alone, as it would have come without a batch (or as the item it is).
                try:
                    fields = unpack(item, MSGPACK)
                    body, headers = Envelope(fields[0], fields[1], pack(fields[2])).alone()
                except (MoonwireError, TypeError, IndexError, KeyError):
                    body, headers = item, {CONTENT_TYPE: MSGPACK}
                self.stats.dead_lettered += 1
                dead_letter(self.outbox, self.subjects.dead_letters(self.node), msg.subject, body, headers,
                            err.message if isinstance(err, MoonwireError) else str(err))

    def _dead_letter(self, msg: Msg, reason: str) -> None:
        self.stats.dead_lettered += 1
        dead_letter(self.outbox, self.subjects.dead_letters(self.node), msg.subject, msg.data, msg.headers, reason)


def dead_letter(outbox: Outbox, dlq: str, subject: str, body: bytes, headers: dict[str, str] | None,
                reason: str) -> None:
    """Log a message that came on ``subject`` as undeliverable and republish it, with
    the reason, to the dead-letter subject ``dlq``."""
    log.warning("undeliverable message on %s: %s (republished to %s)", subject, reason, dlq)
    headers = dict(headers or {})
    headers[REASON_HEADER] = reason
    headers[SUBJECT_HEADER] = subject
    outbox.publish_nowait(dlq, body, headers=headers)
