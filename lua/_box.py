"""A mailbox's *box*: its queue in the Lua state, which the local message path fills
(``_prelude.lua`` and ``_process.lua`` hold the Lua side; docs/architecture.md, "The
local message path").

A process on a host has a box. While its inbox is open and it listens to no topic,
every message routed to its inbox goes into the box, as a Lua message: a sender of the
same state appends it in Lua, without calling Python, and everything else (another
node, shard or function call) is appended by :class:`LocalPath`, so one queue keeps the
order. A receive takes from the box in Lua too; a thread that waits marks the box
(only an empty box is marked), and a send then has Python hand the message over
(:meth:`LocalPath.hand`). The first
``listen``, an upgrade and the exit close the box: its messages come back to Python,
in order, as :class:`~moonwire.lua.Message` values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._channel import Handed, PostChannel, Waiter, _received
from ._values import to_lua, to_python


@dataclass(slots=True)
class FromBox:
    """A message a box handed to a thread with siblings (see :class:`Handed`): Lua's."""

    message: Any
    trace: bytes | None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


class BoxInbox(PostChannel):
    """The inbox channel of a mailbox with a box: while the box is open, what a thread
    takes comes from the box, and a thread that waits marks it (a sender then has
    Python hand the message over)."""

    __slots__ = ("mailbox",)

    def __init__(self, mailbox: LocalPath) -> None:
        super().__init__(mailbox._message_to_lua)
        self.mailbox = mailbox

    def try_receive(self) -> tuple[Any, bool] | None:
        mailbox = self.mailbox
        if mailbox.open:
            got = mailbox.pop()
            if got is not None:
                mailbox.took(got[1])
                return (got[0], True)
        return super().try_receive()

    def wait_receive(self, waiter: Waiter, case: int = 0) -> None:
        super().wait_receive(waiter, case)
        mailbox = self.mailbox
        if mailbox.open:
            mailbox.state.box_waiting(mailbox.box, True)

    def wait_empty(self, waiter: Waiter) -> None:
        """A receive in Lua found the box empty and marked it waiting: park ``waiter``."""
        PostChannel.wait_receive(self, waiter)


class LocalPath:
    """The box side of a :class:`~moonwire.lua.Mailbox` (its base class)."""

    __slots__ = ()
    state: Any             # a MailboxState
    owner: Any
    box: Any
    open: bool
    _inbox: Any            # the inbox's _Topic, or None
    _message_to_lua: Callable[[Any], Any]
    _make_message: Callable[..., Any]  # the Message class (``_mailbox.py``, which imports this module)
    _seen: bytes | None    # the box's trace as Lua has it: a change costs a call into Lua
    post: Callable[[Any], bool]

    def hand(self) -> None:
        """A send in Lua put a message in the box marked waiting: hand the box's oldest
        to a waiting thread, if one is left (a thread that waited in a ``select`` may
        have been woken by another channel)."""
        channel = self._inbox.channel if self._inbox is not None else None
        if not self.open or channel is None:
            return  # cannot happen: Lua sends only to an open box, and Lua is running
        receiver = channel._pop_live(channel._receivers)
        if receiver is not None:
            got = self.pop()
            assert got is not None  # the send has just put one in
            self._give(channel, receiver, got[0], got[1])

    def pop(self) -> tuple[Any, bytes | None] | None:
        """The box's oldest message and its trace, taken out of it (None: empty)."""
        got = self.state.box_pop(self.box)
        if got is None:
            return None
        return got if isinstance(got, tuple) else (got, None)

    def _give(self, channel: Any, receiver: Any, message: Any, trace: bytes | None) -> None:
        """Wake ``receiver`` (waiting on the inbox ``channel``, so the box is empty) with
        ``message``. The box stays marked waiting while another waiter is left."""
        self.took(trace)
        values = _received(receiver.case, message, True)
        if receiver.waiter.keep:
            values = Handed(values)
            values.item = FromBox(message, trace)
        receiver.waiter.fire(values)
        if channel._receivers:
            self.state.box_waiting(self.box, True)

    def _to_box(self, message: Any) -> bool:
        """Deliver ``message`` (from Python's path) to the open box: to a thread waiting
        on the inbox (the box is empty then), else at its end; False when it is full.
        A box left marked waiting is put right by the next send in Lua (:meth:`hand`).

        No Lua code runs while Python posts, so nothing checks the state's memory limit
        meanwhile: past half of it, the box closes (its messages come back to Python)
        and the mailbox holds messages in Python, as it did before the local path."""
        state, trace = self.state, message.trace
        if state.memory_used() > state.box_memory:
            self._inbox.channel.extend(self._shut_box())
            return self.post(message)  # the mailbox without its box
        lua_trace = None if trace is None else trace.encode()
        channel = self._inbox.channel
        receiver = channel._pop_live(channel._receivers) if channel._receivers else None
        if receiver is not None:
            lua = state.new_message(message.topic.encode(), message.sender.encode(),
                                    *[to_lua(state, p) for p in message.payloads])
            self._give(channel, receiver, lua, lua_trace)
            return True
        return bool(state.box_post(self.box, lua_trace, message.topic.encode(), message.sender.encode(),
                                   *[to_lua(state, p) for p in message.payloads]))

    def took(self, trace: bytes | None) -> None:
        """The process took a message of its box sent with ``trace``: it works in it,
        and so does its box (what a send in Lua carries)."""
        if trace is not None and trace == self._seen:
            return  # the unit works in it already (the common case: one trace per conversation)
        if self.owner is not None:
            self.owner.trace = None if trace is None else trace.decode()
        if trace != self._seen:
            self.state.box_trace(self.box, trace)
            self._seen = trace

    def mirrored(self, trace: bytes | None) -> None:
        """Lua set the box's trace to ``trace`` (and the unit's too)."""
        self._seen = trace

    def _open_box(self) -> None:
        assert self._inbox is not None
        self.state.boxes[id(self)] = self
        self.state.box_open(self.box, self._inbox.lua)
        self.open = True

    def _shut_box(self, keep: bool = True) -> list[Any]:
        """Close the box, if open: senders take Python's path again. What it held, in
        order, or (not ``keep``: the process ended) nothing."""
        if not self.open:
            return []
        self.open = False
        self.state.boxes.pop(id(self), None)
        assert self._inbox is not None
        held = self.state.box_close(self.box, self._inbox.lua, keep)
        return self._from_box(held) if keep else []

    def _from_box(self, items: Any) -> list[Any]:
        """Lua messages as Python ones: ``box_items``' list, or a :class:`FromBox`'s."""
        pairs = [(item.message, item.trace) for item in items] if isinstance(items, list) else \
            [(items[i], items[i + 1] or None) for i in range(1, len(items) + 1, 2)]
        state, out = self.state, []
        for lua, trace in pairs:  # { topic, from, n, payloads... } (_process.lua)
            payloads = [to_python(state, lua[3 + i]) for i in range(1, (lua[3] or 0) + 1)]
            out.append(self._make_message(_text(lua[1]), payloads, _text(lua[2]),
                                          None if trace is None else trace.decode()))
        return out

    def _mirror(self, trace: str | None) -> None:
        """The unit now works in ``trace`` (it took a message from Python's queues): so
        does its box."""
        if self.owner is not None:
            self.owner.trace = trace
        if self.box is not None and (lua := None if trace is None else trace.encode()) != self._seen:
            self.state.box_trace(self.box, lua)
            self._seen = lua
