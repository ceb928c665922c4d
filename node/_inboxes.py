"""Process messages on the wire (DESIGN §2-§3): this node's one inbox subscription,
the envelope of a message between nodes, and the dead-letter queue.

A process's inbox is ``<prefix>.p.<node>.<uid>``; the node holds one wildcard
subscription, ``<prefix>.p.<node>.>``, and dispatches by uid. Inside the cluster a
message is published to the bare inbox subject with::

    Content-Type: application/msgpack     body: msgpack list of payloads
    Mw-Topic: <topic>                     (any text; subjects cannot carry every topic)
    Mw-From: <sender PID>

From outside (the NATS CLI, any client) the topic may instead follow the uid in the
subject (``mw.p.n1.<uid>.orders.new`` is topic ``orders.new``); a body without a content
type is one payload: JSON when it parses, else the text itself; ``msg:from()`` is "".

A message that cannot be delivered whole (malformed msgpack, an unsupported content
type, a bad ``Mw-From``, no topic or a reserved one, an oversize body, a value Lua
cannot hold, an unknown process, a full mailbox) is never half-delivered: it is logged
with the reason and republished, body and headers unchanged plus ``Mw-Dlq-Reason`` and
``Mw-Dlq-Subject``, to ``<prefix>.dlq.<node>``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker import Outbox, Pid, Subjects
from lua import Event, Message, MoonwireError, check_portable

from ._payload import CONTENT_TYPE, JSON, MSGPACK, pack, unpack
from ._remote import EVENT_HEADER, decode_event

log = logging.getLogger("moonwire.inboxes")

TOPIC_HEADER = "Mw-Topic"
FROM_HEADER = "Mw-From"
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
    """The body and headers of ``message`` for another node."""
    headers = {CONTENT_TYPE: MSGPACK, TOPIC_HEADER: message.topic}
    if message.sender:
        headers[FROM_HEADER] = message.sender
    return pack(message.payloads), headers


def decode(topic_from_subject: str, headers: dict[str, str], body: bytes, max_body: int) -> Message:
    """The message a wire message carries.

    Raises:
        Undeliverable: naming what is wrong with it.
    """
    if len(body) > max_body:
        raise Undeliverable(f"body of {len(body)} bytes is over the limit of {max_body}")
    topic = topic_from_subject or headers.get(TOPIC_HEADER, "")
    if not topic:
        raise Undeliverable(f"no topic: put it after the uid in the subject or in the {TOPIC_HEADER} header")
    if topic.startswith("@"):
        raise Undeliverable(f"topic {topic!r} is reserved (topics starting with @ are system topics)")
    sender = headers.get(FROM_HEADER, "")
    if sender and Pid.parse(sender) is None:
        raise Undeliverable(f"{FROM_HEADER} {sender!r} is not a PID")
    content_type = headers.get(CONTENT_TYPE)
    try:
        if content_type == MSGPACK:
            payloads = unpack(body, MSGPACK)
            if not isinstance(payloads, list):
                raise Undeliverable(f"a msgpack body must be a list of payloads, got {type(payloads).__name__}")
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
        check_portable(payloads)
    except MoonwireError as err:
        raise Undeliverable(err.message) from None
    except UnicodeDecodeError:
        raise Undeliverable("a text body is not UTF-8") from None
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
        body, headers = encode(message)
        self.outbox.publish_nowait(self.subjects.inbox(pid.node, pid.uid), body, headers=headers)

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
        try:
            self.deliver(uid, decode(topic, headers, msg.data, self.max_body))
            self.stats.delivered += 1
        except Undeliverable as err:
            self._dead_letter(msg, str(err))
        except MoonwireError as err:
            self._dead_letter(msg, err.message)

    def _dead_letter(self, msg: Msg, reason: str) -> None:
        self.stats.dead_lettered += 1
        dead_letter(self.outbox, self.subjects.dead_letters(self.node), msg, reason)


def dead_letter(outbox: Outbox, subject: str, msg: Msg, reason: str) -> None:
    """Log ``msg`` as undeliverable and republish it, with the reason, to ``subject``."""
    log.warning("undeliverable message on %s: %s (republished to %s)", msg.subject, reason, subject)
    headers = dict(msg.headers or {})
    headers[REASON_HEADER] = reason
    headers[SUBJECT_HEADER] = msg.subject
    outbox.publish_nowait(subject, msg.data, headers=headers)
