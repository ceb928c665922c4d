"""Freeing names, for :class:`~._names.ClusterNames` (a mixin): when their holder exits
or never ran, when its node goes down, and registering again the names of a live
holder that another node took for down.

The hard case is a write that lands after its caller gave up on it: a register that
timed out (Unavailable) or was cancelled (its process ended) may still be created by
JetStream later, even much later, when nats-py sends what it buffered during a
reconnect. Such a PID is remembered as *gone* for :data:`GONE_FOR` seconds, and a
write of it that the watch brings is deleted then. A failed delete of a gone PID's
name is tried again every ``retry_interval`` while it is remembered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from moonwire.broker import TaskSet

from ._jetstream import Conflict
from ._replica import Holder, Replica

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger("moonwire.cluster")

PARALLEL_DELETES = 64
"""At most this many deletes in flight for one release or node-down."""
GONE_FOR = 600.0
"""Seconds a PID that exited or never ran is remembered as gone (a bound on how late a
write of it may land and still be undone: nats-py holds writes while it reconnects)."""
GONE_KEPT = 10_000
"""Past this many remembered PIDs, the expired ones are forgotten at the next one."""


class Upkeep:
    """The freeing half of :class:`~._names.ClusterNames`."""

    __slots__ = ()

    if TYPE_CHECKING:
        node: str
        incarnation: str
        what: str
        retry_interval: float
        alive: Callable[[str], bool] | None
        _replica: Replica
        _kv: KeyValue | None
        _tasks: TaskSet | None
        _writes: TaskSet
        _registering: Counter[str]
        _gone: dict[str, float]
        _stats: Counter[str]

        async def _delete(self, name: str, revision: int, what: str) -> None: ...

        async def _read(self, kv: KeyValue, name: str, what: str) -> Holder | None: ...

        async def _call(self, work: Awaitable[Any], what: str) -> Any: ...

    # ------------------------------------------------------------ a holder ends

    def is_gone(self, pid: str) -> bool:
        """Whether ``pid`` exited (or never ran) recently enough to be remembered."""
        until = self._gone.get(pid)
        return until is not None and until > time.monotonic()

    def _mark_gone(self, pid: str) -> None:
        now = time.monotonic()
        if len(self._gone) >= GONE_KEPT:
            for old in [p for p, until in self._gone.items() if until <= now]:
                del self._gone[old]
        self._gone[pid] = now + GONE_FOR

    async def release(self, pid: str) -> list[str]:
        """``pid`` exited: delete every name it holds (by the replica), each conditional
        on the revision seen, so a name someone took since is left alone. Failures are
        logged and tried again later, not raised. Returns the names freed."""
        self._mark_gone(pid)
        held = [(name, holder) for name in self._replica.names_of(pid)
                if (holder := self._replica.get(name)) is not None]
        return await self._free(held, f"process {pid} exited")

    def release_soon(self, pid: str) -> asyncio.Task[list[str]] | None:
        """:meth:`release` as a task owned here (for a caller that cannot wait, such as
        an exit path); None when ``pid`` holds no name and no register of it is in
        flight, which is the common case and costs one dictionary look-up."""
        if self._tasks is None or (not self._replica.names_of(pid) and pid not in self._registering):
            return None
        self._mark_gone(pid)  # now, before a cancelled register of it finishes
        return self._writes.start(self.release(pid), f"{self.what}: release {pid}")

    def abandon(self, pid: str) -> asyncio.Task[list[str]] | None:
        """``pid`` will never run (its spawn failed or was given up after a register of
        it was sent): as :meth:`release_soon`, and a write of it that lands later is
        deleted too, even when no register is in flight now."""
        if self._tasks is None:
            return None
        self._mark_gone(pid)
        return self._writes.start(self.release(pid), f"{self.what}: release {pid}")

    # ------------------------------------------------------------ a node ends

    async def node_down(self, node: str, incarnation: str) -> list[str]:
        """``incarnation`` of ``node`` is gone: delete every name it registered. Every
        surviving node may do this at the same time; conditional deletes make the race
        harmless. Failures are logged, not raised. Returns the names this call freed."""
        if node == self.node and incarnation == self.incarnation:
            log.warning("%s: told that this node (%s, incarnation %s) is down; its names stay",
                        self.what, node, incarnation)
            return []
        held = [(name, holder) for name, holder in self._replica.items()
                if holder.node == node and holder.incarnation == incarnation]
        return await self._free(held, f"node {node} (incarnation {incarnation}) is down")

    def node_down_soon(self, node: str, incarnation: str) -> asyncio.Task[list[str]] | None:
        """:meth:`node_down` as a task owned here (membership's ``on_down`` is not async)."""
        if self._tasks is None:
            return None
        return self._writes.start(self.node_down(node, incarnation), f"{self.what}: node {node} down")

    # ------------------------------------------------------------ a false node-down

    def _heal_soon(self, name: str, pid: str) -> None:
        """Another node deleted a name this incarnation holds (it took this node for down,
        wrongly: this node is here to see it). Register it again, if it is still free
        and its holder still runs."""
        if self._tasks is None or self.is_gone(pid) or (self.alive is not None and not self.alive(pid)):
            return
        self._writes.start(self._heal(name, pid), f"{self.what}: heal {name}")

    async def _heal(self, name: str, pid: str) -> None:
        kv = self._kv
        if kv is None:
            return
        mine = Holder(pid, self.node, self.incarnation, 0)
        what = f"registering cluster name {name!r} again"
        try:
            revision = await self._call(kv.create(name, mine.encode()), what)
        except Conflict:
            current = self._replica.get(name)
            if current is None or current.pid != pid:
                log.warning("%s: %r of %s was deleted by another node (a false node-down?) and is now held by %s",
                            self.what, name, pid, describe(current) if current is not None else "someone else")
            return
        except Exception as err:  # noqa: BLE001 - Unavailable, or the connection gone: logged, nothing else
            log.warning("%s: %r of %s was deleted by another node and could not be registered again: %s",
                        self.what, name, pid, getattr(err, "message", err))
            return
        self._replica.wrote(name, replace(mine, revision=revision))
        self._stats["healed"] += 1
        log.warning("%s: %r of %s was deleted by another node (a false node-down?); registered again",
                    self.what, name, pid)

    # ------------------------------------------------------------ deleting

    async def _sweep(self, kv: KeyValue, name: str, pid: str) -> None:
        """Delete ``name`` if the bucket says ``pid`` (which exited) holds it."""
        try:
            current = await self._read(kv, name, f"checking cluster name {name!r}")
        except Exception as err:  # noqa: BLE001 - Unavailable: the watch or a retry frees it
            log.warning("cluster name %r may stay registered to %s, which exited, for now: %s", name, pid,
                        getattr(err, "message", err))
            return
        if current is not None and current.pid == pid:
            await self._free([(name, current)], f"process {pid} exited while registering it")

    async def _free(self, held: Iterable[tuple[str, Holder]], why: str) -> list[str]:
        """Delete each name at the revision its holder was seen at; log what fails, and
        try a gone PID's again later."""
        held = list(held)
        if not held or self._kv is None:
            return []
        limit = asyncio.Semaphore(PARALLEL_DELETES)

        async def free(name: str, holder: Holder) -> str | None:
            async with limit:
                try:
                    await self._delete(name, holder.revision, f"freeing cluster name {name!r} ({why})")
                except Conflict:
                    return None  # someone freed or took it since: not ours to delete
                except Exception as err:  # noqa: BLE001 - Unavailable, or the connection gone
                    log.warning("cluster name %r stays registered to %s for now: %s", name, holder.pid,
                                getattr(err, "message", err))
                    if self.is_gone(holder.pid) and self._tasks is not None:
                        self._writes.start(self._free_later(name, holder.pid, why), f"{self.what}: free {name}")
                    return None
            return name

        freed = [name for name in await asyncio.gather(*(free(n, h) for n, h in held)) if name is not None]
        self._stats["freed"] += len(freed)
        if freed:
            log.info("%s freed (%s): %s", self.what, why, ", ".join(freed))
        return freed

    async def _free_later(self, name: str, pid: str, why: str) -> None:
        """Try again to free ``name`` of the gone ``pid``, once per ``retry_interval``."""
        while self.is_gone(pid):
            await asyncio.sleep(self.retry_interval)
            holder = self._replica.get(name)
            if holder is None or holder.pid != pid:
                return
            try:
                await self._delete(name, holder.revision, f"freeing cluster name {name!r} ({why}), again")
            except Conflict:
                return
            except Exception:  # noqa: BLE001 - still unreachable: the next round
                continue
            self._stats["freed"] += 1
            log.info("%s freed (%s), at a later try: %s", self.what, why, name)
            return


def describe(holder: Holder) -> str:
    if not holder.pid:
        return "a value that is not a moonwire holder"
    return f"{holder.pid} (node {holder.node})"
