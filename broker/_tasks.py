"""Tasks with an owner: the one way a part of a node starts work that outlives the
call that started it (a reply that waits for a function, a watch on a workflow, a
service's supervisor), so that nothing runs unowned and no failure goes unseen.

A :class:`TaskSet` logs a task that fails (and tells its owner, when asked to),
forgets one that ends, and cancels and awaits them all when the part stops. The node's
long-lived loops are one (``node/_node.py``: a loop that fails stops the node in
order); a part that starts tasks as it serves (one per request, per watch) keeps its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def drain_when_ready(ready: asyncio.Event, drain: Callable[[], Awaitable[None]]) -> None:
    """Run ``drain()`` each time ``ready`` is set, until cancelled; cancelling runs one
    last ``drain()`` (shielded from the cancel) so that what is queued still leaves."""
    try:
        while True:
            await ready.wait()
            ready.clear()
            await drain()
    except asyncio.CancelledError:
        await asyncio.shield(drain())
        raise


class TaskSet:
    """The tasks one part of a node owns."""

    __slots__ = ("_log", "_on_failure", "_tasks")

    def __init__(self, log: logging.Logger, on_failure: Callable[[asyncio.Task[Any], BaseException], None] | None = None
                 ) -> None:
        self._log = log
        self._on_failure = on_failure
        """Called (after the log) with a task that failed and its error."""
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        """Run ``work`` as a task owned here; ``what`` names it in logs."""
        task = asyncio.get_running_loop().create_task(work, name=what)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._log.error("%s failed: %s", task.get_name(), error, exc_info=error)
            if self._on_failure is not None:
                self._on_failure(task, error)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the tasks owned now to end by themselves."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def stop(self) -> None:
        """Cancel every task owned here and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
