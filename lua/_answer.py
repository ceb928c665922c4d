"""What a service gives back to a unit: an :class:`Outcome` now, a :class:`Pending`
settled later by callback, or an awaitable of an Outcome (together: :data:`Answer`).

These sit below the unit and the process module, which both speak of answers; they
know nothing of Lua.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ._errors import MoonwireError


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a unit ended: ``error`` is None for a normal return of ``value``."""

    value: Any = None
    error: MoonwireError | None = None
    raised: bool = False
    """The unit raised ``error`` (a Lua ``error()``), rather than returning ``nil, err``.
    Set on the unit's own outcome only: what crosses a wire or an EXIT does not keep it."""

    @property
    def ok(self) -> bool:
        return self.error is None


def _nothing() -> None:
    pass


class Pending:
    """An outcome a service delivers later by calling :meth:`settle`, with no task:
    for answers that arrive by callback (a reply from the broker, say).

    ``abandon`` is called when nobody waits any more (the unit ended, the future was
    cancelled); after that ``settle`` is ignored.
    """

    __slots__ = ("abandon", "owner", "_listener", "_outcome", "_done")

    def __init__(self, abandon: Callable[[], None] | None = None) -> None:
        self.abandon: Callable[[], None] = abandon or _nothing
        self.owner: set[Pending] | None = None
        """The waiting unit's set of pending answers, which this leaves when settled."""
        self._listener: Callable[[Outcome], None] | None = None
        self._outcome: Outcome | None = None
        self._done = False

    def settle(self, outcome: Outcome) -> None:
        if self._done:
            return
        self._done = True
        if self.owner is not None:
            self.owner.discard(self)
        if self._listener is not None:
            self._listener(outcome)
        else:
            self._outcome = outcome

    def listen(self, listener: Callable[[Outcome], None]) -> None:
        if self._outcome is not None:
            listener(self._outcome)
        else:
            self._listener = listener

    def drop(self) -> None:
        if not self._done:
            self._done = True
            if self.owner is not None:
                self.owner.discard(self)
            self.abandon()


Answer = Outcome | Pending | Awaitable[Outcome]
"""What a service gives back: an Outcome now, a Pending settled by callback, or an awaitable."""

BLOCKED = object()
"""What a unit's request handler returns when the requesting thread does not resume now
(it waits, or it is gone: ``process.upgrade`` replaced it)."""


async def settled(answer: Answer) -> Outcome:
    """Wait for a service's answer, whichever form it took (for callers outside a unit)."""
    if isinstance(answer, Outcome):
        return answer
    if isinstance(answer, Pending):
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        answer.listen(future.set_result)
        try:
            return await future
        except asyncio.CancelledError:
            answer.drop()
            raise
    return await answer
