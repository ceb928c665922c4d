"""Cluster-wide locks (Wippy's ``system.lock``, wippy-modules §9): a lock is a name in
a bucket of its own, held by a process, with the CONSISTENT rules of ``_names.py``:
first writer wins, only the holder releases, and a lock is freed when its holder exits
or its node goes down.

Like Wippy's, a lock is not re-entrant (the holder acquiring it again is refused) and an
acquire without a wait fails at once when the lock is held. With a wait, the caller
waits for the replica to see the lock freed, then races for it again, until the wait is
over: waiters are not queued, so whichever node's write lands first gets it (a lock,
not a fair queue; docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

from nats.aio.client import Client as NatsClient

from moonwire.lua import Kind, MoonwireError

from ._names import ClusterNames, NamesStatistics
from ._replica import Change, Holder

log = logging.getLogger("moonwire.cluster")


class ClusterLocks:
    """This node's view of the cluster's locks (bucket ``<prefix>_locks``). The
    arguments are :class:`ClusterNames`'s (``on_change``: a lock's holder changed)."""

    def __init__(self, nats: NatsClient, *, prefix: str, node: str, incarnation: str, replicas: int = 1,
                 timeout: float = 2.0, retry_interval: float = 5.0, on_change: Change | None = None) -> None:
        self._names = ClusterNames(nats, prefix=prefix, node=node, incarnation=incarnation, replicas=replicas,
                                   timeout=timeout, retry_interval=retry_interval, on_change=self._changed,
                                   store="locks")
        self._on_change = on_change
        self._freed: dict[str, asyncio.Event] = {}
        """Lock name -> the event its waiters wait on; set (and dropped) when it is freed."""
        self._watchers: dict[str, list[Change]] = {}
        """Lock name -> the listeners :meth:`watch` added for it."""

    @property
    def bucket(self) -> str:
        return self._names.bucket

    @property
    def available(self) -> bool:
        return self._names.available

    @property
    def names(self) -> ClusterNames:
        """The store underneath: the locks' bucket, as names."""
        return self._names

    async def start(self) -> None:
        await self._names.start()

    async def stop(self) -> None:
        await self._names.stop()
        for freed in self._freed.values():
            freed.set()  # nobody waits for a bucket no longer followed
        self._freed.clear()

    def holder(self, name: str) -> Holder | None:
        """Who holds lock ``name``, from the replica."""
        return self._names.holder(name)

    def __iter__(self) -> Iterator[tuple[str, Holder]]:
        return iter(self._names)

    def watch(self, name: str, listener: Change) -> Callable[[], None]:
        """Call ``listener(name, before, after)`` each time lock ``name`` changes holder in
        the replica (this node's own writes at once, other nodes' as the watch brings
        them); returns the function that stops it. For a holder that must stop acting
        the moment the lock is no longer its own (singleton services)."""
        listeners = self._watchers.setdefault(name, [])
        listeners.append(listener)

        def unwatch() -> None:
            if listener in listeners:
                listeners.remove(listener)
            if not listeners and self._watchers.get(name) is listeners:
                del self._watchers[name]

        return unwatch

    def statistics(self) -> NamesStatistics:
        return self._names.statistics()

    async def acquire(self, name: str, pid: str, wait: float = 0.0) -> None:
        """Take lock ``name`` for ``pid``, waiting up to ``wait`` seconds for it to be
        freed when another process holds it.

        Raises:
            MoonwireError: AlreadyExists (``lock held: <name>``): held by another
                process all the while, or by ``pid`` itself (not re-entrant).
                Invalid: a name that breaks the key rules. Unavailable (retryable):
                JetStream is missing or did not answer.
        """
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            current = self._names.holder(name)
            if current is not None and current.pid == pid:
                raise _held(name, current, "the caller holds it already (locks are not re-entrant)")
            if current is None:
                try:
                    await self._names.register(name, pid)
                    return
                except MoonwireError as err:
                    if err.kind != Kind.ALREADY_EXISTS:
                        raise
                current = self._names.holder(name)
            left = deadline - time.monotonic()
            if left <= 0:
                raise _held(name, current, None)
            freed = self._freed.setdefault(name, asyncio.Event())
            if self._names.holder(name) is None:
                continue  # freed while we looked: race for it now
            try:
                async with asyncio.timeout(left):
                    await freed.wait()
            except TimeoutError:
                raise _held(name, self._names.holder(name), None) from None

    async def release(self, name: str, pid: str) -> bool:
        """Free lock ``name`` if ``pid`` holds it; False when it does not.

        Raises:
            MoonwireError: Invalid, Unavailable as for :meth:`acquire`.
        """
        return await self._names.unregister(name, pid)

    def release_soon(self, pid: str) -> asyncio.Task[list[str]] | None:
        """``pid`` exited: free every lock it holds (a task owned here; None when it holds
        none, the common case)."""
        return self._names.release_soon(pid)

    def node_down_soon(self, node: str, incarnation: str) -> asyncio.Task[list[str]] | None:
        """``incarnation`` of ``node`` is gone: free its locks."""
        return self._names.node_down_soon(node, incarnation)

    def _changed(self, name: str, before: Holder | None, after: Holder | None) -> None:
        if after is None and (freed := self._freed.pop(name, None)) is not None:
            freed.set()
        for listener in list(self._watchers.get(name, ())):
            try:
                listener(name, before, after)
            except Exception:  # one listener's bug must not keep the others (or the waiters) from hearing
                log.exception("cluster locks: a listener of lock %r failed", name)
        if self._on_change is not None:
            self._on_change(name, before, after)


def _held(name: str, holder: Holder | None, why: str | None) -> MoonwireError:
    details = {"pid": holder.pid, "node": holder.node} if holder is not None else None
    if why is None:
        why = f"held by {holder.pid} (node {holder.node})" if holder is not None else "held by another process"
    return MoonwireError(f"lock held: {name}: {why}", Kind.ALREADY_EXISTS, retryable=False, details=details)
