"""What a unit owns besides its threads: its timers, the futures of ``funcs.async``, the
tasks and pending answers it waits on (:class:`Holdings`), all stopped when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lupa.lua55 import LuaMemoryError

from ._answer import Outcome, Pending
from ._channel import Channel
from ._errors import Kind, MoonwireError
from ._values import to_lua

if TYPE_CHECKING:
    from ._protocols import LuaRuntime


class Owner(Protocol):
    """The unit a timer or future belongs to (a :class:`~moonwire.lua.Unit`)."""

    @property
    def state(self) -> LuaRuntime: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def holdings(self) -> Holdings: ...


class Timer:
    """``time.after``/``timer``/``ticker``: delivers the fire time into a channel (a
    ticker's drops a tick while its buffer is full). A one-shot timer closes its channel
    after it fires; stopping closes it too, so a blocked receiver gets ``nil, false``."""

    def __init__(self, unit: Owner, channel: Channel, ns: int, periodic: bool) -> None:
        self.unit, self.channel, self.periodic = unit, channel, periodic
        self.interval = ns / 1e9
        self.handle: asyncio.TimerHandle | None = None
        self._schedule()

    def _schedule(self) -> None:
        self.handle = self.unit.loop.call_later(self.interval, self._fire)
        self.unit.holdings().timers.add(self)

    def _fire(self) -> None:
        self.handle = None
        self.unit.holdings().timers.discard(self)
        state = self.unit.state
        try:
            fired = state.new_time(state.clock())
        except LuaMemoryError:
            # The state is full (its unit fails with the memory error); a callback of the
            # event loop must not raise, and a receiver still wakes: the channel closes.
            self.channel.close()
            return
        self.channel.offer(fired)
        if self.periodic:
            self._schedule()
        else:
            self.channel.close()

    def stop(self) -> bool:
        """Close the channel; True when the timer was still armed."""
        armed = self.handle is not None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            self.unit.holdings().timers.discard(self)
        self.channel.close()
        return armed

    def reset(self, ns: int) -> bool:
        """Arm again for ``ns`` from now if still armed (True); a timer that fired or
        was stopped stays so (False), as Wippy's."""
        if self.handle is None:
            return False
        self.handle.cancel()
        self.interval = ns / 1e9
        self._schedule()
        return True


class Future:
    """``funcs.async``: a call running alongside the unit that started it."""

    def __init__(self, unit: Owner, channel: Channel) -> None:
        self.unit, self.channel = unit, channel
        self.outcome: Outcome | None = None
        self.canceled = False
        self.abandon: Callable[[], None] = lambda: None

    def settle(self, outcome: Outcome) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        if outcome.ok:
            state = self.unit.state
            try:
                self.channel.offer(state.new_payload(to_lua(state, outcome.value)))
            except LuaMemoryError:
                pass  # a full state: the thread wakes to a closed channel (and :result() still has it)
        self.channel.close()  # wakes a thread waiting on the response channel

    def snapshot(self) -> tuple[str, Any, MoonwireError | None]:
        if self.outcome is None:
            return ("pending", None, None)
        if self.canceled:
            return ("canceled", None, self.outcome.error)
        if self.outcome.ok:
            return ("done", self.outcome.value, None)
        return ("failed", None, self.outcome.error)

    def cancel(self) -> bool:
        if self.outcome is not None:
            return False
        self.canceled = True
        self.abandon()
        self.settle(Outcome(error=MoonwireError("call canceled", Kind.CANCELED, retryable=False)))
        return True


@dataclass(slots=True)
class Holdings:
    """What a unit owns besides its threads, made the first time it owns any of it: most
    function calls return without waiting and never do (one object, not four, per call)."""

    sleeping: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    """Thread id -> the timer that wakes it from ``time.sleep``."""
    timers: set[Timer] = field(default_factory=set)
    children: set[asyncio.Task[Any]] = field(default_factory=set)
    pending: set[Pending] = field(default_factory=set)
    """Answers a thread waits for (a Pending leaves by itself when settled)."""

    def release(self) -> None:
        """Stop everything: the unit has ended."""
        for handle in self.sleeping.values():
            handle.cancel()
        self.sleeping.clear()
        for timer in list(self.timers):
            timer.stop()
        for task in self.children:
            task.cancel()
        for pending in list(self.pending):
            pending.drop()
        self.pending.clear()
