"""Singleton services (``lifecycle.placement: cluster``; docs/cluster.md, Singleton
services): at most one instance in the cluster at any instant, arbitrated by a cluster
lock (``ClusterLocks``, bucket ``<prefix>_locks``).

Every node that has the entry and its host is a candidate. Its supervisor loop takes the
service's lock (:func:`lock_name`) for a *tenure*: a holder PID of this node's
incarnation, allocated for that one hold, so the lock is freed by this node's node-down
(or goodbye) like any process's, and by nothing else that happens here. Only while the
tenure holds does the supervisor run the instance. A tenure is *lost*, and the instance
terminated at once (fenced), when:

- the lock replica shows the lock freed or held by another PID (a false node-down of
  this node by a peer, an operator's ``nats kv del``): :meth:`ClusterLocks.watch` calls
  back as soon as the replica changes;
- this node cannot hear the broker (``Membership.hearing()`` is False: its own heartbeats
  stopped coming back). That happens after ``echo_gap`` (at most half the node-down
  window plus 0.1 s) of silence, so a partitioned node stops its instance before its
  peers can declare it down, free the lock and start another (self-down, as Akka's
  split-brain resolver does).

Hearing has no event, so a held tenure is checked every :data:`CHECK_EVERY` as well.

A lost tenure's PID is retired: ``ClusterNames`` heals a name (a lock too) that another
node deleted while its incarnation lives, so a lock deleted under a fenced tenure may
come back to that PID, which no one acts on any more; the next :meth:`Singletons.take`
here frees it before racing for the lock with a new PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from moonwire.broker import PidAllocator, TaskSet
from moonwire.lua import Kind, MoonwireError

from ..cluster import ClusterLocks, Holder, name_problem

log = logging.getLogger("moonwire.services")

CHECK_EVERY = 0.1
"""Seconds between two looks at ``hearing()`` while a tenure holds or waits to be taken
(membership judges its peers at this rate too)."""
RETRY = 1.0
"""Seconds between two tries when the lock bucket is unavailable (JetStream missing, a
write that timed out)."""
ATTEMPT_WAIT = 10.0
"""Seconds a release waits for an acquire under way to land (it is bounded by the
cluster's timeout, 2 s a round trip, three rounds at most)."""
HOLDER_HOST = "supervisor"
"""The host part of a tenure's holder PID, ``{node@supervisor|<epoch>-<n>}``: not a
process anyone can message, only an identity of this node's incarnation."""
LOCK_PREFIX = "service."


def lock_name(entry_id: str) -> str:
    """The lock of the singleton service ``entry_id``: ``service.<namespace>/<name>``.

    Entry ids are ``<namespace>:<name>`` with ``[A-Za-z0-9_.-]`` on both sides, and ``:``
    is not a key character; ``/`` takes its place (an id never holds one). A name that
    starts or ends with ``.`` or holds ``..`` (an empty subject token in the key) has
    every ``.`` written ``=2E`` (an id never holds ``=``). Both steps are reversed by
    :func:`service_of`.
    """
    namespace, _, name = entry_id.rpartition(":")
    if name.startswith(".") or name.endswith(".") or ".." in name:
        name = name.replace(".", "=2E")
    return f"{LOCK_PREFIX}{namespace}/{name}"


def service_of(lock: str) -> str | None:
    """The entry id whose lock is ``lock`` (:func:`lock_name` reversed), or None."""
    if not lock.startswith(LOCK_PREFIX) or "/" not in lock:
        return None
    namespace, _, name = lock[len(LOCK_PREFIX):].partition("/")
    return f"{namespace}:{name.replace('=2E', '.')}"


@dataclass(eq=False)
class Tenure:
    """One hold of a singleton's lock by this node."""

    lock: str
    pid: str
    """The holder PID: this node's incarnation, this hold only."""
    takeover: bool = False
    """Another holder was seen before this one took the lock: it starts after the
    restart delay (time for a fenced node to have stopped its instance)."""
    lost: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    """Set, with the reason, once the tenure no longer holds."""
    on_lost: Callable[[], None] | None = None
    """Called once when the tenure is lost, where that is seen: the supervisor's fence
    of a running instance (a terminate, which ends its Lua at once), so it does not wait
    for the supervisor's task to be scheduled."""
    unwatch: Callable[[], None] | None = None
    attempt: asyncio.Task[MoonwireError | None] | None = None
    """An acquire of the lock under way."""

    def lose(self, reason: str) -> None:
        if self.lost.done():
            return
        self.lost.set_result(reason)
        fence, self.on_lost = self.on_lost, None
        if fence is not None:
            fence()


class Singletons:
    """Taking, holding and giving back the locks of one supervisor's singleton services.

    ``hearing`` is the membership's (None: a runtime with no liveness, which always
    hears).
    """

    def __init__(self, locks: ClusterLocks, pids: PidAllocator, hearing: Callable[[], bool] | None) -> None:
        self.locks = locks
        self.pids = pids
        self.hearing = hearing or (lambda: True)
        self._retired: set[str] = set()
        """Holder PIDs of tenures lost or given back here: never to hold a lock again."""
        self._attempts = TaskSet(log)

    async def stop(self) -> None:
        """Cancel what acquires are left (each was waited for by its tenure's release)."""
        await self._attempts.stop()

    def tenure(self, service_id: str) -> Tenure:
        """A new tenure of ``service_id``'s lock, not yet taken.

        Raises:
            MoonwireError: Invalid (not retryable) when the id makes a lock name longer
                than a cluster name may be.
        """
        lock = lock_name(service_id)
        if (problem := name_problem(lock)) is not None:
            raise MoonwireError(f"service {service_id} cannot be a singleton: its lock {problem}", Kind.INVALID,
                                retryable=False)
        return Tenure(lock, self.pids.next(HOLDER_HOST))

    async def take(self, tenure: Tenure, what: str) -> None:
        """Wait until ``tenure`` holds its lock while this node hears the broker. Never
        raises but for cancellation: an unavailable bucket is tried again every
        :data:`RETRY` (logged once)."""
        changed = asyncio.Event()

        def seen(name: str, before: Holder | None, after: Holder | None) -> None:
            # Any other holder seen while waiting (the replica may learn of it only after
            # the first look) makes this a takeover.
            if any(h is not None and h.pid != tenure.pid for h in (before, after)):
                tenure.takeover = True
            changed.set()

        unwatch = self.locks.watch(tenure.lock, seen)
        try:
            await self._acquire(tenure, changed, what)
        finally:
            unwatch()

        def lost(name: str, before: Holder | None, after: Holder | None) -> None:
            if after is None:
                tenure.lose(f"its lock {name} was freed by another node")
            elif after.pid != tenure.pid:
                tenure.lose(f"its lock {name} is now held by {after.pid} (node {after.node})")

        # Set synchronously after the acquire: no change can slip in between.
        tenure.unwatch = self.locks.watch(tenure.lock, lost)

    async def _acquire(self, tenure: Tenure, changed: asyncio.Event, what: str) -> None:
        warned = False
        while True:
            while not self.hearing():
                await asyncio.sleep(CHECK_EVERY)  # no event to await: hearing is judged by time
            changed.clear()
            current = self.locks.holder(tenure.lock)
            if current is not None and current.pid == tenure.pid:
                break  # an acquire that answered Unavailable had landed
            if current is not None and current.pid in self._retired:
                # A tenure lost here, whose lock ClusterNames healed (another node deleted
                # it while this incarnation lives): nobody acts on it, so free it.
                await self._free(tenure.lock, current.pid)
                continue
            if current is not None:
                tenure.takeover = True
                await changed.wait()  # freed, or taken by someone else: look again
                continue
            # Not cancelled with the candidate: a write cut short could land unseen and
            # hold the lock for a PID nobody frees. A stop waits for it (release()).
            tenure.attempt = self._attempts.start(self._attempt(tenure), f"taking lock {tenure.lock}")
            error = await asyncio.shield(tenure.attempt)
            tenure.attempt = None
            if error is not None:
                if error.kind == Kind.ALREADY_EXISTS:
                    tenure.takeover = True
                    # Lost the race: the replica shows the winner within a watch delay.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), CHECK_EVERY)
                    continue
                if not warned:
                    log.warning("%s waits for its lock %s: %s; trying every %gs", what, tenure.lock, error.message,
                                RETRY)
                    warned = True
                await asyncio.sleep(RETRY)
                continue
            break
        if warned:
            log.info("%s: the lock bucket answers again", what)

    async def _attempt(self, tenure: Tenure) -> MoonwireError | None:
        """One acquire, without waiting: None when taken, else why not."""
        try:
            await self.locks.acquire(tenure.lock, tenure.pid)
        except MoonwireError as err:
            return err
        return None

    async def _free(self, lock: str, pid: str) -> None:
        try:
            await self.locks.release(lock, pid)
        except MoonwireError as err:
            log.debug("freeing lock %s of %s, a tenure lost here: %s; trying again", lock, pid, err.message)
            await asyncio.sleep(RETRY)

    def holds(self, tenure: Tenure) -> bool:
        """True while ``tenure`` holds: not lost, the replica shows its PID, and this
        node hears the broker. A look that finds otherwise loses the tenure."""
        if tenure.lost.done():
            return False
        holder = self.locks.holder(tenure.lock)
        if holder is None or holder.pid != tenure.pid:
            tenure.lose(f"its lock {tenure.lock} is no longer held here")
        elif not self.hearing():
            tenure.lose("this node cannot hear the broker (its own heartbeats do not come back)")
        return not tenure.lost.done()

    async def hold(self, tenure: Tenure, until: asyncio.Future[object] | None = None,
                   seconds: float | None = None) -> bool:
        """Wait for ``until`` to be done, or ``seconds`` to pass, while ``tenure`` holds:
        True then; False as soon as the tenure is lost."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while self.holds(tenure):
            if until is not None and until.done():
                return True
            left = CHECK_EVERY if deadline is None else min(CHECK_EVERY, deadline - loop.time())
            if left <= 0:
                return True
            await asyncio.wait([tenure.lost] if until is None else [tenure.lost, until], timeout=left)
        return False

    def retire(self, tenure: Tenure) -> None:
        """``tenure`` was lost: stop watching its lock. Its PID never holds a lock again;
        should the bucket still show it (lost for deafness, or healed after another node
        deleted it), the next :meth:`take` frees it."""
        self._unwatch(tenure)

    async def release(self, tenure: Tenure) -> None:
        """Free ``tenure``'s lock (a clean stop, or a service that failed for good).
        Never raises: a lock this cannot free goes when this node says goodbye or is
        declared down."""
        self._unwatch(tenure)
        if tenure.attempt is not None:  # an acquire under way as the candidate stopped: let it land
            await asyncio.wait([tenure.attempt], timeout=ATTEMPT_WAIT)
        try:
            await self.locks.release(tenure.lock, tenure.pid)
        except MoonwireError as err:
            log.warning("could not release lock %s (%s); it goes when this node leaves", tenure.lock, err.message)

    def _unwatch(self, tenure: Tenure) -> None:
        tenure.lose("given back")
        self._retired.add(tenure.pid)
        if tenure.unwatch is not None:
            tenure.unwatch()
            tenure.unwatch = None
