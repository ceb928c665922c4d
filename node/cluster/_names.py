"""Cluster-wide process names (wippy-surface §3.7, the CONSISTENT scope) in a JetStream
key-value bucket: first writer wins, the others get AlreadyExists, only the owner may
unregister, and a name is freed when its owner exits or its node goes down.

The bucket is the only authority; there is no consensus of our own (DESIGN §12). Every
write is one JetStream request: ``create`` (fails when the key holds a value) to
register, a delete conditional on the revision read to unregister or release, so two
nodes racing to do the same thing cannot undo each other's later work. Every node keeps
a replica through a watch of the whole bucket (``_replica.py``), so ``lookup`` costs no
round trip. docs/cluster.md has the design and what it rejected.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from moonwire.lua import Kind, MoonwireError, invalid

from ._jetstream import BucketStore, Conflict, earlier_incarnation
from ._names_upkeep import Upkeep, describe
from ._replica import Change, Holder, Replica, name_problem

log = logging.getLogger("moonwire.cluster")

ATTEMPTS = 3
"""Rounds of write-then-read for one register or unregister: a round is lost only when
the name changed hands between the write and the read, so a third loss means the name
is churning and the caller should try again later (Unavailable)."""


@dataclass(frozen=True, slots=True)
class NamesStatistics:
    """What :meth:`ClusterNames.statistics` reports."""

    available: bool
    names: int
    registered: int
    """Successful registers, an idempotent one included."""
    conflicts: int
    """Registers answered AlreadyExists."""
    freed: int
    """Names deleted for an owner that exited or a node incarnation that went down."""
    unavailable: int
    """Calls that raised Unavailable."""
    watched: int
    """Entries the watch delivered."""
    healed: int = 0
    """Names of this incarnation's processes that another node deleted (a false
    node-down) and this node registered again."""


class ClusterNames(Upkeep, BucketStore):
    """Cluster-wide names for processes, one per node (``node`` at ``incarnation``).

    Args:
        nats: a connected client; JetStream is reached through it.
        prefix: the subject prefix (``mw``); the bucket is ``<prefix>_<store>`` with
            each ``.`` of the prefix as ``_``.
        node: this node's name.
        incarnation: this node's incarnation (its PID epoch, base 36): names held by an
            earlier incarnation of ``node`` are deleted at start.
        replicas: copies of the bucket when this node creates it (1 on one server, 3 on
            a cluster); an existing bucket is used as it is.
        timeout: the bound on every round trip to JetStream, in seconds.
        retry_interval: how often to try again when JetStream was missing at start.
        on_change: called with ``(name, before, after)`` when a name's holder changes
            in the replica, from whichever side saw it first (see ``_replica.py``).
        store: what the names are for, naming the bucket and the log lines: ``names``
            for process names, ``locks`` for :class:`ClusterLocks` (the same rules on a
            bucket of their own, so a lock never collides with a process name).
    """

    def __init__(self, nats: NatsClient, *, prefix: str, node: str, incarnation: str, replicas: int = 1,
                 timeout: float = 2.0, retry_interval: float = 5.0, on_change: Change | None = None,
                 store: str = "names") -> None:
        super().__init__(nats, bucket=prefix.replace(".", "_") + "_" + store, what=f"cluster {store}",
                         replicas=replicas, timeout=timeout, retry_interval=retry_interval)
        self.node = node
        self.incarnation = incarnation
        self._replica = Replica(on_change)
        self._registering: Counter[str] = Counter()
        """PID -> registers of it in flight."""
        self._freeing: Counter[str] = Counter()
        """Names this node is deleting now (see :meth:`_delete`)."""
        self._gone: dict[str, float] = {}
        """This node's PIDs that exited or never ran, until when they are remembered: a
        write of theirs that lands late is deleted when the watch brings it."""
        self.alive: Callable[[str], bool] | None = None
        """Set by the node: whether a PID of this node is a live process (a name of an
        exited one is never registered again by healing)."""

    # ------------------------------------------------------------ lifecycle

    async def stop(self) -> None:
        """Stop following the bucket, once the releases already started have finished
        (each is bounded by ``timeout``): a node that stops cleanly frees the names of
        the processes it stopped. Names still held stay; node-down frees them."""
        await self._stop_following(drain=self.timeout * ATTEMPTS)

    def _reset(self) -> None:
        self._replica.clear()

    async def _opened(self) -> None:
        """At start: delete the names an earlier incarnation of this node left behind."""
        log.info("%s: %d held", self.what, len(self._replica))
        earlier = [(name, holder) for name, holder in self._replica.items()
                   if holder.node == self.node and earlier_incarnation(holder.incarnation, self.incarnation)]
        await self._free(earlier, f"an earlier incarnation of node {self.node}")

    def _apply(self, entry: KeyValue.Entry) -> None:
        self._stats["watched"] += 1
        revision = entry.revision or 0
        if entry.operation in (KV_DEL, KV_PURGE):
            before = self._replica.get(entry.key)
            self._replica.watched(entry.key, revision, None)
            if (before is not None and before.node == self.node and before.incarnation == self.incarnation
                    and entry.key not in self._freeing and self._replica.get(entry.key) is None):
                self._heal_soon(entry.key, before.pid)
            return
        holder = Holder.decode(entry.value, revision)
        if holder is None:
            log.warning("cluster name %r in bucket %s holds a value that is not a moonwire holder: ignored",
                        entry.key, self.bucket)
        self._replica.watched(entry.key, revision, holder)
        if (holder is not None and holder.node == self.node and holder.incarnation == self.incarnation
                and self.is_gone(holder.pid) and self._tasks is not None):  # a write that landed late
            self._writes.start(self._free([(entry.key, holder)], f"process {holder.pid} exited while registering it"),
                               f"{self.what}: sweep {entry.key}")

    # ------------------------------------------------------------ reading (no round trip)

    def lookup(self, name: str) -> str | None:
        """The PID registered as ``name`` cluster-wide, from the local replica; None when
        no one holds it, when this node has not heard of it yet, or when JetStream is
        unavailable."""
        holder = self._replica.get(name) if self._kv is not None else None
        return holder.pid if holder is not None else None

    def holder(self, name: str) -> Holder | None:
        """Who holds ``name`` (PID, node, incarnation, revision), from the replica."""
        return self._replica.get(name) if self._kv is not None else None

    def names_of(self, pid: str) -> list[str]:
        """The names ``pid`` holds, sorted, from the replica."""
        return self._replica.names_of(pid)

    def __len__(self) -> int:
        return len(self._replica)

    def __iter__(self) -> Iterator[tuple[str, Holder]]:
        """Every ``(name, holder)`` in the replica, as a snapshot."""
        return self._replica.items()

    def statistics(self) -> NamesStatistics:
        s = self._stats
        return NamesStatistics(self.available, len(self._replica), s["registered"], s["conflicts"], s["freed"],
                               s["unavailable"], s["watched"], s["healed"])

    # ------------------------------------------------------------ writing

    async def register(self, name: str, pid: str) -> None:
        """Register ``name`` for ``pid`` cluster-wide; the first writer wins.

        ``pid`` should be a process of this node: the name is freed when this node's
        incarnation goes down. A :meth:`release` of ``pid`` while this call waits wins:
        the name is deleted again once the write lands.

        Raises:
            MoonwireError: Invalid: ``name`` breaks the key rules (``name_problem``).
                AlreadyExists: another PID holds ``name``; the message names it.
                Unavailable (retryable): JetStream is missing, or did not answer within
                ``timeout`` (the write may still have landed: register again to know).
        """
        self._check(name, pid)
        kv = self._require(f"register cluster name {name!r}")
        mine = Holder(pid, self.node, self.incarnation, 0)
        what = f"registering cluster name {name!r}"
        self._registering[pid] += 1
        try:
            for _ in range(ATTEMPTS):
                try:
                    revision = await self._call(kv.create(name, mine.encode()), what)
                except Conflict:
                    current = await self._read(kv, name, what)
                    if current is None:
                        continue  # freed between our write and our read: try again
                    if current.pid != pid:
                        self._stats["conflicts"] += 1
                        raise MoonwireError(f"cluster name {name!r} is already registered to {describe(current)}",
                                            Kind.ALREADY_EXISTS, retryable=False,
                                            details={"pid": current.pid, "node": current.node})
                    self._replica.wrote(name, current)
                else:
                    self._replica.wrote(name, replace(mine, revision=revision))
                self._stats["registered"] += 1
                return
            raise self._unavailable(f"{what}: it changed hands {ATTEMPTS} times while registering; try again")
        finally:
            self._registering[pid] -= 1
            if not self._registering[pid]:
                del self._registering[pid]
            if self.is_gone(pid) and self._tasks is not None:
                # The owner exited while this call waited (or was cancelled): the write
                # may have landed after release() read the replica. Free it now (and
                # the watch frees it if it lands later still: _apply).
                self._writes.start(self._sweep(kv, name, pid), f"{self.what}: sweep {name}")

    async def unregister(self, name: str, pid: str) -> bool:
        """Free ``name`` if ``pid`` holds it: True when this call freed it, False when
        ``pid`` does not hold it (someone else does, or no one).

        Raises:
            MoonwireError: Invalid (a name that breaks the key rules); Unavailable
                (retryable) as for :meth:`register`.
        """
        self._check(name, pid)
        kv = self._require(f"unregister cluster name {name!r}")
        what = f"unregistering cluster name {name!r}"
        known = self._replica.get(name)
        revision = known.revision if known is not None and known.pid == pid else None
        for _ in range(ATTEMPTS):
            if revision is None:  # the replica may lag: ask the bucket
                current = await self._read(kv, name, what)
                if current is None or current.pid != pid:
                    return False
                revision = current.revision
            try:
                await self._delete(name, revision, what)
            except Conflict:
                revision = None  # it changed since we read it
                continue
            return True
        raise self._unavailable(f"{what}: it changed hands {ATTEMPTS} times while unregistering; try again")

    # ------------------------------------------------------------ helpers

    def _check(self, name: str, pid: str) -> None:
        if (problem := name_problem(name)) is not None:
            raise invalid(problem)
        if not isinstance(pid, str) or not pid:
            raise invalid(f"a cluster name is registered to a PID, not {pid!r}")

    async def _read(self, kv: KeyValue, name: str, what: str) -> Holder | None:
        """The bucket's current holder of ``name`` (a read at the stream leader)."""

        async def get() -> KeyValue.Entry | None:
            try:
                return await kv.get(name)
            except nats.js.errors.KeyNotFoundError:  # deleted names too
                return None

        entry = await self._call(get(), what)
        if entry is None:
            return None
        return Holder.decode(entry.value, entry.revision or 0) or Holder("", "", "", entry.revision or 0)

    async def _delete(self, name: str, revision: int, what: str) -> None:
        """Delete ``name`` if its last revision is ``revision``.

        Written out rather than ``KeyValue.delete``, which does not return the revision
        of the delete, and the replica needs it (``Replica.deleted``). The subject and
        headers are the KV protocol's (NATS ADR-8).

        Raises:
            Conflict: the name's last revision is another one.
            MoonwireError: Unavailable.
        """
        headers = {KV_OP: KV_DEL, "Nats-Expected-Last-Subject-Sequence": str(revision)}
        self._freeing[name] += 1  # the watch may bring this delete before its ack: not a foreign one
        try:
            ack = await self._call(self._js.publish(f"$KV.{self.bucket}.{name}", b"", headers=headers), what)
        finally:
            self._freeing[name] -= 1
            if not self._freeing[name]:
                del self._freeing[name]
        self._replica.deleted(name, ack.seq)
