"""Channels between Lua threads of one state, with Go's semantics (wippy-surface §2.3).

Values stay Lua values (they never leave their state). A blocked thread is a
:class:`Waiter`; a thread in ``select`` registers one waiter on several channels and
the first channel to fire it wins (the others skip it, being ``done``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

SEND_ON_CLOSED = "send on closed channel"
SEND_ON_RECEIVE_ONLY = "send on a receive-only channel (a process's inbox, events or topic channel)"


@dataclass(slots=True, eq=False)
class Waiter:
    """A thread blocked on one or more channels. ``resume`` gets the resume values."""

    resume: Callable[[tuple[Any, ...]], None]
    done: bool = False
    keep: bool = False
    """Its thread has siblings: one may upgrade the process before this thread runs, so
    an item a :class:`PostChannel` hands it travels with its values (:class:`Handed`)."""

    def fire(self, values: tuple[Any, ...]) -> None:
        self.done = True
        self.resume(values)


class ThreadWaiter(Waiter):
    """A :class:`Waiter` that wakes thread ``tid`` of ``unit`` (``unit.wake(tid, values)``):
    what an idle process keeps while it waits, 230 bytes less than a Waiter around a
    ``functools.partial``."""

    __slots__ = ("unit", "tid")

    def __init__(self, unit: Any, tid: int) -> None:
        super().__init__(_never)  # ``fire`` wakes the thread itself
        self.unit, self.tid = unit, tid

    def fire(self, values: tuple[Any, ...]) -> None:
        self.done = True
        self.unit.wake(self.tid, values)


def _never(values: tuple[Any, ...]) -> None:
    raise AssertionError("a ThreadWaiter fires through its unit")


@dataclass(slots=True, eq=False)
class _Registration:
    waiter: Waiter
    case: int           # 1-based select case, or 0 for a plain send/receive
    value: Any = None   # for senders: the value offered


_NO_WAITERS: tuple[_Registration, ...] = ()
"""What a channel nobody ever waited on holds instead of a queue of waiters: most never
see one, and an empty deque is 760 bytes (a flood of channels is Python memory too).
A few waiters (an idle process's inbox has one) are a list; more, a deque."""
_FEW_WAITERS = 8
_NO_ITEMS: tuple[Any, ...] = ()
"""What an empty buffer is while nothing is buffered: an idle process's inbox holds no
deque (``bench/processes.py`` (d)); a receiver that waits drops it, since then there is
nothing in it."""

Waiters = deque[_Registration] | list[_Registration] | tuple[_Registration, ...]


def _enqueue(queue: Waiters, registration: _Registration) -> Waiters:
    if type(queue) is tuple:
        return [registration]
    if type(queue) is list and len(queue) >= _FEW_WAITERS:
        queue = deque(queue)
    queue.append(registration)  # type: ignore[union-attr]  # not the empty tuple
    return queue


class Channel:
    __slots__ = ("capacity", "buffer", "closed", "_receivers", "_senders")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer: deque[Any] | tuple[Any, ...] = _NO_ITEMS
        self.closed = False
        self._receivers: Waiters = _NO_WAITERS
        self._senders: Waiters = _NO_WAITERS

    receive_only = False

    # Each try_* returns the resume values when the operation completes now, else None.

    def try_send(self, value: Any) -> tuple[Any, ...] | None:
        """``(True,)`` if delivered or buffered, ``(False, msg)`` if closed, None to block."""
        if self.closed:
            return (False, SEND_ON_CLOSED)
        if self.receive_only:
            return (False, SEND_ON_RECEIVE_ONLY)
        receiver = self._pop_live(self._receivers)
        if receiver is not None:
            receiver.waiter.fire(_received(receiver.case, value, True))
            return (True,)
        if len(self.buffer) < self.capacity:
            self._buffer(value)
            return (True,)
        return None

    def _buffer(self, item: Any) -> None:
        if self.buffer is _NO_ITEMS:
            self.buffer = deque((item,))
        else:
            self.buffer.append(item)  # type: ignore[union-attr]  # not the empty tuple: a deque

    def extend(self, items: Iterable[Any]) -> None:
        """Append ``items`` to the buffer in order (messages handed back to Python), past
        its capacity if need be."""
        for item in items:
            self._buffer(item)

    def clear(self) -> None:
        """Drop whatever is buffered."""
        self.buffer = _NO_ITEMS

    def try_receive(self) -> tuple[Any, bool] | None:
        """``(value, True)``, ``(nil, False)`` once closed and drained, None to block."""
        if self.buffer:
            value = self.buffer.popleft()  # type: ignore[union-attr]  # not empty: a deque
            sender = self._pop_live(self._senders)
            if sender is not None:  # room now: its value joins the buffer
                self._buffer(sender.value)
                sender.waiter.fire(_sent(sender.case))
            return (value, True)
        sender = self._pop_live(self._senders)
        if sender is not None:
            sender.waiter.fire(_sent(sender.case))
            return (sender.value, True)
        if self.closed:
            return (None, False)
        return None

    def wait_send(self, waiter: Waiter, value: Any, case: int = 0) -> None:
        self._senders = _enqueue(self._senders, _Registration(waiter, case, value))

    def wait_receive(self, waiter: Waiter, case: int = 0) -> None:
        self.buffer = _NO_ITEMS  # a receiver waits only on an empty buffer
        self._receivers = _enqueue(self._receivers, _Registration(waiter, case))

    def offer(self, value: Any) -> bool:
        """Deliver without blocking (timers): False when nobody waits and the buffer is full."""
        return not self.closed and self.try_send(value) == (True,)

    def close(self) -> None:
        """Idempotent. Blocked receivers get ``nil, false``; blocked senders an error."""
        if self.closed:
            return
        self.closed = True
        while (receiver := self._pop_live(self._receivers)) is not None:
            receiver.waiter.fire(_received(receiver.case, None, False))
        while (sender := self._pop_live(self._senders)) is not None:
            sender.waiter.fire((-1, None, False) if sender.case else (False, SEND_ON_CLOSED))

    @staticmethod
    def _pop_live(queue: Waiters) -> _Registration | None:
        while queue:
            registration = queue[0]
            del queue[0]  # type: ignore[union-attr]  # a non-empty queue is a list or a deque
            if not registration.waiter.done:
                return registration
        return None


def _received(case: int, value: Any, ok: bool) -> tuple[Any, ...]:
    return (case, value, ok) if case else (value, ok)


def _sent(case: int) -> tuple[Any, ...]:
    return (case, None, True) if case else (True,)


def select(cases: list[tuple[str, Channel, Any]], has_default: bool, waiter: Waiter) -> tuple[Any, ...] | None:
    """Complete a ready case now (the first in order), else the default, else register
    ``waiter`` on every case and return None. Resume values: ``(index, value, ok)``,
    ``(0,)`` for the default, ``(-1,)`` for a send on a closed channel."""
    for index, (direction, channel, value) in enumerate(cases, start=1):
        if direction == "recv":
            got = channel.try_receive()
            if got is not None:
                return (index, got[0], got[1])
        else:
            sent = channel.try_send(value)
            if sent is not None:
                return (index, None, True) if sent[0] else (-1, None, False)
    if has_default:
        return (0, None, True)
    for index, (direction, channel, value) in enumerate(cases, start=1):
        if direction == "recv":
            channel.wait_receive(waiter, index)
        else:
            channel.wait_send(waiter, value, index)
    return None


class Handed(tuple):  # type: ignore[type-arg]
    """The resume values of a thread a :class:`PostChannel` handed an item to, with the
    item itself: until that thread runs, the item is not yet received, and
    ``process.upgrade`` (which discards the thread) gives it back to the mailbox. Made
    only for a thread with siblings (``Waiter.keep``): a sole thread runs before anything
    else of its unit can, so it always receives what it was handed."""

    item: Any


class PostChannel(Channel):
    """A process's inbox, events or topic channel: filled by the node, never by Lua.

    The buffer holds what was posted (Python messages); ``decode`` turns one into a Lua
    value when a thread takes it, so messages nobody reads cost no Lua memory.
    """

    __slots__ = ("decode",)
    receive_only = True

    def __init__(self, decode: Callable[[Any], Any]) -> None:
        super().__init__(0)
        self.decode = decode

    def post(self, item: Any) -> None:
        receiver = self._pop_live(self._receivers)
        if receiver is not None:
            values = _received(receiver.case, self.decode(item), True)
            if receiver.waiter.keep:
                values = Handed(values)
                values.item = item
            receiver.waiter.fire(values)
        else:
            self._buffer(item)

    def try_receive(self) -> tuple[Any, bool] | None:
        if self.buffer:
            return (self.decode(self.buffer.popleft()), True)  # type: ignore[union-attr]  # a deque
        if self.closed:
            return (None, False)
        return None

    def take_all(self) -> list[Any]:
        """Empty the buffer (unlisten moves what a topic channel held back to the inbox)."""
        items = list(self.buffer)
        self.buffer = _NO_ITEMS
        return items
