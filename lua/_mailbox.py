"""A process's mailbox: where the node posts its messages and lifecycle events, and how
they reach Lua (wippy-surface §3.1-§3.3).

Routing of a message: the channel of a ``listen`` on its topic, else the inbox channel,
else it is held until the process calls ``inbox()`` or ``listen()`` for it. Nothing is
converted to a Lua value until a thread receives it. Events go to the events channel,
or are held until ``events()`` is called.

The bound counts every message not yet received (held or buffered in a channel); past
it, :meth:`Mailbox.post` refuses the message and the node decides what the sender sees.

``process.upgrade`` keeps the mailbox and discards the old code's subscriptions
(:meth:`Mailbox.reset`): what was not received is held again, in arrival order, for the
new code's ``inbox()``, ``listen()`` and ``events()``.

The local path: a process on a host has a *box* in its Lua state (``_prelude.lua``), a
queue of Lua messages. While its inbox is open and it listens to no topic, every message
routed to its inbox goes into the box: senders of the same state append to it in Lua,
and everything else is appended here, so one queue keeps the order. ``depth`` reads its
count; the first ``listen``, an upgrade and the exit close it, its messages coming back
here, in order, as :class:`Message` values.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ._box import BoxInbox, FromBox, LocalPath
from ._channel import PostChannel
from ._errors import MoonwireError
from ._values import LuaValues, to_lua

DEFAULT_MAILBOX_LIMIT = 4096

# Event kinds, as `process.event` spells them in Lua (_process.lua).
EXIT, LINK_DOWN, CANCEL, OUTDATED = "pid.exit", "pid.link.down", "pid.cancel", "pid.outdated"


class MailboxState(LuaValues, Protocol):
    """What a mailbox needs of its state (a :class:`~moonwire.lua.LuaState`): the
    prelude's constructors of channels, messages and events, and its boxes (Lua
    functions; ``boxes`` finds a mailbox by the id its box carries)."""

    wrap_channel: Callable[..., Any]
    new_message: Callable[..., Any]
    new_event: Callable[..., Any]
    new_group_event: Callable[..., Any]
    boxes: dict[int, Mailbox]
    box_memory: int

    def memory_used(self) -> int: ...

    new_box: Callable[..., Any]
    box_open: Callable[..., Any]
    box_post: Callable[..., Any]
    box_pop: Callable[..., Any]
    box_depth: Callable[..., Any]
    box_waiting: Callable[..., Any]
    box_trace: Callable[..., Any]
    box_close: Callable[..., Any]
    box_items: Callable[..., Any]


@dataclass(slots=True)
class Message:
    """A message between processes, in Python values (it may cross states and nodes)."""

    topic: str
    payloads: list[Any]
    sender: str = ""  # "" when the sender is not a process (the CLI, a plain NATS client)
    trace: str | None = None
    """The sender's ``traceparent``: the receiving process works in it once it takes
    the message (``_trace.py``)."""


@dataclass(slots=True)
class Event:
    """A lifecycle event (wippy-surface §3.3). EXIT and LINK_DOWN carry the exited
    process's result (``value`` on a normal exit, ``error`` otherwise); CANCEL a reason."""

    kind: str
    sender: str
    at: float
    value: Any = None
    error: MoonwireError | None = None
    reason: str | None = None
    group: str | None = None
    """The process group of a ``pg.monitor`` event."""
    sources: list[str] | None = None
    """OUTDATED: the ids of the entries whose code changed (the process's own, its imports)."""

    @property
    def has_result(self) -> bool:
        return self.kind in (EXIT, LINK_DOWN)


@dataclass(slots=True)
class _Topic:
    channel: PostChannel
    lua: Any            # the Lua channel object handed out (the same one every time)
    as_message: bool


GROUP_EVENTS_LIMIT = 64
"""Events a ``pg`` subscription channel buffers (Wippy's capacity); more are dropped
and counted, as Wippy drops them."""


@dataclass(slots=True)
class _GroupSubscription:
    """A ``pg`` instance's ``monitor(group)`` or ``events()``: the group events it takes
    instead of ``process.events()``."""

    match: str       # a group's full name, or a prefix of full names
    prefix: bool
    strip: int       # characters cut from the front of a full name for Lua (the scope's prefix)
    channel: PostChannel
    lua: Any = None


