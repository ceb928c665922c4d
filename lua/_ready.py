"""Ready queues of units: the threads of a unit that may run next, with their resume values.

An idle unit holds the empty tuple instead of a queue: an empty deque is 760 bytes, more
than anything else an idle process keeps in Python (bench/processes.py (d)). Queues given
back by units that went idle are kept for the next unit that wakes (a busy unit needs one
per wake), up to a few.
"""

from __future__ import annotations

from collections import deque
from typing import Any

Ready = deque[tuple[int, tuple[Any, ...]]]
NOTHING_READY: tuple[()] = ()

_SPARE: list[Ready] = []
_SPARE_LIMIT = 64


def ready_queue() -> Ready:
    """An empty ready queue, a spare one if any."""
    return _SPARE.pop() if _SPARE else deque()


def give_back(queue: Ready | tuple[()]) -> None:
    """``queue`` (empty) is no longer used; keep it for another unit."""
    if queue is not NOTHING_READY and len(_SPARE) < _SPARE_LIMIT:
        _SPARE.append(queue)  # type: ignore[arg-type]  # not the tuple: a deque