Held = Any
"""What a mailbox keeps of a message not yet received: the :class:`Message`, or once the
process has listened to a topic, ``(arrival number, Message)``: messages then wait in
several queues, and ``process.upgrade`` merges them back in arrival order."""


_NO_TOPICS: dict[str, _Topic] = {}
"""Shared by every mailbox that listens to no topic; never written (``listen`` makes its own)."""


def _message(item: Held) -> Message:
    return item if type(item) is Message else item[1]


class Mailbox(LocalPath):
    _make_message = Message
    __slots__ = ("state", "limit", "owner", "held", "held_events", "dropped", "_inbox", "_events", "_topics",
                 "_group_subscriptions", "_arrivals", "_outdated", "box", "open", "_seen")

    def __init__(self, state: MailboxState, limit: int = DEFAULT_MAILBOX_LIMIT, owner: Any = None, *,
                 local: bool = False) -> None:
        self.state = state
        self.limit = limit
        self.owner = owner
        """The unit whose mailbox this is: a message it takes sets its ``trace``, as an
        OpenTelemetry consumer handles each message in the trace it came with."""
        self.box: Any = None
        """``local`` (a process on a host, ``owner`` with its PID): its box in the Lua
        state, which the local path delivers to (module docstring)."""
        self.open = False
        """The box is open: the inbox's messages are in it."""
        self._seen: bytes | None = None
        if local:
            trace = owner.trace
            self._seen = None if trace is None else trace.encode()
            self.box = state.new_box(id(self), owner.pid.encode(), limit, self._seen)
        # Most processes subscribe before anything arrives: the queues for held
        # messages and events exist only once something is held.
        self.held: deque[Held] | None = None
        self.held_events: deque[Event] | None = None
        self.dropped = 0
        self._inbox: _Topic | None = None
        self._events: _Topic | None = None
        self._topics: dict[str, _Topic] = _NO_TOPICS  # most never listen: no dict of their own
        self._group_subscriptions: list[_GroupSubscription] | None = None
        self._arrivals: int | None = None
        """Messages numbered so far, from the first ``listen()`` on (None before: one queue
        keeps the order by itself)."""
        self._outdated: Event | None = None
        """The OUTDATED event posted and not yet received, which later changes join."""

    # ------------------------------------------------------------ node side

    def depth(self) -> int:
        """Messages not yet received."""
        total = len(self.held) if self.held else 0
        if self.open:
            total += self.state.box_depth(self.box)
        if self._inbox is not None:
            total += len(self._inbox.channel.buffer)
        if self._topics:
            total += sum(len(topic.channel.buffer) for topic in self._topics.values())
        return total

    def undelivered(self) -> list[Message]:
        """The messages not yet received, left in place: those held, then the inbox's,
        then each listened topic's (in arrival order within each)."""
        out = list(self.held or ())
        for topic in (self._inbox, *self._topics.values()):
            if topic is not None:
                out.extend(topic.channel.buffer)
        if self.open:
            out.extend(self._from_box(self.state.box_items(self.box)))
        return out

    def post(self, message: Message) -> bool:
        """Route ``message``; False (and nothing delivered) when the mailbox is full."""
        if self.open:  # the box holds every unread message then, and checks the bound itself
            if self._to_box(message):
                return True
            self.dropped += 1
            return False
        if self.depth() >= self.limit:
            self.dropped += 1
            return False
        if self._arrivals is None:
            self._route(message, message.topic)
        else:
            self._arrivals += 1
            self._route((self._arrivals, message), message.topic)
        return True

    def post_outdated(self, sources: list[str], at: float) -> None:
        """The code of ``sources`` changed under this (upgradable) process. One OUTDATED
        waits at a time: until the process receives it, later changes join its
        ``sources``; an upgrade drops it (the process runs the current code then)."""
        pending = self._outdated
        if pending is not None and pending.sources is not None:
            pending.sources.extend(source for source in sources if source not in pending.sources)
            return
        event = self._outdated = Event(OUTDATED, "", at, sources=list(sources))
        if not self.post_event(event):
            self._outdated = None

    def post_event(self, event: Event) -> bool:
        """Deliver a lifecycle event. An EXIT or LINK_DOWN is never dropped: each ends a
        monitor or link the process holds, so there are never more of them than it
        made. Any other event (a CANCEL, which others send as often as they like; a
        process group's join or leave, which come as often as the cluster makes them)
        past the bound is dropped and counted: a process that never reads its events
        cannot be made to grow without limit."""
        if event.group is not None and self._group_subscriptions and self._to_subscription(event):
            return True
        bounded = not event.has_result
        if self._events is not None:
            if bounded and len(self._events.channel.buffer) >= self.limit:
                self.dropped += 1
                return False
            self._events.channel.post(event)
        elif self.held_events is None:
            self.held_events = deque((event,))
        elif bounded and len(self.held_events) >= self.limit:
            self.dropped += 1
            return False
        else:
            self.held_events.append(event)
        return True

    def _to_subscription(self, event: Event) -> bool:
        """Post a group event to every subscription that takes its group; False when
        none does (it goes to ``events()``)."""
        group = event.group or ""
        taken = False
        for subscription in self._group_subscriptions or ():
            if group.startswith(subscription.match) if subscription.prefix else group == subscription.match:
                taken = True
                if len(subscription.channel.buffer) >= GROUP_EVENTS_LIMIT:
                    self.dropped += 1
                else:
                    subscription.channel.post(event)
        return taken

    def close(self) -> None:
        """The process ended: wake nobody, hold nothing. The channels are let go too: the
        Lua state holds each channel's Python object (whose decoder is this mailbox) for
        as long as Python holds the Lua side of it, a cycle through both collectors that
        neither can break (every exited process that had read its inbox stayed in memory)."""
        self._shut_box(keep=False)
        self.box = None
        self.held = self.held_events = None
        for topic in (self._inbox, self._events, *self._topics.values(), *(self._group_subscriptions or ())):
            if topic is not None:
                topic.channel.clear()
                topic.channel.close()
        self._inbox = self._events = None
        self._topics = _NO_TOPICS
        self._group_subscriptions = None

    def reset(self, handed: Iterable[Message | Event]) -> None:
        """``process.upgrade``: the old code's ``inbox``, ``events``, ``listen`` and ``pg``
        subscriptions end (their channels close) and what they had not delivered is held
        again, in arrival order, with ``handed`` (items given to a thread of the old code
        that had not run since) first. Group events a ``pg`` subscription took go with
        it, and so does a pending OUTDATED: the process now runs the current code."""
        handed = [self._from_box([item])[0] if type(item) is FromBox else item for item in handed]
        first: list[Held] = []     # arrived before the first listen(), so before any numbered one
        numbered: list[Held] = []
        for item in (*(item for item in handed if type(item) is not Event), *(self.held or ()),
                     *(self._inbox.channel.take_all() if self._inbox is not None else ()), *self._shut_box(),
                     *(item for topic in self._topics.values() for item in topic.channel.take_all())):
            (first if type(item) is Message else numbered).append(item)
        numbered.sort(key=lambda item: item[0])
        events = [*(item for item in handed if type(item) is Event and item.group is None),
                  *(self.held_events or ()), *(self._events.channel.take_all() if self._events is not None else ())]
        box, self.box = self.box, None
        self.close()
        self.box = box  # the new code's inbox() opens it again
        self.held = deque(first + numbered) or None
        self.held_events = deque(event for event in events if event.kind != OUTDATED) or None
        self._outdated = None

    def _route(self, item: Held, topic_name: str) -> None:
        if self.open:  # held messages of a new inbox (no topic is listened to then)
            self._to_box(_message(item))
            return
        topic = self._topics.get(topic_name)
        if topic is not None:
            topic.channel.post(item)
        elif self._inbox is not None:
            self._inbox.channel.post(item)
        elif self.held is None:
            self.held = deque((item,))
        else:
            self.held.append(item)

    # ------------------------------------------------------------ Lua side

    def inbox(self) -> Any:
        """The inbox channel (created on first use; held messages move into it)."""
        if self._inbox is None:
            if self.box is not None and self._arrivals is None:
                channel = BoxInbox(self)
                self._inbox = _Topic(channel, self.state.wrap_channel(channel), True)
                self._open_box()
            else:
                self._inbox = self._new_topic(True)
            held, self.held = self.held, None
            for item in held or ():
                self._route(item, _message(item).topic)
        return self._inbox.lua

    def events(self) -> Any:
        if self._events is None:
            self._events = _Topic(PostChannel(self._event_to_lua), None, False)
            self._events.lua = self.state.wrap_channel(self._events.channel)
            for event in self.held_events or ():
                self._events.channel.post(event)
            self.held_events = None
        return self._events.lua

    def listen(self, topic: str, as_message: bool) -> Any:
        """The channel for ``topic`` (the same one if already listening); held messages
        of that topic move into it, in order."""
        existing = self._topics.get(topic)
        if existing is not None:
            return existing.lua
        if self.open:  # several queues from now on: the box's messages are the inbox's again
            assert self._inbox is not None
            self._inbox.channel.extend(self._shut_box())
        listener = self._new_topic(as_message)
        if self._topics is _NO_TOPICS:
            self._topics = {}
        self._topics[topic] = listener
        if self._arrivals is None:  # several queues from now on: number what arrives, and what is held
            self._arrivals = 0
            if self.held:
                numbered: deque[Held] = deque()
                for item in self.held:
                    self._arrivals += 1
                    numbered.append((self._arrivals, item))
                self.held = numbered
        if self.held:
            keep: deque[Held] = deque()
            for item in self.held:
                (listener.channel.post if _message(item).topic == topic else keep.append)(item)
            self.held = keep or None
        return listener.lua

    def unlisten(self, channel: Any) -> bool:
        """Stop listening on the topic whose channel is ``channel``. Messages it still
        buffered go back through routing (to the inbox or held), so none is lost."""
        for name, topic in self._topics.items():
            if topic.channel is channel:
                del self._topics[name]
                for item in topic.channel.take_all():
                    self._route(item, _message(item).topic)
                topic.channel.close()
                return True
        return False

    def subscribe_groups(self, match: str, prefix: bool, strip: int) -> Any:
        """A new channel for the events of group ``match`` (or of every group whose full
        name starts with ``match``, when ``prefix``), as Wippy's ``pg`` delivers them,
        with the first ``strip`` characters of the group's name cut."""
        def decode(event: Event) -> Any:
            group = (event.group or "")[strip:].encode()
            return self.state.new_group_event(event.kind.encode(), group, event.sender.encode())

        subscription = _GroupSubscription(match, prefix, strip, PostChannel(decode))
        subscription.lua = self.state.wrap_channel(subscription.channel)
        if self._group_subscriptions is None:
            self._group_subscriptions = []
        self._group_subscriptions.append(subscription)
        return subscription.lua

    def unsubscribe_groups(self, channel: Any, flush: bool) -> bool:
        """End the subscription whose channel is ``channel`` and close it (its buffered
        events stay readable when ``flush``, else they are dropped). True when no other
        subscription of this process watches what it watched: the watch can go."""
        subscriptions = self._group_subscriptions or []
        for subscription in subscriptions:
            if subscription.channel is channel:
                subscriptions.remove(subscription)
                if not flush:
                    subscription.channel.clear()
                subscription.channel.close()
                return not any(other.match == subscription.match and other.prefix == subscription.prefix
                               for other in subscriptions)
        return False

    def _new_topic(self, as_message: bool) -> _Topic:
        channel = PostChannel(self._message_to_lua if as_message else self._payload_to_lua)
        return _Topic(channel, self.state.wrap_channel(channel), as_message)

    def _message_to_lua(self, item: Held) -> Any:
        state, message = self.state, _message(item)
        self._mirror(message.trace)
        return state.new_message(message.topic.encode(), message.sender.encode(),
                                 *[to_lua(state, p) for p in message.payloads])

    def _payload_to_lua(self, item: Held) -> Any:
        # A raw listen hands over the value itself: none is nil, one is the value,
        # several are a list of them (wippy leaves several undocumented).
        message = _message(item)
        self._mirror(message.trace)
        if not message.payloads:
            return None
        if len(message.payloads) == 1:
            return to_lua(self.state, message.payloads[0])
        return to_lua(self.state, message.payloads)

    def _event_to_lua(self, event: Event) -> Any:
        state = self.state
        if not event.has_result:
            if event is self._outdated:  # received: a later change posts a new one
                self._outdated = None
            return state.new_event(event.kind.encode(), event.sender.encode(), event.at, False, None, None,
                                   None if event.reason is None else event.reason.encode(),
                                   None if event.group is None else event.group.encode(),
                                   None if event.sources is None else to_lua(state, event.sources))
        error = state.make_error(event.error) if event.error is not None else None
        return state.new_event(event.kind.encode(), event.sender.encode(), event.at, True,
                               to_lua(state, event.value), error, None, None)
